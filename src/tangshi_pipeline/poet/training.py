"""Training: the loop, evaluation, and the device and optimizer choices — short, top to bottom.

:func:`fit` trains a :class:`CharRNN` on device-resident length buckets (``batching.py``) with
AdamW (or the classic RMSprop), gradient clipping, optional bf16 autocast on CUDA, a wall-clock
budget and checkpoints, and continues from the newest compatible checkpoint of a
:class:`CheckpointStore`. A checkpoint is written every ``checkpoint_every`` epochs, every
``checkpoint_minutes``, when the budget runs out, on Ctrl-C and at the end, so a re-run (with the
same or a larger ``epochs``) goes on from there. Weights and optimizer state are checked to be
finite before each checkpoint and at the end, so neither a checkpoint nor the model is ever saved
with a NaN or an infinity. The history has a row per epoch (train and validation loss) and one of
the train loss every ``LOG_EVERY`` steps. The loop only synchronises with the device for the
progress display (about twice a second), for those rows and at epoch ends.

Inside a ``torch.distributed`` process group (``distributed.py`` starts one) :func:`fit` trains
data-parallel: each rank takes its share of every epoch's batches (:meth:`Buckets.shard`),
DistributedDataParallel averages the gradients, and only rank 0 writes checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from tangshi_pipeline.poet.batching import Buckets
from tangshi_pipeline.poet.checkpoints import CheckpointError, CheckpointStore, non_finite_tensors
from tangshi_pipeline.poet.model import CharRNN, ModelConfig, head_nll, nll
from tangshi_pipeline.poet.params import ParameterError, TrainingParams

if dist.is_available():
    # Imported here, before any process group exists, on purpose. Its functions take
    # ``group=group.WORLD`` as a default argument, evaluated on first import — which
    # DistributedDataParallel triggers lazily. Imported inside a group, those defaults keep the
    # group alive for ever: destroy_process_group then leaves gloo's worker threads running, and
    # one still freeing a collective's tensor when Python exits aborts the rank (SIGABRT,
    # "terminate called without an active exception"). Imported now, the defaults are None.
    import torch.distributed.nn  # noqa: F401

log = logging.getLogger(__name__)
LOG_EVERY = 200  # optimizer steps between the history's train-loss rows (besides one row per epoch)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; an explicit device must be available."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if (name == "cuda" and not torch.cuda.is_available()) or (name == "mps" and not mps):
        raise ParameterError(f"training.device = {name!r}, but this machine has no {name.upper()} device "
                             f"usable by torch; set training.device to auto or cpu.")
    return torch.device(name)


def set_threads(threads: int) -> int:
    """``threads`` CPU threads for torch, or (0) one per idle core. More threads than idle cores
    make torch's CPU kernels spin and wait for each other: on a 2-core machine with one core busy,
    2 threads trained 8× slower than 1 (measured)."""
    if not threads:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        idle = _idle_cores()
        threads = cores if idle is None else max(1, min(cores, round(idle)))
    torch.set_num_threads(threads)
    return threads


def _idle_cores(seconds: float = 0.5) -> float | None:
    """Idle CPUs over the next ``seconds`` (from /proc/stat), or None where that is not available."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all

    try:
        idle0, all0 = sample()
        time.sleep(seconds)
        idle1, all1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / max(all1 - all0, 1) * (os.cpu_count() or 1)


def autocast(device: torch.device, precision: str):
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: torch.nn.Module, p: TrainingParams, device: torch.device) -> torch.optim.Optimizer:
    if p.optimizer == "rmsprop":  # the classic exercise's choice
        return torch.optim.RMSprop(model.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay,
                             fused=device.type == "cuda")


@torch.no_grad()
def evaluate(model: CharRNN, buckets: Buckets, device: torch.device, precision: str = "fp32") -> float | None:
    """Mean negative log-likelihood (nats) per predicted token, or None for an empty split."""
    if buckets.tokens == 0:
        return None
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for batch in buckets.ordered():
        with autocast(device, precision):
            logits, _ = model(batch.inputs)
        total += nll(logits, batch.targets)
    model.train(was_training)
    return total.item() / buckets.tokens


def compatibility(config: ModelConfig, vocab_fingerprint: str, p: TrainingParams) -> dict[str, Any]:
    """What a checkpoint must share with the run to be resumed: shape, vocabulary, optimizer."""
    return {"architecture": asdict(config), "vocab_fingerprint": vocab_fingerprint, "optimizer": p.optimizer}


