"""Beam search under the masks: the ``beam_size`` most likely poems kept at every step, not one.

B poems × K hypotheses decode as one batch of B·K rows (row b·K + k: hypothesis k of poem b), through
the decoder's own steps and masks (:class:`~.decoding.Decoder`): every mask holds for every
hypothesis, and a hypothesis the masks leave with nothing legal falls back as a poem does
(``Decoder._legal``). Each step every hypothesis proposes its best legal continuations, each scored
by the model's (unmasked) log-probability of the whole text so far; the best K of each poem go on,
and every per-row state (the network's, the text so far, the templates still fitted, the fallback
count) is reordered to follow them. A poem starts with one live hypothesis (the others at -inf), so
its hypotheses are always distinct texts.

Ranking is by the mean log-probability per character, the poem's score (``Poems.scores``). A poem's
live hypotheses always share their length, so at each step they are ranked by their sums; for a form
that is the whole story. In a free poem the end token competes with the other continuations by its
own log-probability; an end among the K best moves its hypothesis to the poem's finished set, where
hypotheses are compared by their mean per character (the end token not counted), and the search
for that poem stops once K have finished (or at ``max_length``, where the live ones finish as they
are). With K = 1 this is greedy decoding, step for step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tangshi_pipeline.poet.constraints import free_advance, free_head, free_rows, free_steps
from tangshi_pipeline.poet.model import select_state
from tangshi_pipeline.poet.params import GenerateParams
from tangshi_pipeline.poet.vocab import END_ID, PAD_ID, START_ID

if TYPE_CHECKING:
    from tangshi_pipeline.poet.decoding import Decoder


class Beam:
    """The bookkeeping of B poems × K hypotheses as B·K rows."""

    def __init__(self, poems: int, size: int, device: torch.device):
        self.B, self.K, self.device = poems, size, device

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """Per poem → per row: each poem's entry repeated K times."""
        return x.repeat_interleave(self.K, 0)

    def start_scores(self) -> torch.Tensor:
        """(B·K,) summed log-probabilities: 0 for each poem's first hypothesis, -inf (none yet) else."""
        scores = torch.full((self.B, self.K), -torch.inf, device=self.device)
        scores[:, 0] = 0.0
        return scores.flatten()

    def propose(self, logits: torch.Tensor, raw: torch.Tensor, scores: torch.Tensor, width: int):
        """Each poem's ``width`` best continuations: (rows, tokens, scores), each (B, width), best
        first. ``logits``: (B·K, V), -inf where illegal, else the raw logits (so their order is the
        model's); a candidate's score is its row's plus the token's log-probability under ``raw``."""
        vals, idx = logits.topk(min(width, logits.shape[1]), dim=-1)        # (B·K, w) per row
        cand = scores[:, None] + raw.gather(1, idx)
        cand = cand.masked_fill(torch.isneginf(vals), -torch.inf).view(self.B, -1)
        best, flat = cand.topk(min(width, cand.shape[1]), dim=-1)            # (B, w) per poem
        per_row = vals.shape[1]
        rows = flat // per_row + torch.arange(self.B, device=self.device)[:, None] * self.K
        return rows, idx.view(self.B, -1).gather(1, flat), best

    def select(self, logits: torch.Tensor, raw: torch.Tensor, scores: torch.Tensor):
        """The next K hypotheses of each poem: the rows (B·K,) they continue, their tokens, scores."""
        return tuple(x.flatten() for x in self.propose(logits, raw, scores, self.K))

    def best(self, scores: torch.Tensor, n: int) -> torch.Tensor:
        """(B·n,) rows of each poem's n best hypotheses, best first (a dead one replaced by the best)."""
        top, k = scores.view(self.B, self.K).topk(n, dim=-1)
        k = torch.where(torch.isneginf(top), k[:, :1], k)
        return (k + torch.arange(self.B, device=self.device)[:, None] * self.K).flatten()


def unit(p: GenerateParams) -> tuple[int, int]:
    """(poems, decoder rows) of one unit of work: a beam writes ``num_samples`` poems from
    ``beam_size`` rows; without beam search a poem is one row."""
    return (p.num_samples, p.beam_size) if p.strategy == "beam" else (1, 1)


def poems_per_beam(begins: list, acrostics: list, p: GenerateParams) -> int:
    """How many consecutive poems one beam writes: ``num_samples`` (checked), or 1 without beam search."""
    n = unit(p)[0]
    pairs = list(zip(begins, acrostics))
    if len(pairs) % n or any(pairs[k] != pairs[k - k % n] for k in range(len(pairs))):
        raise ValueError(f"beam search writes num_samples = {n} poems per begin character or acrostic: give "
                         f"each (begin, acrostic) pair {n} times in a row, as poem_heads lists them")
    return n


