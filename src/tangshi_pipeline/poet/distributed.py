"""Data-parallel training with torch.distributed: the communication object, and starting ranks.

:func:`~tangshi_pipeline.poet.training.fit` talks to the other ranks only through a :class:`Comm`.
The plain :class:`Comm` is a process training alone: its collectives are identities, so the loop
reads the same on one process as on many. :class:`GroupComm` is a rank of a process group
(gradients averaged by DistributedDataParallel, sums all-reduced, rank 0 writing checkpoints).

Ranks join their group through :func:`process_group`, started in one of two ways:

- :func:`spawn`: ``training.world_size > 1`` makes :func:`~tangshi_pipeline.poet.training.train_poet`
  start that many ranks on this machine (one per GPU with ``nccl``; processes with ``gloo`` on the
  CPU); rank 0 hands the model back and Kedro saves it once.
- torchrun (``tangshi_pipeline.plumbing.torchrun``): torchrun starts the ranks, one per GPU, on
  one or several machines; each reads its inputs through the Kedro catalog.

Either way a rank stops, as on Ctrl-C, when its launcher dies (:func:`stop_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tangshi_pipeline.poet.artifact import Artifact, load_artifact, save_artifact
from tangshi_pipeline.poet.devices import resolve_device
from tangshi_pipeline.poet.params import ParameterError

if dist.is_available():
    # Imported here, before any process group exists, on purpose. Its functions take
    # ``group=group.WORLD`` as a default argument, evaluated on first import — which
    # DistributedDataParallel triggers lazily. Imported inside a group, those defaults keep the
    # group alive for ever: destroy_process_group then leaves gloo's worker threads running, and
    # one still freeing a collective's tensor when Python exits aborts the rank (SIGABRT,
    # "terminate called without an active exception"). Imported now, the defaults are None.
    import torch.distributed.nn  # noqa: F401

TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a rank (validation runs on rank 0 alone)
AGREE_EVERY = 16  # steps between the ranks' agreement on stopping, checkpointing and a non-finite loss


class Comm:
    """A process training alone: no other rank takes part, so every collective is an identity.

    That is all there is on one process. A rank of a group uses one too (:meth:`alone`) when the
    others may be gone: after Ctrl-C, rank 0 saves what it has without waiting for them.
    """

    device: torch.device | None = None  # the device collectives use (None: no collectives)

    def __init__(self, rank: int = 0):
        self.rank, self.world, self.local_world = rank, 1, 1

    def __str__(self) -> str:
        return "one process"

    def all_sum(self, x: float) -> float:
        """``x`` summed over the ranks."""
        return x

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        return flag

    def agree(self, step: int, over: bool, due: bool, bad: bool, clock: float
              ) -> tuple[bool, bool, bool, float | None]:
        """At ``step``: (rank 0's budget spent, rank 0's checkpoint due, a non-finite loss on any
        rank, rank 0's ``clock``: the share of the budget used, which sets the learning rate), the
        same on every rank, so all stop, checkpoint and change the learning rate at the same step;
        the clock is None at steps where the ranks do not meet."""
        return over, due, bad, clock

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def gather_rng(self) -> dict[str, torch.Tensor]:
        """The other ranks' RNG states, for rank 0's checkpoint (each rank's dropout masks differ)."""
        return {}

    def wrap(self, module: torch.nn.Module, partial: bool = False) -> torch.nn.Module:
        """``module`` with its gradients averaged over the ranks on ``backward``."""
        return module

    def alone(self) -> Comm:
        """This rank, acting without the others."""
        return self


ONE_PROCESS = Comm()


class GroupComm(Comm):
    """A rank of the default ``torch.distributed`` process group (see :func:`process_group`)."""

    def __init__(self, device: torch.device, local_world: int):
        super().__init__(dist.get_rank())
        self.world, self.local_world, self.device = dist.get_world_size(), local_world, device

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world}"

    def all_sum(self, x: float) -> float:
        t = torch.tensor(x, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item()

    def any(self, flag: bool) -> bool:
        return self.all_sum(float(flag)) > 0

    def agree(self, step: int, over: bool, due: bool, bad: bool, clock: float
              ) -> tuple[bool, bool, bool, float | None]:
        """Every ``AGREE_EVERY`` steps (one all-reduce; rank 0's clock decides), else nothing."""
        if step % AGREE_EVERY:
            return False, False, False, None
        first = self.rank == 0
        flags = torch.tensor([over and first, due and first, bad, clock if first else -1.0],
                             dtype=torch.float64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1]), bool(flags[2]), flags[3].item()

    def barrier(self) -> None:
        dist.barrier()

    def gather_rng(self) -> dict[str, torch.Tensor]:
        states = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state()
        out = {}
        for name, state in states.items():
            gathered = [torch.empty_like(state, device=self.device) for _ in range(self.world)]
            dist.all_gather(gathered, state.to(self.device))
            out |= {f"rng.{name}.rank{r}": g.cpu() for r, g in enumerate(gathered) if r}
        return out

    def wrap(self, module: torch.nn.Module, partial: bool = False) -> torch.nn.Module:
        """``partial``: a step may leave parameters without a gradient (an adaptive head's cluster that
        no target of the batch falls in); DDP then looks for them each step instead of waiting."""
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       find_unused_parameters=partial)

    def alone(self) -> Comm:
        return Comm(self.rank)