def _describe_mismatch(old: dict, new: dict) -> str:
    diffs = []
    for key in ("architecture", "vocab_fingerprint", "optimizer"):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: {str(a)[:12]!r} → {str(b)[:12]!r}" if "fingerprint" in key else f"{key}: {a!r} → {b!r}")
    return ", ".join(diffs)


def ranks() -> tuple[int, int]:
    """(rank, world size) of the process group this process trains in; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _StepLoss(torch.nn.Module):
    """The summed training NLL of a batch as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: CharRNN, fused: bool):
        super().__init__()
        self.model, self.fused = model, fused

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.model.features(inputs)
        return head_nll(hidden, self.model.head, targets, self.fused)


def _all_sum(x: float, device: torch.device) -> float:
    t = torch.tensor(x, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class Position:
    """Where a run is: epochs done, batches done in the current epoch, totals."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0  # training wall time over all runs that led here
    epoch_loss: float = 0.0  # summed NLL of the current epoch so far
    epoch_tokens: int = 0
    window_loss: float = 0.0  # summed NLL since the history's last train-loss row
    window_start_tokens: int = 0  # ``tokens`` at that row
    history: list[dict] = field(default_factory=list)


@dataclass
class Result:
    model: CharRNN
    position: Position
    stopped: str  # "finished" | "budget"
    resumed_from: str | None


def _state_tensors(model: CharRNN, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def _ranks_rng(world: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Every other rank's RNG states, gathered for rank 0 to checkpoint (their dropout masks differ)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    out = {}
    for name, state in states.items():
        gathered = [torch.empty_like(state, device=device) for _ in range(world)]
        dist.all_gather(gathered, state.to(device))
        out |= {f"rng.{name}.rank{r}": g.cpu() for r, g in enumerate(gathered) if r}
    return out


def _restore(model: CharRNN, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rank: int = 0) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    # The run's own hyper-parameters (lr, weight decay, fused) apply; only the moments are restored.
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    own = f".rank{rank}" if rank and f"rng.cpu.rank{rank}" in tensors else ""  # else rank 0's
    torch.set_rng_state(tensors[f"rng.cpu{own}"])
    if f"rng.cuda{own}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda{own}"])


def _progress(total: int, quiet: bool = False) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"),
        console=console, disable=quiet or not console.is_terminal, transient=True,
    )


def _resume(store: CheckpointStore | None, model: CharRNN, opt: torch.optim.Optimizer, compat: dict,
            p: TrainingParams, rank: int, world: int) -> tuple[Position, str | None]:
    """Where training starts: the newest usable checkpoint (its weights, optimizer and RNG state
    restored into ``model`` and ``opt``) and its path, or a fresh position. ``training.resume=false``
    deletes the checkpoints (on rank 0) instead."""
    if store is None:
        return Position(), None
    if not p.resume:
        if rank == 0 and store.paths():
            log.info("training.resume=false: deleting the checkpoints in %s and starting fresh", store.folder)
            store.clear()
        return Position(), None
    checkpoint = store.latest()
    if checkpoint is None:
        return Position(), None
    meta = checkpoint.meta
    if not {"compatibility", "position", "training"} <= set(meta):
        raise CheckpointError(f"checkpoint {checkpoint.path} is not a training checkpoint of this project "
                              f"(state.json lacks its fields); set training.resume=false to start fresh.")
    if meta["compatibility"] != compat:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} was trained with a different model or vocabulary "
            f"({_describe_mismatch(meta['compatibility'], compat)}), so it cannot be resumed. "
            f"Set training.resume=false to start fresh (its checkpoints are deleted), or restore "
            f"the parameters it was trained with."
        )
    try:
        _restore(model, opt, checkpoint.tensors, rank)
        pos = Position(**meta["position"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path} cannot be restored ({str(exc).splitlines()[0]}); "
                              f"set training.resume=false to start fresh.") from None
    old = meta["training"]
    if pos.step and (old["seed"], old["batch_size"], old.get("world_size", 1)) != (p.seed, p.batch_size, world):
        log.warning("seed, batch_size or world_size changed: the interrupted epoch %d is not finished, going on with "
                    "epoch %d", pos.epoch + 1, pos.epoch + 2)
        pos.epoch, pos.step, pos.epoch_loss, pos.epoch_tokens = pos.epoch + 1, 0, 0.0, 0
    if rank:  # the saved sums are all ranks'; rank 0 carries them on
        pos.epoch_loss = pos.window_loss = 0.0
    log.info("resuming from %s: epoch %d, batch %d, %.1f min trained so far",
             checkpoint.path, pos.epoch + 1, pos.step, pos.elapsed_s / 60)
    return pos, str(checkpoint.path)


def _last_good(store: CheckpointStore | None) -> str:
    """The checkpoint a re-run would resume from, for messages."""
    if store is None:
        return "there is none (this run keeps no checkpoints)"
    try:
        good = store.latest()
    except CheckpointError as exc:
        return f"there is none usable ({exc})"
    return str(good.path) if good else "there is none yet"


def _non_finite_error(problem: str, pos: Position, store: CheckpointStore | None, world: int) -> NonFiniteLoss:
    return NonFiniteLoss(
        f"{problem} by global step {pos.global_step} (epoch {pos.epoch + 1}, batch {pos.step}; the loss is "
        f"checked every ~0.5 s{', and on every rank every 16 steps' if world > 1 else ''}, the weights and "
        f"optimizer state before every checkpoint and at the end). Nothing from this run after the last good "
        f"checkpoint is saved: {_last_good(store)}. Lower training.learning_rate or set training.grad_clip, "
        f"then run again to resume from it."
    )


def _require_finite(tensors: dict[str, torch.Tensor], pos: Position, store: CheckpointStore | None,
                    world: int) -> None:
    """Stop before weights or optimizer state holding NaN or infinity are saved (checkpoint or model)."""
    bad = non_finite_tensors(tensors)
    if bad:
        names = ", ".join(bad[:3]) + (", …" if len(bad) > 3 else "")
        raise _non_finite_error(f"the weights or optimizer state became non-finite ({len(bad)} of {len(tensors)} "
                                f"tensors: {names})", pos, store, world)


def _row_due(pos: Position, log_every: int) -> bool:
    return pos.global_step % log_every == 0 and pos.tokens > pos.window_start_tokens


def _loss_row(pos: Position, batches: int, elapsed_s: float, world: int, device: torch.device) -> dict:
    """The history's row of the mean train loss over the steps since its previous such row."""
    window = _all_sum(pos.window_loss, device) if world > 1 else pos.window_loss
    row = {"kind": "step", "epoch": round(pos.epoch + pos.step / batches, 3), "step": pos.global_step,
           "tokens": pos.tokens, "elapsed_s": round(elapsed_s, 1),
           "train_loss": window / max(pos.tokens - pos.window_start_tokens, 1),
           "val_loss": None, "val_perplexity": None, "tokens_per_s": None}
    pos.window_loss, pos.window_start_tokens = 0.0, pos.tokens
    return row


def fit(config: ModelConfig, vocab_fingerprint: str, train: Buckets, val: Buckets | None, p: TrainingParams,
        store: CheckpointStore | None, device: torch.device,
        on_step: Callable[[Position, CharRNN], None] | None = None, log_every: int = LOG_EVERY) -> Result:
    """Train (or continue training) a model; see the module docstring. ``on_step(position, model)``
    is called after every optimizer step (tests and benchmarks use it; it may raise to interrupt).
    The history gets a row per epoch (with validation loss) and one of the train loss every
    ``log_every`` steps."""
    torch.manual_seed(p.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (cuDNN RNNs already are)
    model = CharRNN(config)
    # Start from the unigram distribution (head bias = log frequency of each training target): the
    # first minutes no longer go into learning character frequencies (loss ln V ≈ 8.9 → ≈ 6.5 at step 0).
    counts = train.target_counts(config.vocab_size).double() + 1
    model.head.bias.data = (counts / counts.sum()).log().float()
    model = model.to(device).train()
    opt = make_optimizer(model, p, device)
    rank, world = ranks()  # every rank reads the same checkpoint; only rank 0 writes
    compat = compatibility(config, vocab_fingerprint, p)

    pos, resumed_from = _resume(store, model, opt, compat, p, rank, world)
    batches = train.steps(world)  # = len(train) on one process
    if _row_due(pos, log_every):  # interrupted just before its train-loss row was written
        pos.history.append(_loss_row(pos, batches, pos.elapsed_s, world, device))
    if p.precision == "bf16" and device.type != "cuda":
        log.warning("training.precision = 'bf16' applies on CUDA only; training in fp32 on %s", device)
    fused = device.type != "cuda" if p.fused_head == "auto" else p.fused_head
    step_loss = _StepLoss(model, fused)
    if world > 1:
        step_loss = DistributedDataParallel(step_loss, device_ids=[device.index] if device.type == "cuda" else None)
    log.info("training %s %d→%d×%d on %s (%d threads%s), %s: %d poems, %d tokens, %d batches per epoch",
             config.cell, config.embedding_dim, config.hidden_dim, config.num_layers, device,
             torch.get_num_threads(), f", rank {rank} of {world}" if world > 1 else "",
             p.precision if device.type == "cuda" else "fp32", train.sequences, train.tokens, batches)

    budget = p.max_minutes * 60 if p.max_minutes else math.inf
    start = last_checkpoint = last_display = time.perf_counter()
    session_tokens, stopped, trained_before = 0, "finished", pos.elapsed_s
    running = torch.zeros((), device=device)  # NLL summed on the device since the last sync
    segment_start, segment_tokens = start, 0  # for tokens/s of the current epoch in this run

    def sync(agreed: bool = False) -> None:
        """Fold the loss summed on the device into the epoch's, and stop on a non-finite loss — checked
        before anything is saved, so no bad state is ever kept. Several ranks must stop together (one
        stopping alone leaves the others waiting in a collective): they check only where all of them
        are at the same step (``agreed``) and stop if any rank saw one."""
        nonlocal running
        summed = running.item()
        pos.epoch_loss += summed
        pos.window_loss += summed
        running = torch.zeros((), device=device)
        bad = not math.isfinite(pos.epoch_loss)
        if world > 1 and agreed:
            bad = _all_sum(float(bad), device) > 0
        elif world > 1:
            return
        if bad:
            non_finite()

    def non_finite() -> None:
        raise _non_finite_error(f"the training loss became non-finite ({pos.epoch_loss})", pos, store, world)

    def save(reason: str, collective: bool = True) -> None:
        if store is None:
            return
        sync(agreed=collective)
        if world > 1 and not collective and not math.isfinite(pos.epoch_loss):
            non_finite()  # alone (interrupted): this rank's own loss decides
        tensors = _state_tensors(model, opt)
        _require_finite(tensors, pos, store, world)  # the same weights on every rank: all stop alike
        pos.elapsed_s = trained_before + time.perf_counter() - start
        saved, others = asdict(pos), {}
        if world > 1 and collective:
            saved["epoch_loss"] = _all_sum(pos.epoch_loss, device)
            saved["window_loss"] = _all_sum(pos.window_loss, device)
            others = _ranks_rng(world, device)
        if rank:
            return
        meta = {"compatibility": compat, "training": p.model_dump(), "position": saved, "reason": reason}
        path = store.save(pos.global_step, meta, tensors | others)
        log.info("checkpoint (%s): %s", reason, path)

    def record(partial: bool) -> None:
        sync(agreed=True)
        seconds = time.perf_counter() - segment_start
        epoch_loss = _all_sum(pos.epoch_loss, device) if world > 1 else pos.epoch_loss
        val_loss = evaluate(model, val, device, p.precision) if val is not None and rank == 0 else None
        row = {
            "kind": "epoch", "epoch": round(pos.epoch + pos.step / batches, 3) if partial else pos.epoch,
            "step": pos.global_step, "tokens": pos.tokens,
            "elapsed_s": round(trained_before + time.perf_counter() - start, 1),
            "train_loss": epoch_loss / max(pos.epoch_tokens, 1),
            "val_loss": val_loss, "val_perplexity": math.exp(val_loss) if val_loss is not None else None,
            "tokens_per_s": round(segment_tokens / seconds) if seconds > 0 else None,
        }
        pos.history.append(row)
        log.info("epoch %s: train loss %.3f, val loss %s, %s tokens/s", row["epoch"], row["train_loss"],
                 f"{val_loss:.3f} (perplexity {row['val_perplexity']:.1f})" if val_loss is not None else "n/a",
                 row["tokens_per_s"])

    progress = _progress(p.epochs * batches, quiet=rank > 0)
    task = progress.add_task("train", total=p.epochs * batches, completed=pos.epoch * batches + pos.step,
                             epoch=f"{pos.epoch + 1}/{p.epochs}", loss="…", tps="…", eta="…")
    try:
        with progress:
            while pos.epoch < p.epochs and stopped == "finished":
                shard = (((b, b.tokens) for b in train.epoch(p.seed, pos.epoch, skip=pos.step)) if world == 1
                         else train.shard(p.seed, pos.epoch, rank, world, skip=pos.step))
                for batch, step_tokens in shard:  # step_tokens: the step's tokens over all ranks
                    with autocast(device, p.precision):
                        loss = step_loss(batch.inputs, batch.targets)
                    opt.zero_grad(set_to_none=True)
                    # DDP averages the ranks' gradients: × world makes that the gradient of the step's mean NLL
                    (loss * world / step_tokens).backward()
                    if p.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                    opt.step()
                    running += loss.detach()
                    pos.step += 1
                    pos.global_step += 1
                    pos.tokens += step_tokens
                    pos.epoch_tokens += step_tokens
                    session_tokens += step_tokens
                    segment_tokens += step_tokens
                    if on_step is not None:
                        on_step(pos, model)
                    if _row_due(pos, log_every):
                        sync(agreed=True)
                        pos.history.append(_loss_row(pos, batches, trained_before + time.perf_counter() - start,
                                                     world, device))
                    now = time.perf_counter()
                    if now - last_display > 0.5:
                        sync()
                        last_display = now
                        rate = session_tokens / (now - start)
                        left = ((p.epochs - pos.epoch) * train.tokens - pos.epoch_tokens) / max(rate, 1e-9)
                        progress.update(task, completed=pos.epoch * batches + pos.step,
                                        epoch=f"{pos.epoch + 1}/{p.epochs}",
                                        loss=f"{pos.epoch_loss / max(pos.epoch_tokens, 1):.3f}",
                                        tps=f"{rate:,.0f}", eta=_clock(min(left, budget - (now - start))))
                    over = now - start > budget
                    due = bool(p.checkpoint_minutes) and now - last_checkpoint > p.checkpoint_minutes * 60
                    if world > 1:  # all ranks stop and checkpoint at the same step: rank 0's clock decides
                        over, due, bad = _agree(over, due, pos, running, device)
                        if bad:  # a non-finite loss on any rank stops every rank here
                            non_finite()
                    if over:
                        stopped = "budget"
                        break
                    if due:
                        save("time")
                        last_checkpoint = now
                else:
                    pos.epoch, pos.step = pos.epoch + 1, 0
                    record(partial=False)
                    pos.epoch_loss, pos.epoch_tokens = 0.0, 0
                    segment_start, segment_tokens = time.perf_counter(), 0
                    if pos.epoch % p.checkpoint_every == 0 or pos.epoch == p.epochs:
                        save("epoch")
                        last_checkpoint = time.perf_counter()
    except KeyboardInterrupt:
        save("interrupted", collective=False)  # other ranks may be gone: rank 0's own loss sum
        log.warning("interrupted: training state saved; run again to continue from epoch %d, batch %d",
                    pos.epoch + 1, pos.step)
        raise
    if stopped == "budget":
        log.info("the %.3g-minute budget (training.max_minutes) is spent; run again to continue", p.max_minutes)
        if pos.step:
            record(partial=True)
        save("budget")
    elif not session_tokens:
        log.info("already trained for %d epochs (training.epochs = %d): nothing to do; raise epochs to "
                 "train longer", pos.epoch, p.epochs)
    _require_finite({f"model.{k}": v for k, v in model.state_dict().items()}, pos, store, world)
    if world > 1:
        dist.barrier()  # rank 0's last checkpoint is on disk before any rank goes on (and may read it)
    pos.elapsed_s = trained_before + time.perf_counter() - start
    return Result(model, pos, stopped, resumed_from)


def _agree(over: bool, due: bool, pos: Position, running: torch.Tensor, device: torch.device,
           every: int = 16) -> tuple[bool, bool, bool]:
    """Every ``every`` steps, on every rank: rank 0's (budget spent, checkpoint due), and whether any
    rank's loss so far is non-finite. One all-reduce (and a host sync)."""
    if pos.global_step % every:
        return False, False, False
    first = dist.get_rank() == 0
    bad = not math.isfinite(pos.epoch_loss + running.item())
    flags = torch.tensor([over and first, due and first, bad], dtype=torch.int32, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1]), bool(flags[2])


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
