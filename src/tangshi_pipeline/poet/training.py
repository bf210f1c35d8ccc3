"""Training: :func:`train_poet`, which the ``train`` node, torchrun's ranks and the ranks it starts
all run, and :func:`fit`, the loop.

:func:`fit` reads top to bottom: set-up (a fresh model, its optimizer); :func:`resume` from the
newest compatible checkpoint (``training_state.py``); the loop over epochs and batches (AdamW or the
classic RMSprop, gradient clipping, bf16 autocast on CUDA if asked). What the loop does besides
stepping is a named function it calls: :func:`_checkpoint`, :func:`_record_steps` and
:func:`_record_epoch` (the history: the train loss every ``LOG_EVERY`` steps, train and validation
loss per epoch), the progress bar, the budget and checkpoint clocks, and the learning rate
(:func:`learning_rate`, set before every step). A checkpoint is written every
``checkpoint_every`` epochs, every ``checkpoint_minutes``, when the budget is spent, on Ctrl-C and at
the end; none, nor the model, ever holds a NaN or an infinity. The loop waits for the device only
for the progress bar (about twice a second), the history's rows and checkpoints.

Data-parallel, the loop talks to the other ranks only through its :class:`Comm` (``distributed.py``):
each rank takes its share of every epoch's batches (:meth:`Buckets.shard`), DistributedDataParallel
averages the gradients, sums are all-reduced and rank 0 writes the checkpoints. On one process every
collective is an identity: one loop for both.

The learning rate follows a cycle (``training.lr_schedule: cosine``, as nanoGPT's): a linear warm-up
over ``warmup_steps``, then a cosine decay to ``min_lr_ratio`` × ``learning_rate`` at the end of the
cycle — the budget's end (``max_minutes`` of training time) or the last epoch (``epochs``), whichever
comes first. Where the run is in its cycle is a function of the checkpointed position (steps and
training seconds since the cycle began), so a run interrupted within a cycle resumes it — and
finishes it: ``max_minutes`` is the budget of a cycle, not of each run. A run started after a cycle
ended (its budget spent or its epochs done, then ``epochs`` raised) begins a new cycle: warm-up, and
decay over another ``max_minutes`` (or over the added epochs).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import InitVar, asdict, dataclass
from typing import Any

import pandas as pd
import torch

from tangshi_pipeline.poet.artifact import Artifact
from tangshi_pipeline.poet.batching import Buckets, split_sequences, themed_sequences
from tangshi_pipeline.poet.checkpoints import CheckpointStore
from tangshi_pipeline.poet.devices import autocast, eval_batch, resolve_device, torch_settings
from tangshi_pipeline.poet.distributed import ONE_PROCESS, Comm, spawn
from tangshi_pipeline.poet.model import CharRNN, ModelConfig
from tangshi_pipeline.poet.objective import StepLoss, evaluate, initial_model, make_optimizer, model_config
from tangshi_pipeline.poet.params import TrainingParams
from tangshi_pipeline.poet.progress import ProgressBar
from tangshi_pipeline.poet.training_state import (
    NonFiniteLoss,
    Position,
    compatibility,
    non_finite_error,
    require_finite,
    resume,
    state_tensors,
)
from tangshi_pipeline.poet.vocab import Vocab

log = logging.getLogger(__name__)
LOG_EVERY = 200  # optimizer steps between the history's train-loss rows (besides one row per epoch)
HISTORY_COLUMNS = ["epoch", "step", "tokens", "elapsed_s", "train_loss", "val_loss", "val_perplexity",
                   "tokens_per_s", "kind", "learning_rate"]


@dataclass
class Result:
    """What :func:`fit` ends with: the model (on its device), where the run is, why it stopped."""

    model: CharRNN
    position: Position
    stopped: str  # "finished" | "budget"
    resumed_from: str | None


def train_poet(vectors: pd.DataFrame, vocab: Vocab, p: TrainingParams, store: CheckpointStore | None,
               comm: Comm = ONE_PROCESS, keywords: pd.DataFrame | None = None) -> tuple[Artifact, pd.DataFrame]:
    """Train (or continue training) the poet on the ``train`` split of ``vectors``, validating on
    ``val`` after each epoch: the model artifact (on the CPU) and the training history.

    With ``keywords`` (the ``poem_keywords`` table) and ``keyword_dropout`` < 1 the model learns
    themes: each training poem but a ``keyword_dropout`` share reads its keywords before its start
    token, unscored (:func:`.batching.themed_sequences`); the model's metadata records it
    (``themes``). The history's validation loss is without keywords, comparable with any model.

    Every rank runs this: on one process, ``p.world_size > 1`` starts that many ranks on this
    machine, each calling it with its ``comm``, and returns rank 0's model; torchrun's ranks call
    it with theirs. Device and threads are decided here, once (torch's settings put back after).
    """
    train_seqs, skips = split_sequences(vectors, "train"), None
    if keywords is not None and p.keyword_dropout < 1:
        train_seqs, skips = themed_sequences(vectors, "train", keywords, p.keyword_dropout, p.seed)
    themes = bool(skips) and any(skips)  # some poem reads keywords (none has any in a tiny corpus)
    val_seqs = split_sequences(vectors, "val")
    if not train_seqs:
        raise ValueError("the vectors table has no 'train' rows: check data_processing.split")
    if p.world_size > 1 and comm.world == 1:  # ranks asked for, and this is not one of them: start them
        return _on_ranks_here(vectors, vocab, p, store, keywords)
    device = resolve_device(p.device) if comm.device is None else comm.device
    config = model_config(p, len(vocab))
    with torch_settings(device, p.threads, comm.local_world):
        train = Buckets(train_seqs, p.batch_size, device, skips)
        val = Buckets(val_seqs, eval_batch(device), device) if val_seqs else None
        result = fit(config, vocab.fingerprint, train, val, p, store, device, comm=comm)
    pos, last = result.position, _last_epoch_row(result.position.history)
    meta = {
        "vocab_fingerprint": vocab.fingerprint,
        "vocab": {"size": len(vocab), "specials": vocab.to_json()["specials"]},
        "themes": {"prefix": "keyword ids before the start token", "keyword_dropout": p.keyword_dropout,
                   "max_keywords": max(map(len, keywords["keywords"]), default=0)} if themes else None,
        "training": {**p.model_dump(), "device": str(device), "epochs_done": last.get("epoch", pos.epoch),
                     "steps": pos.global_step, "tokens": pos.tokens, "elapsed_s": round(pos.elapsed_s, 1),
                     "stopped": result.stopped, "resumed_from": result.resumed_from},
        "metrics": {k: last.get(k) for k in ("train_loss", "val_loss", "val_perplexity")},
    }
    return Artifact(result.model.cpu().eval(), meta), pd.DataFrame(pos.history, columns=HISTORY_COLUMNS)


def _on_ranks_here(vectors: pd.DataFrame, vocab: Vocab, p: TrainingParams, store: CheckpointStore | None,
                   keywords: pd.DataFrame | None) -> tuple[Artifact, pd.DataFrame]:
    """:func:`train_poet` on ``p.world_size`` ranks started on this machine: rank 0's model, and its
    history (handed back in the model's metadata)."""
    artifact = spawn(p.world_size, p.device, _rank, (vectors, vocab, p, store, keywords))
    return artifact, pd.DataFrame(artifact.meta.pop("history"), columns=HISTORY_COLUMNS)


def _rank(comm: Comm, vectors: pd.DataFrame, vocab: Vocab, p: TrainingParams, store: CheckpointStore | None,
          keywords: pd.DataFrame | None = None) -> Artifact:
    artifact, history = train_poet(vectors, vocab, p, store, comm, keywords)
    return Artifact(artifact.model, artifact.meta | {"history": history.to_dict("records")})


def _last_epoch_row(history: list[dict]) -> dict:
    """The newest per-epoch row (train and validation loss); rows of kind "step" hold the train loss only."""
    return next((row for row in reversed(history) if row.get("kind") != "step"), {})


def fit(config: ModelConfig, vocab_fingerprint: str, train: Buckets, val: Buckets | None, p: TrainingParams,
        store: CheckpointStore | None, device: torch.device,
        on_step: Callable[[Position, CharRNN], None] | None = None, log_every: int = LOG_EVERY,
        comm: Comm = ONE_PROCESS) -> Result:
    """Train (or continue training) a model; see the module docstring. ``on_step(position, model)``
    is called after every optimizer step (tests and benchmarks use it; it may raise to interrupt).
    ``comm``: the ranks training together (one process by default)."""
    torch.manual_seed(p.seed)
    model = initial_model(config, train, device)
    opt = make_optimizer(model, p, device)
    compat = compatibility(config, vocab_fingerprint, p)
    pos, resumed_from = resume(store, model, opt, compat, p, comm.rank, comm.world)
    run = _Run(model, opt, p, store, comm, compat, device, pos)
    step_loss = comm.wrap(StepLoss(model, fused=device.type != "cuda" if p.fused_head == "auto" else p.fused_head),
                          partial=config.head == "adaptive")
    batches = train.steps(comm.world)  # optimizer steps per epoch
    if pos.epoch < p.epochs and (pos.cycle_done or _progress(run, pos, batches) >= 1):
        _new_cycle(run, pos)
    if _row_due(pos, log_every):  # interrupted just before its train-loss row was written
        _set_learning_rate(run, pos, batches, pos.global_step - 1)  # the row shows its last step's rate
        _record_steps(run, pos, batches)
    _announce(run, train, batches)
    stopped = "finished"
    try:
        with ProgressBar(p.epochs, batches, train.tokens, pos, run.budget, quiet=comm.rank > 0) as bar:
            while pos.epoch < p.epochs and stopped == "finished":
                for batch, step_tokens in train.shard(p.seed, pos.epoch, comm.rank, comm.world, skip=pos.step):
                    _set_learning_rate(run, pos, batches)
                    with autocast(device, p.precision):
                        loss = step_loss(batch.inputs, batch.targets)  # summed NLL of this rank's batch
                    opt.zero_grad(set_to_none=True)
                    # DDP averages the ranks' gradients: × world makes that the gradient of the step's mean NLL
                    (loss * comm.world / step_tokens).backward()
                    if p.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                    opt.step()
                    run.running += loss.detach()
                    pos.advance(step_tokens)
                    if on_step is not None:
                        on_step(pos, model)
                    if _row_due(pos, log_every):
                        _record_steps(run, pos, batches)
                    now = time.perf_counter()
                    if bar.due(now):
                        _fold_loss(run, pos)  # reads the loss from the device
                        bar.show(pos, now)
                    over, due, bad, clock = comm.agree(pos.global_step, _over_budget(run, pos, now),
                                                       _checkpoint_due(run, now), not math.isfinite(pos.epoch_loss),
                                                       _clock(run, pos, now))
                    run.clock = run.clock if clock is None else clock
                    if bad:
                        raise _non_finite_loss(run, pos)
                    if over:
                        stopped = "budget"
                        break
                    if due:
                        _checkpoint(run, pos, "time")
                else:  # the epoch is done
                    _end_epoch(run, pos, val, batches)
                    pos.cycle_done = pos.epoch == p.epochs
                    if pos.epoch % p.checkpoint_every == 0 or pos.epoch == p.epochs:
                        _checkpoint(run, pos, "epoch")
    except KeyboardInterrupt:
        _checkpoint(run, pos, "interrupted", comm.alone())  # the other ranks may be gone: this rank's own sums
        log.warning("interrupted: training state saved; run again to continue from epoch %d, batch %d",
                    pos.epoch + 1, pos.step)
        raise
    if stopped == "budget":
        _stop_for_budget(run, pos, val, batches)
    elif pos.tokens == run.start_tokens:
        log.info("already trained for %d epochs (training.epochs = %d): nothing to do; raise epochs to "
                 "train longer", pos.epoch, p.epochs)
    require_finite({f"model.{k}": v for k, v in model.state_dict().items()}, pos, store)
    comm.barrier()  # rank 0's last checkpoint is on disk before any rank goes on (and may read it)
    pos.elapsed_s = run.elapsed()
    return Result(model, pos, stopped, resumed_from)


@dataclass
class _Run:
    """What the loop's side concerns share: the model and its optimizer, the run's parameters,
    the checkpoints, the ranks, and this run's clocks and counters (the :class:`Position` is what
    a checkpoint keeps; none of this is kept)."""

    model: CharRNN
    opt: torch.optim.Optimizer
    p: TrainingParams
    store: CheckpointStore | None
    comm: Comm
    compat: dict[str, Any]
    device: torch.device
    pos: InitVar[Position]  # where the run starts

    def __post_init__(self, pos: Position) -> None:
        self.start = self.segment_start = self.last_checkpoint = time.perf_counter()
        self.trained_before = pos.elapsed_s  # training seconds of the runs this one continues
        self.start_tokens = pos.tokens
        self.segment_from = pos.epoch_tokens  # epoch_tokens when the epoch's tokens/s clock started
        self.budget = self.p.max_minutes * 60 if self.p.max_minutes else math.inf
        self.running = torch.zeros((), device=self.device)  # NLL summed on the device since the last fold
        self.clock = _clock(self, pos, self.start)  # share of the budget used, as the ranks last agreed

    def elapsed(self) -> float:
        """Training seconds of this run and those it continues."""
        return self.trained_before + time.perf_counter() - self.start


def learning_rate(p: TrainingParams, steps: int, progress: float) -> float:
    """The learning rate ``steps`` optimizer steps into a cycle, ``progress`` (0 → 1) through it:
    constant, or a linear warm-up over ``warmup_steps`` then a cosine decay to ``min_lr_ratio`` × it."""
    if p.lr_schedule == "constant":
        return p.learning_rate
    if steps < p.warmup_steps:
        return p.learning_rate * (steps + 1) / (p.warmup_steps + 1)
    floor = p.learning_rate * p.min_lr_ratio
    return floor + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (p.learning_rate - floor)


def _clock(run: _Run, pos: Position, now: float) -> float:
    """The share of the cycle's time budget used by ``now`` (0 without a budget)."""
    return (run.trained_before + now - run.start - pos.cycle_start_s) / run.budget


def _progress(run: _Run, pos: Position, batches: int, step: int | None = None) -> float:
    """How far the cycle is at global ``step`` (by default the position's): its share of the budget
    used or of its steps taken, whichever is further."""
    step = pos.global_step if step is None else step
    steps = (step - pos.cycle_start_step) / max(run.p.epochs * batches - pos.cycle_start_step, 1)
    return max(steps, run.clock)


def _set_learning_rate(run: _Run, pos: Position, batches: int, step: int | None = None) -> None:
    """The optimizer's rate for global ``step`` (by default the one about to be taken)."""
    step = pos.global_step if step is None else step
    lr = learning_rate(run.p, step - pos.cycle_start_step, _progress(run, pos, batches, step))
    for group in run.opt.param_groups:
        group["lr"] = lr


def _new_cycle(run: _Run, pos: Position) -> None:
    """The previous cycle is over: a new one starts here (warm-up, then decay over the new budget)."""
    pos.cycle_start_s, pos.cycle_start_step, pos.cycle_done = pos.elapsed_s, pos.global_step, False
    run.clock = _clock(run, pos, run.start)
    if pos.global_step:
        log.info("a new learning-rate cycle starts at step %d (the previous one ended)", pos.global_step)

    def elapsed(self) -> float:
        """Training seconds of this run and those it continues."""
        return self.trained_before + time.perf_counter() - self.start


def _over_budget(run: _Run, pos: Position, now: float) -> bool:
    return _clock(run, pos, now) > 1


def _checkpoint_due(run: _Run, now: float) -> bool:
    return bool(run.p.checkpoint_minutes) and now - run.last_checkpoint > run.p.checkpoint_minutes * 60


def _row_due(pos: Position, log_every: int) -> bool:
    return pos.global_step % log_every == 0 and pos.tokens > pos.window_start_tokens


def _fold_loss(run: _Run, pos: Position) -> None:
    """Add the loss summed on the device since the last fold to the epoch's and the window's (a sync)."""
    summed = run.running.item()
    pos.epoch_loss += summed
    pos.window_loss += summed
    run.running.zero_()


def _check_loss(run: _Run, pos: Position, comm: Comm) -> None:
    """Fold the loss in, and stop if it is non-finite on any rank of ``comm`` — called where every
    rank is at the same step (one rank stopping alone would leave the others waiting in a collective)."""
    _fold_loss(run, pos)
    if comm.any(not math.isfinite(pos.epoch_loss)):
        raise _non_finite_loss(run, pos)


def _non_finite_loss(run: _Run, pos: Position) -> NonFiniteLoss:
    return non_finite_error(f"the training loss became non-finite ({pos.epoch_loss})", pos, run.store)


def _checkpoint(run: _Run, pos: Position, reason: str, comm: Comm | None = None) -> None:
    """Save what resuming needs (``training_state.py``), never a non-finite state. Every rank of
    ``comm`` (by default all) takes part; rank 0 writes."""
    comm = run.comm if comm is None else comm
    run.last_checkpoint = time.perf_counter()
    if run.store is None:
        return
    _check_loss(run, pos, comm)
    tensors = state_tensors(run.model, run.opt)
    require_finite(tensors, pos, run.store)  # the same weights on every rank: all stop alike
    pos.elapsed_s = run.elapsed()
    position = asdict(pos) | {"epoch_loss": comm.all_sum(pos.epoch_loss), "window_loss": comm.all_sum(pos.window_loss)}
    tensors |= comm.gather_rng()
    if comm.rank == 0:
        meta = {"compatibility": run.compat, "training": run.p.model_dump(), "position": position, "reason": reason}
        log.info("checkpoint (%s): %s", reason, run.store.save(pos.global_step, meta, tensors))


def _record_steps(run: _Run, pos: Position, batches: int) -> None:
    """The history's row of the mean train loss (all ranks) over the steps since its previous such row."""
    _check_loss(run, pos, run.comm)
    window = run.comm.all_sum(pos.window_loss)
    pos.history.append({"kind": "step", "epoch": round(pos.epoch + pos.step / batches, 3), "step": pos.global_step,
                        "tokens": pos.tokens, "elapsed_s": round(run.elapsed(), 1),
                        "train_loss": window / max(pos.tokens - pos.window_start_tokens, 1),
                        "val_loss": None, "val_perplexity": None, "tokens_per_s": None,
                        "learning_rate": run.opt.param_groups[0]["lr"]})
    pos.window_loss, pos.window_start_tokens = 0.0, pos.tokens


def _end_epoch(run: _Run, pos: Position, val: Buckets | None, batches: int) -> None:
    pos.epoch, pos.step = pos.epoch + 1, 0
    _record_epoch(run, pos, val, batches)
    pos.epoch_loss, pos.epoch_tokens = 0.0, 0
    run.segment_start, run.segment_from = time.perf_counter(), 0


def _record_epoch(run: _Run, pos: Position, val: Buckets | None, batches: int, partial: bool = False) -> None:
    """The history's row of the epoch (so far, if ``partial``): mean train loss over all ranks,
    validation loss (evaluated on rank 0), tokens/s in this run."""
    _check_loss(run, pos, run.comm)
    seconds = time.perf_counter() - run.segment_start
    epoch_loss = run.comm.all_sum(pos.epoch_loss)
    val_loss = evaluate(run.model, val, run.device, run.p.precision) if val is not None and run.comm.rank == 0 else None
    row = {
        "kind": "epoch", "epoch": round(pos.epoch + pos.step / batches, 3) if partial else pos.epoch,
        "step": pos.global_step, "tokens": pos.tokens, "elapsed_s": round(run.elapsed(), 1),
        "train_loss": epoch_loss / max(pos.epoch_tokens, 1),
        "val_loss": val_loss, "val_perplexity": math.exp(val_loss) if val_loss is not None else None,
        "tokens_per_s": round((pos.epoch_tokens - run.segment_from) / seconds) if seconds > 0 else None,
        "learning_rate": run.opt.param_groups[0]["lr"],
    }
    pos.history.append(row)
    log.info("epoch %s: train loss %.3f, val loss %s, %s tokens/s", row["epoch"], row["train_loss"],
             f"{val_loss:.3f} (perplexity {row['val_perplexity']:.1f})" if val_loss is not None else "n/a",
             row["tokens_per_s"])


def _stop_for_budget(run: _Run, pos: Position, val: Buckets | None, batches: int) -> None:
    log.info("the %.3g-minute budget (training.max_minutes) is spent; run again to continue", run.p.max_minutes)
    if pos.step:
        _record_epoch(run, pos, val, batches, partial=True)
    pos.cycle_done = True
    _checkpoint(run, pos, "budget")


def _announce(run: _Run, train: Buckets, batches: int) -> None:
    config, p, device = run.model.config, run.p, run.device
    if p.precision == "bf16" and device.type != "cuda":
        log.warning("training.precision = 'bf16' applies on CUDA only; training in fp32 on %s", device)
    log.info("training %s %d→%d×%d on %s (%d threads, %s), %s: %d poems, %d tokens, %d batches per epoch",
             config.cell, config.embedding_dim, config.hidden_dim, config.num_layers, device,
             torch.get_num_threads(), run.comm, p.precision if device.type == "cuda" else "fp32",
             train.sequences, train.tokens, batches)
