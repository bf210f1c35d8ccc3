"""Length-bucketed batches, built once and kept on the training device; padding masked out of the loss.

Poems are sorted by length and cut into buckets: consecutive lengths are merged until a bucket
holds at least ``batch_size`` poems (the common forms — 五绝, 七绝, 五律, 七律 — each get a bucket of
their own length). Each bucket is one ``(N, T)`` tensor of token ids, right-padded with ``PAD_ID``,
moved to the device once. An epoch shuffles the rows of every bucket, cuts them into batches and
shuffles the batch order, with a generator seeded by ``(seed, epoch)``: an epoch's batches are a
pure function of those two numbers, so a run resumed in the middle of an epoch replays it exactly.
A batch is a view ``ids[:, :-1] → ids[:, 1:]``; targets that are padding have ``PAD_ID`` and
:func:`nll` ignores them, so padding never contributes to the loss or its gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of the targets; padding targets contribute nothing."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD_ID, reduction="sum")


def head_nll(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, fused: bool) -> torch.Tensor:
    """``nll(head(hidden), targets)``; ``fused`` computes it in row chunks without keeping the logits."""
    if not fused:
        return nll(head(hidden), targets)
    chunk = 256 if hidden.device.type == "cpu" else 16384  # rows: 256 × 7,181 × 4 B ≈ 7 MB of cache
    return _FusedHeadNLL.apply(hidden.flatten(0, 1), head.weight, head.bias, targets.flatten(), chunk)


class _FusedHeadNLL(torch.autograd.Function):
    """Linear head + softmax cross-entropy, chunk by chunk, gradients computed in the forward pass.

    The (tokens × vocabulary) logits are the biggest tensor of a step; the unfused path writes
    them, then log-softmax output, its gradient and a zero-filled NLL gradient — each a pass over
    memory. Here each chunk of rows stays in cache: logits → log-sum-exp → loss, then in place
    softmax − one-hot (zero on padding rows) → input, weight and bias gradients. Always fp32.
    About 1.5× faster than the unfused head + loss on the CPU; the gradients match it to rounding.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        with torch.autocast(hidden.device.type, enabled=False):
            hidden, weight, bias = hidden.float(), weight.float(), bias.float()
            grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
            g_hidden = torch.empty_like(hidden) if grads else None
            g_weight, g_bias = (torch.zeros_like(weight), torch.zeros_like(bias)) if grads else (None, None)
            total = hidden.new_zeros(())
            for i in range(0, hidden.shape[0], chunk):
                h, y = hidden[i:i + chunk], targets[i:i + chunk]
                keep = (y != PAD_ID).to(h.dtype)
                logits = torch.addmm(bias, h, weight.t())
                lse = torch.logsumexp(logits, dim=1)
                total += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * keep).sum()
                if grads:
                    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                    probs[torch.arange(len(y), device=y.device), y] -= 1
                    probs.mul_(keep[:, None])
                    torch.mm(probs, weight, out=g_hidden[i:i + chunk])
                    g_weight.addmm_(probs.t(), h)
                    g_bias += probs.sum(0)
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        return total

    @staticmethod
    def backward(ctx, grad):
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        return g_hidden * grad, g_weight * grad, g_bias * grad, None, None


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
