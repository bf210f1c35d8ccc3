"""Where training runs: the device, torch's CPU threads, mixed precision.

:func:`torch_settings` is the one place that changes torch's process-wide settings for a run (CPU
threads, TF32 matmuls), and it puts them back when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

from tangshi_pipeline.poet.params import ParameterError


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; an explicit device must be available."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if (name == "cuda" and not torch.cuda.is_available()) or (name == "mps" and not mps):
        raise ParameterError(f"training.device = {name!r}, but this machine has no {name.upper()} device "
                             f"usable by torch; set training.device to auto or cpu.")
    return torch.device(name)


def cpu_threads(threads: int, ranks_here: int = 1) -> int:
    """CPU threads for each of the ``ranks_here`` ranks on this machine: ``threads``
    (``training.threads``) or, for 0, the idle cores, shared between the ranks. More threads than
    idle cores make torch's CPU kernels spin and wait for each other: on a 2-core machine with one
    core busy, 2 threads trained 8× slower than 1 (measured)."""
    if not threads:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        idle = _idle_cores()
        threads = cores if idle is None else max(1, min(cores, round(idle)))
    return max(1, threads // ranks_here)


def set_threads(threads: int) -> int:
    """Set torch's CPU threads to :func:`cpu_threads` ``(threads)``; the number set."""
    threads = cpu_threads(threads)
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


@contextlib.contextmanager
def torch_settings(device: torch.device, threads: int, ranks_here: int = 1) -> Iterator[None]:
    """torch's process-wide settings for training on ``device``, restored afterwards: on the CPU,
    :func:`cpu_threads` ``(threads, ranks_here)`` threads; on CUDA, fp32 matmuls on tensor cores
    (TF32; cuDNN's RNNs already use them)."""
    old_threads, old_tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(threads, ranks_here))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when ``precision`` asks for it; nothing otherwise."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_batch(device: torch.device) -> int:
    """Poems per evaluation batch: the logits of 64 poems of 80 characters are ~150 MB on the CPU."""
    return 64 if device.type == "cpu" else 512
