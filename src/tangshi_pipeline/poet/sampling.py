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


def pick(logits: torch.Tensor, p: GenerateParams, u: torch.Tensor | None) -> torch.Tensor:
    """One token per row: greedy argmax, or a sample (temperature, then top-k, then top-p) with
    ``u`` (B, 1) uniform draws. Sampling divides ``logits`` by the temperature in place."""
    if p.strategy == "greedy":
        return logits.argmax(-1)
    x = logits.div_(p.temperature)
    if not p.top_k and p.top_p >= 1.0:  # plain temperature sampling over everything
        return sample(torch.exp(x - x.amax(-1, keepdim=True)), u)
    if not p.top_k:  # top-p alone
        return nucleus(x, p.top_p, u)
    vals, idx = x.topk(min(p.top_k, x.shape[-1]), dim=-1)
    probs = vals.softmax(-1)  # renormalised over the top-k, then top-p on that
    if p.top_p < 1.0:
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= p.top_p, 0.0)
    return idx.gather(1, sample(probs, u)[:, None])[:, 0]


TOP = 64    # a row's nucleus is looked for among its top 64 tokens first
TRIES = 4   # draws from a whole row before its nucleus is found by sorting it


def nucleus(x: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Top-p sampling without sorting whole rows; ``u``: (B, 1) uniform draws.

    A row whose top 64 tokens reach ``top_p`` has its nucleus among them: one draw picks from it.
    Any other row's nucleus holds its whole top 64 and more; its tokens are drawn from the whole row
    (the top 64 first, then the rest in vocabulary order), and a token is kept if it is in the
    nucleus — the tokens more probable than it hold less than ``top_p`` — else drawn again with the
    row's next draw (:func:`again`): rejection sampling, so every token of the nucleus comes with its
    probability renormalised over the nucleus. Most draws land in the top 64 and need nothing more; a
    draw beyond it is kept with probability ≥ ``top_p``; a row rejected ``TRIES`` times (< 1 in 10⁴)
    is sorted and drawn from."""
    B, V = x.shape
    log_z = x.logsumexp(-1, keepdim=True)
    vals, idx = x.topk(min(TOP, V), dim=-1)
    p = (vals - log_z).exp()
    cum = p.cumsum(-1)
    mass = cum[:, -1]  # of the top 64
    token = torch.empty(B, dtype=torch.long, device=x.device)
    rows = (mass >= top_p).nonzero()[:, 0]  # the nucleus is within the top 64
    q = p[rows].masked_fill(cum[rows] - p[rows] >= top_p, 0.0)
    token[rows] = idx[rows].gather(1, sample(q, u[rows])[:, None])[:, 0]
    todo = (mass < top_p).nonzero()[:, 0]
    for a in range(TRIES):
        if not len(todo):
            return token
        v, m = (u[todo] if a == 0 else again(u[todo], a))[:, 0], mass[todo]
        top, rest, w = todo[v < m], todo[v >= m], v[v >= m]
        token[top] = idx[top].gather(1, sample(p[top], (v[v < m] / m[v < m])[:, None])[:, None])[:, 0]
        q = (x[rest] - log_z[rest]).exp()
        w = ((w - mass[rest]) / (1 - mass[rest])).clamp(max=1 - 2**-24)[:, None]
        t = sample(q.scatter(1, idx[rest], 0.0), w)
        kept = torch.where(q > q.gather(1, t[:, None]), q, 0.0).sum(-1) < top_p
        token[rest[kept]] = t[kept]
        todo = rest[~kept]
    if len(todo):  # rejected every time: the nucleus of the sorted row
        vals, idx = x[todo].sort(dim=-1, descending=True)
        p = (vals - log_z[todo]).exp()
        q = p.masked_fill(p.cumsum(-1) - p >= top_p, 0.0)
        token[todo] = idx.gather(1, sample(q, again(u[todo], TRIES))[:, None])[:, 0]
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


def again(u: torch.Tensor, attempt: int) -> torch.Tensor:
    """Another uniform draw for each of ``u``'s, the ``attempt``-th, hashed from its 24 bits."""
    return (mix32((u * 2**24).long() ^ mix32(attempt)) >> 8).float() / 2**24