def only(logits: torch.Tensor, raw: torch.Tensor, force: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """``logits`` with each ``force``d row allowing its ``token`` alone (a forced line head)."""
    if not bool(force.any()):
        return logits
    forced = torch.full_like(logits, -torch.inf)
    forced.scatter_(1, token.clamp(min=0)[:, None], raw.gather(1, token.clamp(min=0)[:, None]))
    return torch.where(force[:, None], forced, logits)


# ------------------------------------------------------------------------------- free poems


class Finished:
    """Each free poem's finished hypotheses (at most K, the best by mean): texts, means, fallbacks."""

    def __init__(self, beam: Beam, steps: int):
        B, K, dev = beam.B, beam.K, beam.device
        self.beam = beam
        self.ids = torch.full((B, K, steps), PAD_ID, dtype=torch.long, device=dev)
        self.means = torch.full((B, K), -torch.inf, device=dev)
        self.fallbacks = torch.zeros((B, K), dtype=torch.long, device=dev)
        self.count = torch.zeros(B, dtype=torch.long, device=dev)

    @property
    def done(self) -> torch.Tensor:
        """(B,) poems whose search is over: K hypotheses finished."""
        return self.count >= self.beam.K

    def add(self, rows: torch.Tensor, ok: torch.Tensor, means: torch.Tensor, ids: torch.Tensor,
            fallbacks: torch.Tensor, close: torch.Tensor | None = None) -> None:
        """Add the hypotheses at ``rows`` (B, m) where ``ok``, of poems not yet done; per row:
        ``means``, ``ids`` (the text), ``fallbacks``. ``close`` (B,): poems whose search ends here."""
        ok = ok & ~self.done[:, None]
        self.count += ok.sum(1)
        if close is not None:
            self.count[close] = self.beam.K
        means = torch.cat([self.means, torch.where(ok, means[rows], -torch.inf)], 1)
        ids = torch.cat([self.ids, ids[rows]], 1)
        fallbacks = torch.cat([self.fallbacks, fallbacks[rows]], 1)
        self.means, keep = means.topk(self.beam.K, dim=-1)
        self.ids = ids.gather(1, keep[:, :, None].expand(-1, -1, ids.shape[2]))
        self.fallbacks = fallbacks.gather(1, keep)

    def best(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each poem's n best (B·n rows, best first; an empty slot repeats the best): ids, fallbacks, means."""
        k = torch.arange(n, device=self.means.device).expand(self.beam.B, n)
        k = torch.where(torch.isneginf(self.means[:, :n]), 0, k)
        pick = lambda x: x.gather(1, k).flatten()  # noqa: E731
        ids = self.ids.gather(1, k[:, :, None].expand(-1, -1, self.ids.shape[2])).flatten(0, 1)
        return ids, pick(self.fallbacks), pick(self.means)


def free_search(decoder: Decoder, begins, acrostics, p: GenerateParams):
    """Free poems by beam search (see the module docstring), as :meth:`.decoding.Decoder._free`
    writes them one way: from the begin character (or one line per acrostic character) to the end
    token or ``max_length``. Returns (ids (B·n, steps), fallbacks, scores) of each poem's
    ``num_samples`` best, best first."""
    d, dev = decoder, decoder.device
    beam = Beam(len(begins), p.beam_size, dev)
    n_lines = beam.expand(torch.tensor([len(a) if a else 0 for a in acrostics], device=dev))
    steps, R = free_steps(n_lines, p.max_length), len(n_lines)
    r = free_rows(beam.expand(d._heads(begins, acrostics, max(1, int(n_lines.max())))), n_lines)
    r |= {"fallbacks": torch.zeros(R, dtype=torch.long, device=dev),
          "out": torch.full((R, steps), PAD_ID, dtype=torch.long, device=dev)}
    finished = Finished(beam, steps)
    scores, token = beam.start_scores(), torch.full((R,), START_ID, dtype=torch.long, device=dev)
    state = d.initial_state(p.keywords, R)  # after the theme keywords, if any
    for t in range(steps):
        head, force = free_head(r)
        h, state = d.step(token, state)
        raw = d._raw(h)
        mask, banned = d._free_masks(r, r["out"][:, :t], p, force)
        logits, empty = d._legal(raw, d.off_free, mask, d.off_free, banned)
        r["fallbacks"] = r["fallbacks"] + (empty & ~force)
        proposals = beam.propose(only(logits, raw, force, head), raw, scores, 2 * beam.K)
        live, token, scores = _end_or_go_on(beam, finished, proposals, scores, r)
        r = {k: v[live] for k, v in r.items()}
        state = select_state(state, live)
        r["out"][:, t] = token
        free_advance(r, token, d.masks.punct)
        cut = (~r["acro"] & (r["length"] >= p.max_length)) | (t == steps - 1)  # the live ones finish as they are
        if bool(cut.any()):
            cut, every = cut.view(beam.B, beam.K), torch.arange(R, device=dev).view(beam.B, beam.K)
            finished.add(every, cut & ~torch.isneginf(scores.view(cut.shape)), scores / r["length"], r["out"],
                         r["fallbacks"], close=cut.any(1))
        if bool(finished.done.all()):
            break
    return finished.best(p.num_samples)


def _end_or_go_on(beam: Beam, finished: Finished, proposals, scores: torch.Tensor, r: dict):
    """Of each poem's 2K best ``proposals`` (rows, tokens, scores): an end token among the K best
    finishes its hypothesis (scored by the mean over its characters so far); the K best others go
    on. Returns their rows, tokens and scores (B·K,) (-inf: none left to go on)."""
    rows, tokens, best = proposals
    ending = tokens == END_ID
    rank = torch.arange(rows.shape[1], device=rows.device)[None].expand_as(rows)
    means = (scores / r["length"].clamp(min=1)).masked_fill(r["length"] == 0, -torch.inf)
    finished.add(rows, ending & (rank < beam.K) & ~torch.isneginf(best), means, r["out"], r["fallbacks"])
    order = (ending.long() * rows.shape[1] + rank).argsort(1)[:, :beam.K]  # the others first, best first
    token = tokens.gather(1, order).flatten()
    going = best.gather(1, order).flatten().masked_fill(token == END_ID, -torch.inf)
    return rows.gather(1, order).flatten(), token, going
