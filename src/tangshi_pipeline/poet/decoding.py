"""Batched decoding: many poems at once, one token per step, the recurrent state carried along.

The classic exercise writes one poem at a time and, for every new character, feeds the whole
prefix through the network again (O(n²) work per poem, batch 1). Here every poem of a batch
advances together, one token per step, from the recurrent state the previous step left
(O(n) work, batch B) — :func:`greedy_refeed` keeps the classic loop as the reference.

Each step is the same story: **step** the network one token (``CharRNN.stepper``), **mask** the
logits so that only legal tokens can be drawn (:mod:`.constraints`: the form's shape, forced line
heads, tones, rhyme, 重韵, no repeated n-grams, no copied lines), **pick** a token
(:func:`.sampling.pick`: greedy, or a sample), **advance** each poem. A form has a fixed number of
steps; a free poem stops at the end token or ``max_length`` and drops out of the batch. Beam search
(:mod:`.beam`) keeps ``beam_size`` hypotheses per poem as rows of the same batch, under the same
masks, and picks the poem's best continuations across them instead.

The settings are the validated ``generate`` parameters (:class:`~.params.GenerateParams`); which
poems to write (begin characters, acrostics) and in batches of how many are the call's arguments.
Each poem's random draws come from (seed, poem index, step) alone (:mod:`.sampling`): by default
the settings' seed and the poem's position in the call, or a (seed, index) key per poem
(``generate(..., keys=...)``), so poems of several requests decoded together in one batch are each
the poems their own request would get alone. With theme keywords (``generate.keywords``, a model
trained with themes) the keywords are fed to the network before the start token
(:meth:`Decoder.initial_state`): every poem starts from the state they leave, and its score does
not count them. Every poem comes with its score: its mean
log-probability per character under the model — its own judgement of the text, whatever the masks
forced — to rank candidates by, read off the decoding steps' own logits (``Decoder.mean_logprobs``
scores any text the same way).

If the masks leave a poem no legal character (e.g. a forced acrostic character that breaks every
template), the poem falls back to the shape-only mask for that step and the step is counted in
``Poems.fallbacks``. The bans (重韵, ``no_repeat_ngram``, ``no_copy``) give way before that: a
poem they alone leave with nothing legal draws again with the masks only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from tangshi_pipeline.poet.beam import Beam, free_search, only, poems_per_beam
from tangshi_pipeline.poet.constraints import Templates, VocabMasks, free_advance, free_head, free_rows, free_steps
from tangshi_pipeline.poet.model import CharRNN, select_state
from tangshi_pipeline.poet.params import GenerateParams
from tangshi_pipeline.poet.prosody import COMMA, FORMS, PERIOD, Prosody
from tangshi_pipeline.poet.sampling import draws, pick, seed_key
from tangshi_pipeline.poet.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocab


@dataclass
class Poems:
    texts: list[str]
    templates: list[str | None]      # the template each poem was held to (strict/rhyme), else None
    fallbacks: list[int] = field(default_factory=list)  # steps where the masks left nothing legal
    scores: list[float] = field(default_factory=list)   # mean log-probability per character


def greedy_refeed(model: CharRNN, vocab: Vocab, begin: str, max_length: int = 30) -> str:
    """The classic loop: one poem, the whole prefix re-fed each step, argmax. The reference."""
    never = torch.tensor([PAD_ID, UNK_ID, START_ID])
    ids = [START_ID, vocab.index[begin]]
    with torch.inference_mode():
        while len(ids) - 1 < max_length:
            logits, _ = model(torch.tensor([ids]))
            last = logits[0, -1].clone()
            last[never] = -torch.inf
            token = int(last.argmax())
            if token == END_ID:
                break
            ids.append(token)
    return vocab.decode(ids)


class Decoder:
    """Decode poems from a model; the vocabulary and prosody masks are built once.

    Each step the model's log-probabilities are computed once (:meth:`_raw`): the chosen token's is
    its term of the poem's score, and the masks are added to them as offset rows (0 where allowed,
    -inf elsewhere): static masks are one row, per-poem masks one of four rows (tones) or, at
    rhyming positions only, a full mask.
    """

    def __init__(self, model: CharRNN, vocab: Vocab, prosody: Prosody | None = None, device: str = "cpu",
                 training_lines: Iterable[str] = ()):
        if model.config.vocab_size != len(vocab):
            raise ValueError(f"the model has {model.config.vocab_size} output tokens but the vocabulary "
                             f"has {len(vocab)}: they were not made together")
        self.model = model.to(device).eval()
        self.vocab, self.prosody, self.device = vocab, prosody, torch.device(device)
        self.index = vocab.index
        self.step = self.model.stepper()
        self.masks = VocabMasks(vocab, prosody, training_lines, self.device)
        # the adaptive head's logits are log-probabilities already; the full head's are normalised
        self.normalised = model.config.head != "full"

        def offset(mask: torch.Tensor) -> torch.Tensor:  # 0 where allowed, -inf elsewhere
            return torch.zeros(len(vocab), device=self.device).masked_fill(~mask, -torch.inf)

        self.off_free, self.off_content = offset(self.masks.free), offset(self.masks.content)
        if prosody is not None:
            self.off_fits = torch.stack([offset(m) for m in self.masks.fits])

    # ------------------------------------------------------------------------------- public

    def generate(self, begins: list[str | None], acrostics: list[str | None], p: GenerateParams,
                 batch_size: int = 1024, keys: list[tuple[int, int]] | None = None) -> Poems:
        """One poem per (begin, acrostic) pair, in batches, each with its score (the mean
        log-probability per character, as :meth:`mean_logprobs` gives it, taken from the decoding
        steps themselves). Sampling draws come from (seed, poem index, step) alone, so each poem is
        the same whatever the batch size or device. ``keys``: a (seed, poem index) per poem;
        default (``p.seed``, its position). Beam search (:mod:`.beam`) takes each run of
        ``num_samples`` equal pairs (as ``poem_heads`` lists them) as one poem and writes its
        ``num_samples`` best, best first; ``batch_size`` then counts such poems, of ``beam_size``
        rows each, and ``keys`` are not used (a beam draws nothing)."""
        if len(begins) != len(acrostics):
            raise ValueError("begins and acrostics must have the same length")
        if keys is not None and len(keys) != len(begins):
            raise ValueError("keys must give one (seed, poem index) per poem")
        if (p.tones == "strict" or p.rhyme) and p.form in FORMS and self.prosody is None:
            raise ValueError("strict tones and rhyme need the tone lexicon and rhyme table (prosody)")
        if p.no_copy and not self.masks.completions:
            raise ValueError("no_copy needs the training lines (Decoder(..., training_lines=...))")
        keys = keys if keys is not None else [(p.seed, i) for i in range(len(begins))]
        seeds = torch.tensor([seed_key(seed) for seed, _ in keys], dtype=torch.long, device=self.device)
        ids = torch.tensor([index for _, index in keys], dtype=torch.long, device=self.device)
        n = poems_per_beam(begins, acrostics, p)
        begins, acrostics, seeds, ids = begins[::n], acrostics[::n], seeds[::n], ids[::n]  # a beam: n best at once
        run = self._form if p.form in FORMS else self._free_beam if p.strategy == "beam" else self._free
        out = Poems([], [], [], [])
        with torch.inference_mode():
            for start in range(0, len(begins), batch_size):
                chunk = slice(start, start + batch_size)
                poems = run(begins[chunk], acrostics[chunk], p, (seeds[chunk], ids[chunk]))
                out.texts += poems.texts
                out.templates += poems.templates
                out.fallbacks += poems.fallbacks
                out.scores += poems.scores
        return out

    def mean_logprobs(self, texts: list[str], chunk: int = 4096) -> list[float]:
        """Each text's mean log-probability (nats) per character under the model, from the start
        token: every character and punctuation mark counts, forced ones too; the end token does not.
        The texts are fed one token per step, as the decoder writes them (:attr:`step`). The
        decoder scores its own poems as it writes them; this scores any text."""
        if not texts:
            return []
        width = max(map(len, texts))
        ids = torch.full((len(texts), width + 1), PAD_ID, dtype=torch.long)
        ids[:, 0] = START_ID
        for row, text in enumerate(texts):
            ids[row, 1:len(text) + 1] = torch.tensor([self.index[c] for c in text], dtype=torch.long)
        ids = ids.to(self.device)
        with torch.inference_mode():
            hidden, state = [], None
            for t in range(width):
                h, state = self.step(ids[:, t], state)
                hidden.append(h)
            hidden = torch.stack(hidden, 1).flatten(0, 1)      # (B·T, H), row b·T + t
            targets = ids[:, 1:].flatten()
            logp = torch.empty(len(targets), device=self.device)
            for start in range(0, len(targets), chunk):
                rows = slice(start, start + chunk)
                logits = self._raw(hidden[rows])
                logp[rows] = logits.gather(1, targets[rows, None])[:, 0]
            keep = (targets != PAD_ID).view(len(texts), width)
            logp = logp.view(len(texts), width).masked_fill(~keep, 0.0)
            return (logp.sum(1) / keep.sum(1).clamp(min=1)).tolist()

    # -------------------------------------------------------------------------- free form

    def _free(self, begins, acrostics, p: GenerateParams, keys) -> Poems:
        """Free poems: from the begin character to the end token or ``max_length``; a free acrostic
        writes one line per character. Each poem's position (line, column, length) is carried in
        ``rows``, one entry per live poem: a finished poem drops out of the batch."""
        B, dev = len(begins), self.device
        n_lines = torch.tensor([len(a) if a else 0 for a in acrostics], device=dev)
        steps = free_steps(n_lines, p.max_length)
        rows = {"id": torch.arange(B, device=dev),
                **free_rows(self._heads(begins, acrostics, max(1, int(n_lines.max()))), n_lines)}
        out = torch.full((B, steps), PAD_ID, dtype=torch.long, device=dev)
        fallbacks = torch.zeros(B, dtype=torch.long, device=dev)
        logp, length = torch.zeros(B, device=dev), torch.zeros(B, device=dev)
        token, state = torch.full((B,), START_ID, dtype=torch.long, device=dev), self.initial_state(p.keywords, B)
        boost = self._keyword_boost(p)
        for t in range(steps):
            r = rows
            head, force = free_head(r)
            h, state = self.step(token, state)
            raw = self._raw(h)
            if bool(force.all()):
                token = head
            else:
                history = out[r["id"], :t]
                mask, banned = self._free_masks(r, history, p, force)
                u = draws(keys[0][r["id"]], keys[1][r["id"]], t) if p.strategy == "sample" else None
                chosen, empty = self._choose(self.steer(raw, history, boost), self.off_free, p, u, mask,
                                             self.off_free, banned)
                fallbacks[r["id"][empty & ~force]] += 1
                token = torch.where(force, head, chosen)
            scored = token != END_ID  # the end token is not a character of the poem
            logp[r["id"]] += _logp(raw, token) * scored
            length[r["id"]] += scored
            out[r["id"], t] = token
            free_advance(r, token, self.masks.punct)
            finished = (token == END_ID) | (~r["acro"] & (r["length"] >= p.max_length))
            if bool(finished.all()):
                break
            if bool(finished.any()):
                keep = ~finished
                rows = {k: v[keep] for k, v in r.items()}
                token, state = token[keep], select_state(state, keep)
        texts = [self.vocab.decode(row) for row in out.tolist()]
        return Poems(texts, [None] * B, fallbacks.tolist(), (logp / length.clamp(min=1)).tolist())

    def _free_masks(self, r: dict, history: torch.Tensor, p: GenerateParams, force: torch.Tensor):
        """(mask, bans) for the live poems ``r``: an acrostic's line shape (forced heads let
        through; None when no poem is an acrostic), and the no_repeat_ngram bans."""
        mask = None
        if bool(r["acro"].any()):
            mask = self.masks.acrostic_lines(r["line"], r["col"], r["n_lines"], r["acro"]) | force[:, None]
        banned = self.masks.repeats(history, p.no_repeat_ngram) if p.no_repeat_ngram else None
        return mask, banned

    def _free_beam(self, begins, acrostics, p: GenerateParams, keys) -> Poems:
        """Free poems by beam search (:func:`.beam.free_search`): each poem's ``num_samples`` best."""
        ids, fallbacks, scores = free_search(self, begins, acrostics, p)
        return Poems([self.vocab.decode(row) for row in ids.tolist()], [None] * len(ids), fallbacks.tolist(),
                     scores.tolist())

    # ------------------------------------------------------------------------------- forms

    def _form(self, begins, acrostics, p: GenerateParams, keys) -> Poems:
        """Regulated verse: ``n_lines`` lines of ``n_chars`` characters, each ended by ， or 。 —
        a fixed number of steps for every poem; with strict tones or rhyme each poem is held to
        the templates it still fits (:class:`.constraints.Templates`). With beam search each row is
        a hypothesis (:class:`.beam.Beam`), and every row's state follows the beam's choices."""
        n_lines, n_chars = FORMS[p.form]
        comma, period = self.masks.comma, self.masks.period
        if comma is None or period is None:
            raise ValueError(f"the vocabulary has no {COMMA!r} or {PERIOD!r}: form {p.form} cannot be written")
        beam = Beam(len(begins), p.beam_size, self.device) if p.strategy == "beam" else None
        forced = self._heads(begins, acrostics, n_lines)
        forced = beam.expand(forced) if beam is not None else forced
        B, dev = len(forced), self.device
        fit = None  # no templates to follow unless tones are strict or lines rhyme
        if p.tones == "strict" or p.rhyme:
            fit = Templates(self.masks, p.form, p.tones == "strict", p.rhyme, forced)
        fallbacks = fit.conflicts.long() if fit is not None else torch.zeros(B, dtype=torch.long, device=dev)
        out = torch.empty((B, n_lines * (n_chars + 1)), dtype=torch.long, device=dev)
        token, state = torch.full((B,), START_ID, dtype=torch.long, device=dev), self.initial_state(p.keywords, B)
        no_force = torch.zeros(B, dtype=torch.bool, device=dev)
        logp = beam.start_scores() if beam is not None else torch.zeros(B, device=dev)
        boost = self._keyword_boost(p) if beam is None else None  # beam search is not steered
        for t in range(out.shape[1]):
            i, j = divmod(t, n_chars + 1)  # line, position in the line
            h, state = self.step(token, state)
            raw, scored = self._raw(h), False
            if j == n_chars:  # end of the line: punctuation, nothing to choose
                token = torch.full((B,), comma if i % 2 == 0 else period, device=dev)
            else:
                force = forced[:, i] >= 0 if j == 0 else no_force
                if bool(force.all()):
                    token = forced[:, i]
                else:
                    offset, mask, banned = self._form_masks(out[:, :t], i, j, p, fit, force)
                    steered = self.steer(raw, out[:, :t], boost)
                    logits, empty = self._legal(steered, offset, mask, self.off_content, banned)
                    fallbacks += (empty & ~force).long()
                    if beam is None:
                        u = draws(*keys, t) if p.strategy == "sample" else None
                        token = torch.where(force, forced[:, i], pick(logits, p, u))
                    else:  # each poem's K best, scored; every row's state follows them
                        rows, token, logp = beam.select(only(logits, raw, force, forced[:, i]), raw, logp)
                        out, fallbacks, state = out[rows], fallbacks[rows], select_state(state, rows)
                        scored = True
                        if fit is not None:
                            fit.select(rows)
                if fit is not None:
                    fit.narrow(token, i, j)
            if not scored:
                logp += _logp(raw, token)
            out[:, t] = token
        held_to = fit.held_to() if fit is not None else [None] * B
        if beam is not None:  # each poem's num_samples best hypotheses, best first
            best = beam.best(logp, p.num_samples)
            out, fallbacks, logp, held_to = out[best], fallbacks[best], logp[best], [held_to[k] for k in best.tolist()]
        texts = [self.vocab.decode(row) for row in out.tolist()]
        return Poems(texts, held_to, fallbacks.tolist(), (logp / out.shape[1]).tolist())

    def _form_masks(self, history: torch.Tensor, i: int, j: int, p: GenerateParams, fit: Templates | None,
                    force: torch.Tensor):
        """(offset, mask, bans) at position ``j`` of line ``i``: the tone offset row (or the rhyme
        mask at a rhyming position, forced poems let through), and the bans (no_repeat_ngram,
        no_copy at a line's last character, 重韵)."""
        offset, mask, banned = self.off_content, None, []
        if p.no_repeat_ngram:
            banned.append(self.masks.repeats(history, p.no_repeat_ngram))
        if p.no_copy and j == FORMS[p.form][1] - 1:  # a line's last character
            banned.append(self.masks.copies(history[:, history.shape[1] - j:]))
        if fit is not None and fit.rhyming(i, j):
            mask = fit.rhyme_mask(i, j) | force[:, None]
            banned.append(fit.earlier_rhymes(history, i))
        elif fit is not None:
            row = fit.tone_row(i, j)  # one row for all, or one per poem (index_select: faster than [row])
            offset = self.off_fits[row] if isinstance(row, int) else self.off_fits.index_select(0, row)
        banned = [b for b in banned if b is not None]
        return offset, mask, torch.cat(banned, 1) if banned else None

    # ------------------------------------------------------------------------------ helpers

    def _keyword_boost(self, p: GenerateParams) -> tuple[torch.Tensor, float] | None:
        """(ids of the theme keywords' characters, ``keyword_boost``); None when off."""
        chars = sorted({c for word in p.keywords for c in word})
        if not chars or not p.keyword_boost:
            return None
        return torch.tensor([self.index[c] for c in chars], device=self.device), p.keyword_boost

    @staticmethod
    def steer(raw: torch.Tensor, history: torch.Tensor, boost: tuple[torch.Tensor, float] | None) -> torch.Tensor:
        """The logits a token is chosen by: ``raw``, plus ``keyword_boost`` on each theme character
        that the poem (``history``: its ids so far) has not written yet — a nudge toward the theme,
        gone once the character is in, so the theme is not repeated. A poem's score is always read
        off ``raw``, the model's own distribution. Beam search is not steered: it ranks by that
        distribution alone. ``boost``: :meth:`_keyword_boost`'s (ids, nats), or None (off)."""
        if boost is None:
            return raw
        ids, nats = boost
        missing = ~(history[:, :, None] == ids).any(1)  # (B, k)
        return raw.scatter_add(1, ids.expand(len(raw), -1), missing * nats)

    def initial_state(self, keywords: list[str], batch: int):
        """The recurrent state each of ``batch`` poems starts from: after the theme ``keywords``
        (their characters, in order, as training put them before the start token), or None (no
        theme: the network's zero state). Computed once and repeated, so every poem starts from
        the same bits whatever the batch."""
        prefix = "".join(keywords)
        if not prefix:
            return None
        state = None
        for ch in prefix:
            _, state = self.step(torch.tensor([self.index[ch]], device=self.device), state)
        return select_state(state, torch.zeros(batch, dtype=torch.long, device=self.device))

    def _heads(self, begins, acrostics, width: int) -> torch.Tensor:
        """(B, width) ids of the characters forced at the start of each line; -1 where none."""
        rows = []
        for begin, acrostic in zip(begins, acrostics):
            chars = list(acrostic) if acrostic else [begin] if begin else []
            rows.append([self.index[c] for c in chars] + [-1] * (width - len(chars)))
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _raw(self, h: torch.Tensor) -> torch.Tensor:
        """The model's log-probabilities, nothing masked: (B, V) — logits to mask and draw from, and
        the scores' terms as they are."""
        logits = self.model.logits(h)
        return logits if self.normalised else logits.log_softmax(-1)

    def _choose(self, raw, offset, p: GenerateParams, u, mask=None, fallback_offset=None, banned=None):
        """Next token per poem (:func:`.sampling.pick` from :meth:`_legal`'s logits); ``u``: (B, 1)
        uniform draws when sampling. Returns (tokens, which poems fell back to ``fallback_offset``)."""
        logits, empty = self._legal(raw, offset, mask, fallback_offset, banned)
        return pick(logits, p, u), empty

    @staticmethod
    def _legal(raw, offset, mask=None, fallback_offset=None, banned=None):
        """The raw logits plus ``offset`` ((V,) or (B, V), -inf = illegal), an optional extra mask and
        optional (B, m) ids that are banned (<pad> where none). The bans give way first: a poem they
        leave with nothing legal has its row again without them; one the masks leave with nothing
        gets ``fallback_offset``'s row. Returns (logits, which poems fell back to ``fallback_offset``)."""
        logits = _logits(raw, offset, mask, banned)
        empty = torch.isneginf(logits.amax(-1))
        if banned is not None and bool(empty.any()):
            rows = empty.nonzero()[:, 0]
            logits[rows] = _logits(raw[rows], offset[rows] if offset.dim() == 2 else offset,
                                   None if mask is None else mask[rows])
            empty = torch.isneginf(logits.amax(-1))
        if fallback_offset is not None and bool(empty.any()):
            rows = empty.nonzero()[:, 0]
            logits[rows] = _logits(raw[rows], fallback_offset)
        return logits, empty


def _logits(raw, offset, mask=None, banned=None) -> torch.Tensor:
    """A fresh tensor of the raw logits with the offset row(s), the mask and the bans applied."""
    logits = raw + offset
    if mask is not None:
        logits.masked_fill_(~mask, -torch.inf)
    if banned is not None:
        logits.scatter_(1, banned, -torch.inf)
    return logits


def _logp(raw: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """log p(token) under the model, per row, from the raw log-probabilities (:meth:`Decoder._raw`)."""
    return raw.gather(1, token[:, None])[:, 0]
