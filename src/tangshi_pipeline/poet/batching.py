"""Length-bucketed batches, built once and kept on the training device; padding masked out of the loss.

Poems are sorted by length and cut into buckets: consecutive lengths are merged until a bucket
holds at least ``batch_size`` poems (the common forms — 五绝, 七绝, 五律, 七律 — each get a bucket of
their own length). Each bucket is one ``(N, T)`` tensor of token ids, right-padded with ``PAD_ID``,
moved to the device once. An epoch shuffles the rows of every bucket, cuts them into batches and
shuffles the batch order, with a generator seeded by ``(seed, epoch)``: an epoch's batches are a
pure function of those two numbers, so a run resumed in the middle of an epoch replays it exactly.
A batch is a view ``ids[:, :-1] → ids[:, 1:]``; targets that are padding have ``PAD_ID`` and
the loss (:func:`.model.nll`) ignores them, so padding never contributes to the loss or its gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tangshi_pipeline.poet.vocab import PAD_ID


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T) on the device; inputs ids[:, :-1], targets ids[:, 1:]
    tokens: int  # predicted (non-padding) targets in the batch, known on the host without a sync

    @property
    def inputs(self) -> torch.Tensor:
        return self.ids[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.ids[:, 1:]


class Buckets:
    """Sequences of token ids (each framed, length ≥ 2) as padded, device-resident buckets."""

    def __init__(self, sequences: Sequence[np.ndarray], batch_size: int, device: torch.device | str = "cpu"):
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        if len(lengths) and lengths.min() < 2:
            raise ValueError("every sequence needs at least 2 tokens (start and end)")
        order = np.argsort(lengths, kind="stable")
        self.batch_size = batch_size
        self.data: list[torch.Tensor] = []  # (N_b, T_b) int64 on the device
        self.lengths: list[torch.Tensor] = []  # (N_b,) int64 on the host: tokens per row
        start = 0
        while start < len(order):
            stop = min(start + batch_size, len(order))
            while stop < len(order) and lengths[order[stop]] == lengths[order[stop - 1]]:
                stop += 1  # a bucket never splits one length
            rows = order[start:stop]
            width = int(lengths[rows].max())
            padded = np.full((len(rows), width), PAD_ID, dtype=np.int64)
            for i, r in enumerate(rows):
                padded[i, : lengths[r]] = sequences[r]
            self.data.append(torch.from_numpy(padded).to(device))
            self.lengths.append(torch.from_numpy(lengths[rows].copy()))
            start = stop
        self.tokens = int(lengths.sum() - len(lengths))  # predicted tokens per epoch
        self.sequences = len(lengths)

    def target_counts(self, vocab_size: int) -> torch.Tensor:
        """How often each token id is a (non-padding) target, on the host."""
        counts = torch.zeros(vocab_size, dtype=torch.int64)
        for data in self.data:
            counts += torch.bincount(data[:, 1:].flatten().cpu(), minlength=vocab_size)[:vocab_size]
        counts[PAD_ID] = 0
        return counts

    def __len__(self) -> int:
        """Batches per epoch."""
        return sum(-(-len(n) // self.batch_size) for n in self.lengths)

    def _batch(self, bucket: int, rows: torch.Tensor, rows_on_device: torch.Tensor) -> Batch:
        lengths = self.lengths[bucket][rows]
        width = int(lengths.max())
        return Batch(self.data[bucket][rows_on_device, :width], int(lengths.sum()) - len(rows))

    def _plan(self, seed: int, epoch: int) -> tuple[list, list[int]]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        plan = []
        for b, lengths in enumerate(self.lengths):
            perm = torch.randperm(len(lengths), generator=g)
            on_device = perm.to(self.data[b].device)
            plan += [(b, p, d) for p, d in zip(perm.split(self.batch_size), on_device.split(self.batch_size))]
        return plan, torch.randperm(len(plan), generator=g).tolist()

    def epoch(self, seed: int, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The shuffled batches of ``epoch`` (deterministic in ``seed`` and ``epoch``), from batch ``skip`` on."""
        plan, order = self._plan(seed, epoch)
        for i in order[skip:]:
            yield self._batch(*plan[i])

    def steps(self, world: int) -> int:
        """Optimizer steps per epoch when ``world`` ranks each take one batch per step."""
        return -(-len(self) // world)

    def shard(self, seed: int, epoch: int, rank: int, world: int, skip: int = 0) -> Iterator[tuple[Batch, int]]:
        """Rank ``rank``'s batches of ``epoch`` for data-parallel training, from step ``skip`` on, each
        with the predicted tokens of the whole step (all ranks' batches, known on every host).

        Step ``s`` gives rank ``r`` batch ``s * world + r`` of :meth:`epoch`'s order; the order is
        extended with its own first batches to a multiple of ``world`` (as torch's
        DistributedSampler pads), so every rank takes the same number of steps.
        """
        plan, order = self._plan(seed, epoch)
        order += (order * world)[: self.steps(world) * world - len(order)]
        tokens = [int(self.lengths[plan[i][0]][plan[i][1]].sum()) - len(plan[i][1]) for i in order]
        for s in range(skip, len(order) // world):
            yield self._batch(*plan[order[s * world + rank]]), sum(tokens[s * world:(s + 1) * world])

    def ordered(self) -> Iterator[Batch]:
        """Every sequence once, in length order (for evaluation)."""
        for b, lengths in enumerate(self.lengths):
            rows = torch.arange(len(lengths))
            on_device = rows.to(self.data[b].device)
            for p, d in zip(rows.split(self.batch_size), on_device.split(self.batch_size)):
                yield self._batch(b, p, d)


def split_sequences(vectors, split: str) -> list[np.ndarray]:
    """The token-id arrays of one split of the ``vectors`` table."""
    return [np.asarray(ids) for ids in vectors.loc[vectors["split"] == split, "ids"]]
