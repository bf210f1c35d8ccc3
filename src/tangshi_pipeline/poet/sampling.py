"""The draw: greedy argmax, or a sample after temperature, top-k and top-p, from counter-based draws.

Each poem's uniform draws come from (seed, poem index, step) alone — a hash of the three numbers,
not a generator's state — so a poem is the same whatever the batch it is decoded in, its batch
size or the device. The hash is MurmurHash3's 32-bit finaliser, written with int64 arithmetic
that never overflows, so plain ints and tensors give the same numbers.
"""

from __future__ import annotations

import torch

from tangshi_pipeline.poet.params import GenerateParams

_M32 = 0xFFFFFFFF


def pick(logits: torch.Tensor, p: GenerateParams, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row: greedy argmax, or a sample (temperature, then top-k, then top-p) with
    ``u`` (B, 1) uniform draws; also each row's best logit (-inf: the row had nothing legal).
    Sampling divides ``logits`` by the temperature in place."""
    if p.strategy == "greedy":
        best, token = logits.max(-1)
        return token, best
    x = logits.div_(p.temperature)
    if not p.top_k and p.top_p >= 1.0:  # plain temperature sampling over everything
        best = x.amax(-1)
        return sample(torch.exp(x - best[:, None]), u), best
    if not p.top_k:  # top-p alone
        return nucleus(x, p.top_p, u), x.amax(-1)
    vals, idx = x.topk(min(p.top_k, x.shape[-1]), dim=-1)
    probs = vals.softmax(-1)  # renormalised over the top-k, then top-p on that
    if p.top_p < 1.0:
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= p.top_p, 0.0)
    return idx.gather(1, sample(probs, u)[:, None])[:, 0], vals[:, 0]


def nucleus(x: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Top-p sampling without sorting whole rows: the smallest set of tokens whose probability
    reaches ``top_p`` is looked for among the top 64, then the top 1024, then the whole row."""
    V = x.shape[-1]
    log_z = x.logsumexp(-1, keepdim=True)
    token = torch.empty(len(x), dtype=torch.long, device=x.device)
    todo = torch.arange(len(x), device=x.device)
    for k in (64, 1024, V):
        k = min(k, V)
        rows = x if len(todo) == len(x) else x[todo]
        vals, idx = rows.topk(k, dim=-1) if k < V else rows.sort(dim=-1, descending=True)
        p = (vals - log_z[todo]).exp()
        cum = p.cumsum(-1)
        done = cum[:, -1] >= top_p if k < V else torch.ones(len(todo), dtype=torch.bool, device=x.device)
        p = p.masked_fill(cum - p >= top_p, 0.0)[done]
        token[todo[done]] = idx[done].gather(1, sample(p, u[todo[done]])[:, None])[:, 0]
        todo = todo[~done]
        if not len(todo):
            break
    return token


def sample(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row, with probability proportional to the (unnormalised) weights; ``u``: (B, 1)
    uniform draws in [0, 1). Never an index of zero weight (the draw stays below the row's total)."""
    cum = weights.cumsum(-1)
    total = cum[:, -1:]
    v = torch.minimum(u.to(cum.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cum, v, right=True)[:, 0].clamp(max=weights.shape[-1] - 1)


# ----------------------------------------------------------------- counter-based random numbers


def _mul32(x, c: int):
    """(x · c) mod 2³² for 0 ≤ x, c < 2³², exact in int64 (no overflow): x split into 16-bit halves."""
    return (((((x >> 16) * c) & 0xFFFF) << 16) + (x & 0xFFFF) * c) & _M32


def mix32(x):
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2³²) that mixes every bit (ints or tensors)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """A seed (any size) mixed down to the 32-bit key of its random numbers."""
    return mix32((seed & _M32) ^ mix32((seed >> 32) & _M32 ^ 0x9E3779B9))


def uniform(seed: int, poems: torch.Tensor, step: int) -> torch.Tensor:
    """(B, 1) uniform draws in [0, 1), one per poem, from (seed, poem index, step) alone: counter-based
    random numbers, so a poem's draws do not depend on the batch it is decoded in, nor on the device."""
    return draws(seed_key(seed), poems, step)


def draws(key, poems: torch.Tensor, step: int) -> torch.Tensor:
    """:func:`uniform` from seed keys (an int, or a (B,) tensor: one seed per poem)."""
    x = mix32((_mul32(poems.long(), 0x9E3779B1) + mix32(key ^ mix32(step))) & _M32)
    x = mix32(x ^ key)
    return ((x >> 8).float() / 2**24)[:, None]  # 24 bits: exact in float32, below 1