@contextlib.contextmanager
def process_group(device: str, local_rank: int, local_world: int, init_method: str = "env://",
                  rank: int = -1, world: int = -1) -> Iterator[GroupComm]:
    """Join the process group as the rank using GPU ``local_rank`` (or the CPU); left at the end.
    ``env://``: rank, world size and rendezvous from the environment (as torchrun sets it)."""
    where = rank_device(device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    dist.init_process_group(backend(where), init_method=init_method, rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        yield GroupComm(where, local_world)
    finally:
        dist.destroy_process_group()


def spawn(world: int, device: str, target: Callable[..., Artifact], args: tuple) -> Artifact:
    """Run ``target(comm, *args)`` on ``world`` ranks started on this machine (one per GPU on CUDA,
    gloo processes on the CPU), each in the process group; the model rank 0's returns, handed back
    through a temporary folder (saved and loaded as any model artifact)."""
    import torch.multiprocessing as mp

    rank_device(device, world - 1)  # enough GPUs? (a clear error here rather than from a rank)
    with tempfile.TemporaryDirectory(prefix="tangshi-ddp-") as out:
        mp.spawn(_spawned_rank, args=(world, free_port(), device, target, args, out), nprocs=world, join=True)
        return load_artifact(out)


def _spawned_rank(rank: int, world: int, port: int, device: str, target: Callable[..., Artifact], args: tuple,
                  out: str) -> None:
    stop_with_parent()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank {rank}/{world} %(name)s: %(message)s")
    address = f"tcp://127.0.0.1:{port}"
    with exit_when_interrupted(), process_group(device, rank, world, address, rank, world) as comm:
        artifact = target(comm, *args)
        if comm.rank == 0:
            save_artifact(Path(out), artifact)


def rank_device(device: str, local_rank: int) -> torch.device:
    """The device of a rank (``device``: ``training.device``): GPU ``local_rank`` on CUDA, else the CPU."""
    where = resolve_device(device)
    if where.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ParameterError(f"{local_rank + 1} ranks on this machine need as many GPUs, it has "
                                 f"{torch.cuda.device_count()}; lower training.world_size (or --nproc_per_node).")
        return torch.device("cuda", local_rank)
    if where.type != "cpu":
        raise ParameterError(f"distributed training runs on CUDA or the CPU, not {where.type}; "
                             f"set training.device to cpu or training.world_size to 1.")
    return where


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_with_parent(grace_s: float = 10.0, interval_s: float = 1.0) -> None:
    """Stop this rank, as on Ctrl-C, when the process that started it dies; end it ``grace_s`` later.

    ``kill -9`` of torchrun (or of the ``kedro run`` whose train node spawned the ranks) gives it no
    chance to stop its ranks: they would go on training, rank 0 writing checkpoints, on their own.
    A daemon thread polls for the parent's pid to change (the orphan was adopted), arms a kernel
    timer, then sends this process SIGINT: every rank stops, rank 0 saving a checkpoint unless it was
    waiting on a rank that stopped first. The timer (``alarm``: SIGALRM, whose default action ends
    the process) ends a rank still there ``grace_s`` later whatever it is doing: waiting in a
    collective for a rank that is gone, or hung in C++ holding the GIL, where no Python thread would
    run again (gloo's process-group destructor, pytorch/pytorch#56297). Where SIGINT is ignored (a
    shell's background job) the rank is ended at once. A checkpoint cut short stays a hidden
    temporary folder, which a later run sweeps.

    Called on the main thread when a rank starts. The parent-death SIGINT that
    ``torch.multiprocessing.spawn`` asks the kernel for is cleared, so that the timer is always armed
    before the SIGINT arrives. (That kernel signal is not used instead: it fires when the launcher's
    *thread* ends, and torchrun starts its ranks from one.)
    """
    _prctl(1, 0)  # PR_SET_PDEATHSIG: none
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.write(2, f"rank process {os.getpid()}: its launcher (pid {parent}) is gone; stopping\n".encode())
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            os._exit(1)
        signal.alarm(max(1, math.ceil(grace_s)))
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def _prctl(option: int, value: int) -> None:
    """Linux prctl(2) with one integer argument; nothing elsewhere or where it cannot be called."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


@contextlib.contextmanager
def exit_when_interrupted(code: int = 130) -> Iterator[None]:
    """Leave the process at once (exit status ``code``) when an interrupt comes out of the block.

    By then the training has saved its interrupted state. Unwinding further would free the
    DistributedDataParallel reducer, and with it the last reference to gloo's process group, whose
    destructor waits, holding the GIL, for a worker thread that may need the GIL to free the tensors
    of an all-reduce the interrupt cut short: a rank that never exits (pytorch/pytorch#56297; seen
    in 1 of 3 ``kill -9`` runs of a 2-rank ``kedro run``). Logs and standard streams are flushed first.
    """
    try:
        yield
    except KeyboardInterrupt:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
