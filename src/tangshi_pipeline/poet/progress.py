"""The training progress bar: epoch, loss, tokens/s and ETA on a terminal (rich), nothing elsewhere.

Off the terminal (CI, logs) the loop's one log line per epoch is the progress report.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

if TYPE_CHECKING:
    from tangshi_pipeline.poet.training_state import Position

EVERY_S = 0.5  # seconds between updates (each one waits for the device: the loss is read)


class ProgressBar:
    """A bar over ``epochs × batches`` steps, started at ``pos``; ``quiet`` (ranks > 0) shows nothing.
    ``budget_s`` (training.max_minutes) caps the ETA."""

    def __init__(self, epochs: int, batches: int, epoch_tokens: int, pos: Position, budget_s: float, quiet: bool):
        console = Console(stderr=True)
        self.epochs, self.batches, self.epoch_tokens, self.budget_s = epochs, batches, epoch_tokens, budget_s
        self.start = self.last = time.perf_counter()
        self.start_tokens = pos.tokens
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA {task.fields[eta]}"),
            console=console, disable=quiet or not console.is_terminal, transient=True,
        )
        self.task = self.progress.add_task("train", total=epochs * batches, completed=pos.epoch * batches + pos.step,
                                           epoch=f"{pos.epoch + 1}/{epochs}", loss="…", tps="…", eta="…")

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def due(self, now: float) -> bool:
        """Time for an update (about twice a second)."""
        return now - self.last > EVERY_S

    def show(self, pos: Position, now: float) -> None:
        self.last = now
        rate = (pos.tokens - self.start_tokens) / (now - self.start)
        left = ((self.epochs - pos.epoch) * self.epoch_tokens - pos.epoch_tokens) / max(rate, 1e-9)
        self.progress.update(self.task, completed=pos.epoch * self.batches + pos.step,
                             epoch=f"{pos.epoch + 1}/{self.epochs}", tps=f"{rate:,.0f}",
                             loss=f"{pos.epoch_loss / max(pos.epoch_tokens, 1):.3f}",
                             eta=_clock(min(left, self.budget_s - (now - self.start))))


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
