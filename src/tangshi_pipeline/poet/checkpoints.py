"""Training checkpoints: resumable state (weights, optimizer state, RNG state, position in the
run) as ``step-<global step>/{state.safetensors,state.json}`` in one folder.

``state.json`` records the sha256 of ``state.safetensors``, checked on load; a checkpoint holding
a NaN or an infinity is never written, and one found on disk is skipped for an older one.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from tangshi_pipeline.atomic import publish_folder, sha256_of

if TYPE_CHECKING:  # torch is imported on first use (the catalog loads this module)
    import torch

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint cannot be read, written or trusted, or does not fit the run; the message names it
    and what to do."""


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())]


def _last_touched(folder: Path) -> float:
    """The newest modification time of ``folder`` and the files in it (now, if it is going away)."""
    try:
        return max([folder.stat().st_mtime, *(f.stat().st_mtime for f in folder.iterdir())])
    except OSError:
        return time.time()


@dataclass
class Checkpoint:
    meta: dict[str, Any]  # JSON: position in the run, fingerprint, parameters, history
    tensors: dict[str, torch.Tensor]  # weights, optimizer state, RNG state
    path: Path


class CheckpointStore:
    """Training checkpoints in ``folder``: ``step-<global step>/{state.safetensors,state.json}``.

    A checkpoint is written into a hidden temporary folder and renamed into place, so a
    ``step-*`` folder is always complete; the newest ``keep`` are kept. ``state.json`` records the
    sha256 of ``state.safetensors``, checked on load. A hidden folder left by a save that was
    killed is deleted once nothing has touched it for ``STALE_S`` seconds.
    """

    STALE_S = 60.0
    HASH_KEY = "state_sha256"

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.folder)!r})"

    def paths(self) -> list[Path]:
        """The complete checkpoint folders, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("step-*") if p.is_dir())

    def latest(self) -> Checkpoint | None:
        """The newest usable checkpoint, or None when there is none. One holding non-finite values
        is skipped (logged) for the next older one; one that is unreadable or does not match its
        recorded hash stops with a :class:`CheckpointError`."""
        skipped = []
        for path in reversed(self.paths()):
            checkpoint = self._read(path)
            bad = non_finite_tensors(checkpoint.tensors)
            if not bad:
                return checkpoint
            log.warning("checkpoint %s holds non-finite values (%d tensors: %s): not resuming from it",
                        path, len(bad), ", ".join(bad[:3]) + (", …" if len(bad) > 3 else ""))
            skipped.append(path.name)
        if skipped:
            raise CheckpointError(
                f"every checkpoint in {self.folder} ({', '.join(skipped)}) holds non-finite weights or optimizer "
                f"state, so none can be resumed; set training.resume=false to start fresh (deletes them)."
            )
        return None

    def _read(self, path: Path) -> Checkpoint:
        from safetensors.torch import load_file

        state = path / "state.safetensors"
        try:
            meta = json.loads((path / "state.json").read_text("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("state.json is not a JSON object")
            recorded = meta.pop(self.HASH_KEY, None)
            if recorded is not None and sha256_of(state) != recorded:
                raise CheckpointError(
                    f"checkpoint {path}: {state.name} does not match the sha256 recorded in state.json when it "
                    f"was written (corrupted or changed since); delete that folder to resume from an older "
                    f"checkpoint, or set training.resume=false to start fresh."
                )
            tensors = load_file(state)
        except CheckpointError:
            raise
        except (OSError, ValueError, SafetensorError) as exc:
            raise CheckpointError(
                f"checkpoint {path} is unreadable ({exc}); delete that folder to resume from an "
                f"older one, or set training.resume=false to start fresh."
            ) from None
        return Checkpoint(meta, tensors, path)

    def save(self, step: int, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
        """Publish the checkpoint of global step ``step`` atomically, then drop all but the newest
        ``keep`` (and any of a later step: those of a line of training abandoned for this one)."""
        path = self.folder / f"step-{int(step):010d}"
        try:
            self._publish(path, meta, tensors)
        except OSError as exc:
            raise CheckpointError(self._write_problem(path, exc)) from None
        done = self.paths()
        for old in [p for p in done if p.name > path.name] + [p for p in done if p.name <= path.name][: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        self.sweep()
        return path

    def _publish(self, path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        with publish_folder(path) as tmp:  # the same step saved again (a finished run re-run) is swapped out
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / "state.safetensors")
            meta = {**meta, self.HASH_KEY: sha256_of(tmp / "state.safetensors")}
            (tmp / "state.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), "utf-8")

    def _write_problem(self, path: Path, exc: OSError) -> str:
        done = self.paths()
        fix = ("the disk is full: free space there" if exc.errno == errno.ENOSPC
               else "make that folder writable (or point the training_checkpoints dataset elsewhere)")
        return (f"cannot write checkpoint {path.name} into {self.folder} ({exc.strerror or exc}); nothing of it "
                f"was kept. {fix[0].upper()}{fix[1:]}, then run again: training resumes from "
                f"{done[-1].name if done else 'the start (there is no checkpoint yet)'}.")

    def sweep(self) -> None:
        """Delete the hidden temporary folders of saves that were killed (untouched for ``STALE_S``)."""
        if not self.folder.is_dir():
            return
        for tmp in self.folder.glob(".step-*"):
            if tmp.is_dir() and time.time() - _last_touched(tmp) > self.STALE_S:
                shutil.rmtree(tmp, ignore_errors=True)

    def clear(self) -> None:
        """Delete every checkpoint (a fresh start)."""
        for old in self.paths():
            shutil.rmtree(old, ignore_errors=True)
