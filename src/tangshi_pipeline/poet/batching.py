"""Length-bucketed batches, built once and kept on the training device; padding masked out of the loss.

Poems are sorted by length and cut into buckets: consecutive lengths are merged until a bucket
holds at least ``batch_size`` poems (the common forms — 五绝, 七绝, 五律, 七律 — each get a bucket of
their own length). Each bucket is one ``(N, T)`` tensor of token ids, right-padded with ``PAD_ID``,
moved to the device once. An epoch shuffles the rows of every bucket, cuts them into batches and
shuffles the batch order, with a generator seeded by ``(seed, epoch)``: an epoch's batches are a
pure function of those two numbers, so a run resumed in the middle of an epoch replays it exactly.
A batch is a view ``ids[:, :-1] → ids[:, 1:]``; targets that are padding have ``PAD_ID`` and
the loss (:func:`.model.nll`) ignores them, so padding never contributes to the loss or its gradients.

A sequence may start with a prefix the model reads but is not scored on (a poem's theme keywords,
before its start token): ``skips[i]`` leading targets of sequence ``i`` are ``PAD_ID`` too, so its
loss starts, as without a prefix, with the first character after the start token.
:func:`split_sequences` builds the sequences, with their keywords or without.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import hashlib

import numpy as np
import pandas as pd
import torch

from tangshi_pipeline.poet.vocab import PAD_ID


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T) on the device; inputs ids[:, :-1], targets ids[:, 1:] (unless ``scored``)
    tokens: int  # predicted (non-padding) targets in the batch, known on the host without a sync
    scored: torch.Tensor | None = None  # (B, T - 1) targets when a prefix is not scored (PAD_ID over it)

    @property
    def inputs(self) -> torch.Tensor:
        return self.ids[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.ids[:, 1:] if self.scored is None else self.scored


class Buckets:
    """Sequences of token ids (each framed, length ≥ 2) as padded, device-resident buckets;
    ``skips``: per sequence, how many leading targets are not scored (its prefix; default none)."""

    def __init__(self, sequences: Sequence[np.ndarray], batch_size: int, device: torch.device | str = "cpu",
                 skips: Sequence[int] | None = None):
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        if len(lengths) and lengths.min() < 2:
            raise ValueError("every sequence needs at least 2 tokens (start and end)")
        skips = np.zeros(len(lengths), np.int64) if skips is None else np.asarray(skips, dtype=np.int64)
        if len(skips) != len(lengths) or (skips < 0).any() or (skips > lengths - 2).any():
            raise ValueError("skips: one count per sequence, from 0 to its length - 2")
        order = np.argsort(lengths, kind="stable")
        self.batch_size = batch_size
        self.data: list[torch.Tensor] = []  # (N_b, T_b) int64 on the device
        self.lengths: list[torch.Tensor] = []  # (N_b,) int64 on the host: tokens per row
        self.scored: list[torch.Tensor] = []  # (N_b,) int64 on the host: scored targets per row
        self.targets: list[torch.Tensor | None] = []  # (N_b, T_b - 1) on the device where a prefix is unscored
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
            self.scored.append(torch.from_numpy(lengths[rows] - 1 - skips[rows]))
            self.targets.append(_unscored_prefix(padded, skips[rows], device) if skips[rows].any() else None)
            start = stop
        self.tokens = int((lengths - 1 - skips).sum())  # predicted tokens per epoch
        self.sequences = len(lengths)

    def target_counts(self, vocab_size: int) -> torch.Tensor:
        """How often each token id is a (non-padding) target, on the host."""
        counts = torch.zeros(vocab_size, dtype=torch.int64)
        for data, targets in zip(self.data, self.targets):
            targets = data[:, 1:] if targets is None else targets
            counts += torch.bincount(targets.flatten().cpu(), minlength=vocab_size)[:vocab_size]
        counts[PAD_ID] = 0
        return counts

    def __len__(self) -> int:
        """Batches per epoch."""
        return sum(-(-len(n) // self.batch_size) for n in self.lengths)

    def _batch(self, bucket: int, rows: torch.Tensor, rows_on_device: torch.Tensor) -> Batch:
        width = int(self.lengths[bucket][rows].max())
        targets = self.targets[bucket]
        return Batch(self.data[bucket][rows_on_device, :width], int(self.scored[bucket][rows].sum()),
                     None if targets is None else targets[rows_on_device, :width - 1])

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
        tokens = [int(self.scored[plan[i][0]][plan[i][1]].sum()) for i in order]
        for s in range(skip, len(order) // world):
            yield self._batch(*plan[order[s * world + rank]]), sum(tokens[s * world:(s + 1) * world])

    def ordered(self) -> Iterator[Batch]:
        """Every sequence once, in length order (for evaluation)."""
        for b, lengths in enumerate(self.lengths):
            rows = torch.arange(len(lengths))
            on_device = rows.to(self.data[b].device)
            for p, d in zip(rows.split(self.batch_size), on_device.split(self.batch_size)):
                yield self._batch(b, p, d)


def _unscored_prefix(padded: np.ndarray, skips: np.ndarray, device) -> torch.Tensor:
    """The targets ``padded[:, 1:]`` with each row's first ``skips`` set to ``PAD_ID``."""
    targets = padded[:, 1:].copy()
    targets[np.arange(targets.shape[1]) < skips[:, None]] = PAD_ID
    return torch.from_numpy(targets).to(device)


def split_sequences(vectors: pd.DataFrame, split: str) -> list[np.ndarray]:
    """The token-id arrays of one split of the ``vectors`` table."""
    return [np.asarray(ids) for ids in vectors.loc[vectors["split"] == split, "ids"]]


def themed_sequences(vectors: pd.DataFrame, split: str, keywords: pd.DataFrame, dropout: float = 0.0,
                     seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """:func:`split_sequences` with each poem's keyword ids (the ``poem_keywords`` table) before its
    start token, ``[keywords…, START, poem…, END]``, and per sequence the length of that unscored
    prefix (``Buckets(..., skips=...)``). ``dropout``: the share of poems that go without, chosen
    per poem by a hash of ``seed`` and its id — fixed for the whole run, so every epoch, and a
    resumed run, sees the same sequences (Buckets are built once)."""
    rows = vectors.loc[vectors["split"] == split, ["id", "ids"]]
    prefixes = rows["id"].map(keywords.set_index("id")["keyword_ids"])
    out, skips = [], []
    for poem_id, poem, prefix in zip(rows["id"], rows["ids"], prefixes):
        poem = np.asarray(poem)
        themed = isinstance(prefix, (list, np.ndarray)) and len(prefix) and _hashed_share(seed, poem_id) >= dropout
        out.append(np.concatenate([np.asarray(prefix, dtype=poem.dtype), poem]) if themed else poem)
        skips.append(len(prefix) if themed else 0)
    return out, skips


def _hashed_share(seed: int, poem_id: str) -> float:
    """A number in [0, 1) fixed by (seed, poem id)."""
    digest = hashlib.blake2b(f"keywords:{seed}:{poem_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
