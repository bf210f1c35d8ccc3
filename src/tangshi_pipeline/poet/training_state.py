"""The state of a training run: where it is (:class:`Position`), what a checkpoint holds, how a run
resumes from one, and the check that nothing non-finite is ever saved.

A checkpoint is two plain dicts (:class:`~tangshi_pipeline.poet.checkpoints.CheckpointStore`
writes them): ``meta`` — the position, the training parameters, what the run must share with the
checkpoint to resume it (:func:`compatibility`) and why it was written — and ``tensors`` — the
weights (``model.*``), the optimizer's moments (``optim.*``) and the RNG states (``rng.*``, one
per rank). Resuming restores all three, so a resumed run takes the same steps as one never
interrupted.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tangshi_pipeline.poet.checkpoints import CheckpointError, CheckpointStore, non_finite_tensors
from tangshi_pipeline.poet.model import CharRNN, ModelConfig
from tangshi_pipeline.poet.params import TrainingParams

log = logging.getLogger(__name__)


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
    cycle_start_step: int = 0  # global_step where the learning-rate cycle began
    cycle_start_s: float = 0.0  # elapsed_s where it began
    cycle_done: bool = False  # its budget was spent or its last epoch done: a re-run starts a new one
    history: list[dict] = field(default_factory=list)

    def advance(self, tokens: int) -> None:
        """One optimizer step done, of ``tokens`` predicted tokens (over all ranks)."""
        self.step += 1
        self.global_step += 1
        self.tokens += tokens
        self.epoch_tokens += tokens


def compatibility(config: ModelConfig, vocab_fingerprint: str, p: TrainingParams) -> dict[str, Any]:
    """What a checkpoint must share with the run to be resumed: shape, vocabulary, optimizer. (The
    architecture as JSON keeps it; a full head's keys are left out, as checkpoints before the
    adaptive head have them.)"""
    arch = asdict(config) | {"adaptive_cutoffs": list(config.adaptive_cutoffs)}
    if config.head == "full":
        del arch["head"], arch["adaptive_cutoffs"]
    return {"architecture": arch, "vocab_fingerprint": vocab_fingerprint, "optimizer": p.optimizer}


def state_tensors(model: CharRNN, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """This process's weights, optimizer moments and RNG states, as a checkpoint keeps them."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def resume(store: CheckpointStore | None, model: CharRNN, opt: torch.optim.Optimizer, compat: dict,
           p: TrainingParams, rank: int, world: int) -> tuple[Position, str | None]:
    """Where training starts: the newest usable checkpoint (its weights, optimizer and RNG state
    restored into ``model`` and ``opt``) and its path, or a fresh position. ``training.resume=false``
    deletes the checkpoints (on rank 0) instead. Every rank reads the same checkpoint."""
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


def _restore(model: CharRNN, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rank: int) -> None:
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


def _describe_mismatch(old: dict, new: dict) -> str:
    diffs = []
    for key in ("architecture", "vocab_fingerprint", "optimizer"):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: {str(a)[:12]!r} → {str(b)[:12]!r}" if "fingerprint" in key else f"{key}: {a!r} → {b!r}")
    return ", ".join(diffs)


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


def non_finite_error(problem: str, pos: Position, store: CheckpointStore | None) -> NonFiniteLoss:
    return NonFiniteLoss(
        f"{problem} by global step {pos.global_step} (epoch {pos.epoch + 1}, batch {pos.step}; the loss is "
        f"checked about every 0.5 s and before every history row and checkpoint, the weights and optimizer "
        f"state before every checkpoint and at the end). Nothing from this run after the last good "
        f"checkpoint is saved: {_last_good(store)}. Lower training.learning_rate or set training.grad_clip, "
        f"then run again to resume from it."
    )


def require_finite(tensors: dict[str, torch.Tensor], pos: Position, store: CheckpointStore | None) -> None:
    """Stop before weights or optimizer state holding NaN or infinity are saved (checkpoint or model)."""
    bad = non_finite_tensors(tensors)
    if bad:
        names = ", ".join(bad[:3]) + (", …" if len(bad) > 3 else "")
        raise non_finite_error(f"the weights or optimizer state became non-finite ({len(bad)} of {len(tensors)} "
                               f"tensors: {names})", pos, store)


def _last_good(store: CheckpointStore | None) -> str:
    """The checkpoint a re-run would resume from, for messages."""
    if store is None:
        return "there is none (this run keeps no checkpoints)"
    try:
        good = store.latest()
    except CheckpointError as exc:
        return f"there is none usable ({exc})"
    return str(good.path) if good else "there is none yet"
