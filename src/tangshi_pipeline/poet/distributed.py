"""Data-parallel training with torch.distributed: the ranks, their devices, and two ways to start them.

:func:`fit` trains data-parallel by itself inside a process group (each rank its share of the
batches, gradients averaged by DistributedDataParallel, rank 0 writing checkpoints). This module
starts the group:

- :func:`spawn_fit`: ``training.world_size > 1`` makes the ``train`` node start that many ranks on
  this machine (one per GPU with ``nccl``; processes with ``gloo`` on the CPU); rank 0 hands the
  model back to the node and Kedro saves it once.
- torchrun (``tangshi_pipeline.plumbing.torchrun``): torchrun starts the ranks, one per GPU, on
  one or several machines; each reads its inputs through the Kedro catalog.

Either way a rank stops, as on Ctrl-C, when its launcher dies (:func:`stop_with_parent`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tangshi_pipeline.poet.batching import Buckets
from tangshi_pipeline.poet.checkpoints import CheckpointStore
from tangshi_pipeline.poet.model import CharRNN, ModelConfig
from tangshi_pipeline.poet.params import ParameterError, TrainingParams
from tangshi_pipeline.poet.training import Position, Result, fit, resolve_device

log = logging.getLogger(__name__)
TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a rank (validation runs on rank 0 alone)


def rank_device(p: TrainingParams, local_rank: int) -> torch.device:
    """The device of a rank: GPU ``local_rank`` on CUDA, else the CPU."""
    device = resolve_device(p.device)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ParameterError(f"{local_rank + 1} ranks on this machine need as many GPUs, it has "
                                 f"{torch.cuda.device_count()}; lower training.world_size (or --nproc_per_node).")
        return torch.device("cuda", local_rank)
    if device.type != "cpu":
        raise ParameterError(f"distributed training runs on CUDA or the CPU, not {device.type}; "
                             f"set training.device to cpu or training.world_size to 1.")
    return device


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def stop_with_parent(grace_s: float = 60.0, interval_s: float = 1.0) -> None:
    """Stop this rank, as on Ctrl-C, when the process that started it dies.

    ``kill -9`` of torchrun (or of the ``kedro run`` whose train node spawned the ranks) gives it no
    chance to stop its ranks: they would go on training, rank 0 writing checkpoints, on their own.
    A daemon thread polls for the parent's pid to change (the orphan was adopted), then sends this
    process SIGINT: every rank stops, rank 0 saving a checkpoint unless it was waiting on a rank
    that stopped first. Where the kernel sends that SIGINT already (``torch.multiprocessing.spawn``
    asks for it), the thread does not. (PR_SET_PDEATHSIG is not used here: it fires when the
    launcher's *thread* ends, and torchrun starts its ranks from one.) A process still there
    ``grace_s`` later (waiting in a collective for a rank that is gone), or at once where SIGINT
    is ignored, is ended outright; a checkpoint cut short stays a hidden temporary folder, which a
    later run sweeps.
    """
    parent, kernel_signals = os.getppid(), _parent_death_signal() != 0

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.write(2, f"rank process {os.getpid()}: its launcher (pid {parent}) is gone; stopping\n".encode())
        if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:  # ignored in a shell's background job
            if not kernel_signals:
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def _parent_death_signal() -> int:
    """The signal the kernel sends this process when its parent dies (Linux: prctl
    PR_GET_PDEATHSIG), 0 if none or where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return 0
    value = ctypes.c_int(0)
    try:
        ok = ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(value), 0, 0, 0) == 0  # 2: PR_GET_PDEATHSIG
    except (OSError, AttributeError):
        return 0
    return value.value if ok else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_fit(config: ModelConfig, vocab_fingerprint: str, train: list[np.ndarray], val: list[np.ndarray],
              p: TrainingParams, store: CheckpointStore | None, threads: int, eval_batch: int) -> Result:
    """Train on ``p.world_size`` ranks started on this machine; rank 0's result (model on the CPU)."""
    import torch.multiprocessing as mp

    p = TrainingParams.model_validate(p.model_dump())  # plain values for the ranks (a node may get a subclass)
    rank_device(p, p.world_size - 1)  # enough GPUs? (a clear error here rather than from a rank)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    with tempfile.TemporaryDirectory(prefix="tangshi-ddp-") as out:
        job = (config, vocab_fingerprint, train, val, p, store, threads, eval_batch, out)
        mp.spawn(_spawned_rank, args=(p.world_size, job), nprocs=p.world_size, join=True)
        from safetensors.torch import load_file

        model = CharRNN(config)
        model.load_state_dict(load_file(Path(out) / "model.safetensors"))
        result = json.loads((Path(out) / "result.json").read_text("utf-8"))
    return Result(model, Position(**result["position"]), result["stopped"], result["resumed_from"])


def _spawned_rank(rank: int, world: int, job: tuple) -> None:
    config, fingerprint, train_seqs, val_seqs, p, store, threads, eval_batch, out = job
    stop_with_parent()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank {rank}/{world} %(name)s: %(message)s")
    device = rank_device(p, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(threads)
    dist.init_process_group(backend(device), rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        train = Buckets(train_seqs, p.batch_size, device)
        val = Buckets(val_seqs, eval_batch, device) if val_seqs else None
        result = fit(config, fingerprint, train, val, p, store, device)
        if rank == 0:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()},
                      Path(out) / "model.safetensors")
            (Path(out) / "result.json").write_text(json.dumps(
                {"position": asdict(result.position), "stopped": result.stopped,
                 "resumed_from": result.resumed_from}), "utf-8")
    finally:
        dist.destroy_process_group()
