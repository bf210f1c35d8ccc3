"""Requests that arrive together are decoded together, on one worker thread.

The event loop never decodes: a request is queued and awaits its result. One collector task takes
what is waiting — after a short window (``window`` seconds) that lets simultaneous requests meet,
and, while the worker is busy, whatever arrived meanwhile — groups it by key (the decoding
settings without the seed: poems with other settings cannot share the decoder's masks) and runs
each group as one call on the worker thread. Each request keeps its own seed and poem indices
inside the batch, so merging never changes its poems (:meth:`.poet.Poet.write_together`).

Bounded: at most ``max_batch`` poems per call (one request always fits) and ``max_waiting`` poems
queued (a size is the decoder rows a request takes: a beam search's poem counts ``beam_size``);
past that :class:`Busy` (HTTP 503). A request whose client has gone is dropped unread.

One thread does all of torch's work, the model's loading included (:func:`decoder_thread`): with
torch 2.13's OpenMP build, a thread that is not the first to run torch operators pays several times
more per small operator (measured: 8 七绝 decoded in 38–45 ms on the thread that loaded the model,
107–113 ms on another; pytorch/pytorch#37259 is the same family). The event loop never touches
tensors.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


def decoder_thread() -> ThreadPoolExecutor:
    """The one worker thread that loads the model and decodes (``pool.submit(load).result()``,
    then ``Batcher(..., pool=pool)``)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="decoder")


class Busy(RuntimeError):
    """Too many poems are waiting to be decoded; retry in a moment."""


@dataclass
class _Job:
    key: Hashable
    item: Any
    size: int
    future: asyncio.Future


class Batcher:
    """``await submit(key, item, size)`` → ``run(key, [item, …])[i]``, items of one key merged."""

    def __init__(self, run: Callable[[Hashable, list[Any]], list[Any]], window: float = 0.005,
                 max_batch: int = 256, max_waiting: int = 4096, pool: ThreadPoolExecutor | None = None):
        """``pool``: the :func:`decoder_thread` that loaded what ``run`` uses (default: a new one);
        the batcher shuts it down when it stops."""
        self.run, self.window, self.max_batch, self.max_waiting = run, window, max_batch, max_waiting
        self.batches = 0    # calls of ``run`` so far
        self.requests = 0   # items decoded so far
        self._waiting: deque[_Job] = deque()
        self._queued = 0    # poems waiting
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = pool

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._pool = self._pool or decoder_thread()
        self._task = asyncio.create_task(self._serve(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for job in self._waiting:
            job.future.cancel()

    @property
    def waiting(self) -> int:
        return self._queued

    async def submit(self, key: Hashable, item: Any, size: int) -> Any:
        if self._task is None:
            raise RuntimeError("the batcher is not started (start() in the app's lifespan)")
        if self._queued + size > self.max_waiting:
            raise Busy(f"{self._queued} poems are waiting to be decoded; retry in a moment")
        job = _Job(key, item, size, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._queued += size
        self._wake.set()
        return await job.future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self.window:
                await asyncio.sleep(self.window)
            jobs = self._take()
            if not self._waiting:
                self._wake.clear()
            for key, group in _grouped(jobs).items():
                try:
                    results = await loop.run_in_executor(self._pool, self.run, key, [j.item for j in group])
                except Exception as exc:  # noqa: BLE001 — handed to the waiting requests, which report it
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                self.batches += 1
                self.requests += len(group)
                for job, result in zip(group, results):
                    if not job.future.done():
                        job.future.set_result(result)

    def _take(self) -> list[_Job]:
        """Waiting jobs in arrival order, up to ``max_batch`` poems (at least one job)."""
        jobs, size = [], 0
        while self._waiting and (not jobs or size + self._waiting[0].size <= self.max_batch):
            job = self._waiting.popleft()
            self._queued -= job.size
            if not job.future.cancelled():
                jobs.append(job)
                size += job.size
        return jobs


def _grouped(jobs: list[_Job]) -> dict[Hashable, list[_Job]]:
    groups: dict[Hashable, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.key, []).append(job)
    return groups
