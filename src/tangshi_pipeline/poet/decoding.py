"""Batched decoding: many poems at once, one token per step, the recurrent state carried along.

The classic exercise writes one poem at a time and, for every new character, feeds the whole
prefix through the network again (O(n²) work per poem, batch 1). Here every poem of a batch
advances together, one token per step, from the recurrent state the previous step left
(O(n) work, batch B) — :func:`greedy_refeed` keeps the classic loop as the reference.

At each step the logits are masked so that only legal tokens can be drawn:

* always: never <pad>, <unk> or the start token;
* a form (wujue … qilv): characters at character positions, ``，`` / ``。`` at the ends of the
  lines, the end token after the last line — every poem has the right shape by construction;
* acrostic / begin characters: forced at the first position of their line;
* ``strict_tones``: at a strict position, only characters whose lexicon tone fits the template
  (or that take either tone); ``rhyme``: at a rhyming position, only characters of the poem's
  rhyme group. Each poem keeps the set of templates it still fits (all four at the start; the
  first rhyming character fixes the rhyme group), so the template is chosen along the way. With
  ``rhyme``, a rhyming position also never repeats an earlier line's end character (重韵);
* ``no_repeat_ngram`` = n: never a character that would repeat an n-gram of characters already in
  the poem (n-grams do not cross punctuation; 1 = no character twice). Off (0) by default: the
  classic greedy poet loops, and that is its behaviour;
* ``no_copy`` (forms): at a line's last character, never one that would complete a line found
  verbatim in ``training_lines`` (the training split's lines, given to the decoder).

Each poem's random draws come from (seed, poem index, step) alone (counter-based): by default the
seed of the settings and the poem's position in the call, or a (seed, index) key per poem
(``generate(..., keys=...)``), so poems of several requests decoded together in one batch are
each the poems their own request would get alone. ``Decoder.mean_logprobs`` (and
``generate(..., score=True)``) gives each poem's mean log-probability per character under the
model — its own judgement of the text, whatever the masks forced — to rank candidates by.

If the masks leave a poem no legal character (e.g. a forced acrostic character that breaks every
template), the poem falls back to the shape-only mask for that step and the step is counted in
``Poems.fallbacks``. The bans (重韵, ``no_repeat_ngram``, ``no_copy``) give way before that: a
poem they alone leave with nothing legal draws again with the masks only.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from tangshi_pipeline.poet.model import CharRNN
from tangshi_pipeline.poet.prosody import COMMA, EITHER, FORMS, PERIOD, PING, ZE, Prosody, templates
from tangshi_pipeline.poet.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocab

FREE_LINE = (3, 7)  # free-form acrostic: characters per line, at least / at most
_REQ = {PING: 0, ZE: 1, "*": 3}  # template requirement codes (index into Decoder.fits)
_TONE = {PING: 0, ZE: 1, EITHER: 2}  # lexicon tone codes; 3 = unknown


@dataclass(frozen=True)
class Settings:
    form: str = "free"               # free | wujue | qijue | wulv | qilv
    strategy: str = "greedy"         # greedy | sample
    temperature: float = 0.8
    top_k: int = 0                   # 0 = off
    top_p: float = 1.0               # 1 = off
    max_length: int = 30             # free form: characters of the text at most
    strict_tones: bool = False
    rhyme: bool = False
    no_repeat_ngram: int = 0         # 0 = off
    no_copy: bool = False            # forms: never complete a line of ``training_lines``
    seed: int = 42


@dataclass
class Poems:
    texts: list[str]
    templates: list[str | None]      # the template each poem was held to (strict/rhyme), else None
    fallbacks: list[int] = field(default_factory=list)  # steps where the masks left nothing legal
    scores: list[float] = field(default_factory=list)   # mean log-probability per character (score=True)


def is_hanzi(token: str) -> bool:
    """A character that may stand at a character position (a CJK ideograph, not punctuation)."""
    return len(token) == 1 and unicodedata.category(token) == "Lo"


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


def _select(state, keep: torch.Tensor):
    """Keep some poems (batch rows) of a recurrent state: a list of per-layer (B, H) tensors
    (:class:`_LSTMStep`), or nn.RNN/GRU's (layers, B, H) tensor or nn.LSTM's (h, c) pair of them."""
    if isinstance(state, list):
        return [x[keep] for x in state]
    if isinstance(state, tuple):
        return tuple(x[:, keep] for x in state)
    return state[:, keep]


class _LSTMStep:
    """One step of the model's LSTM from fused weights: per layer one ``addmm`` for the recurrent
    part, and for the first layer a table of every token's input projection (embedding folded in).
    ``nn.LSTM`` called on one time step spends most of its time in set-up, not arithmetic.
    State: ``[h_0 … h_{L-1}, c_0 … c_{L-1}]``, each (B, H). Gate order as in PyTorch: i, f, g, o."""

    def __init__(self, model: CharRNN):
        rnn = model.rnn
        self.layers = rnn.num_layers
        w = lambda name: getattr(rnn, name).detach()  # noqa: E731
        bias = [w(f"bias_ih_l{k}") + w(f"bias_hh_l{k}") for k in range(self.layers)]
        self.table = torch.addmm(bias[0], model.embedding.weight.detach(), w("weight_ih_l0").t())
        self.w_ih = [None] + [w(f"weight_ih_l{k}").t().contiguous() for k in range(1, self.layers)]
        self.w_hh = [w(f"weight_hh_l{k}").t().contiguous() for k in range(self.layers)]
        self.bias = bias
        self.hidden = rnn.hidden_size

    def __call__(self, token: torch.Tensor, state: list | None):
        L = self.layers
        if state is None:
            zero = torch.zeros(len(token), self.hidden, device=token.device, dtype=self.table.dtype)
            state = [zero] * (2 * L)
        x = self.table[token]
        new_h, new_c = [], []
        for k in range(L):
            gates = torch.addmm(x, state[k], self.w_hh[k])
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * state[L + k] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            new_h.append(h)
            new_c.append(c)
            if k + 1 < L:
                x = torch.addmm(self.bias[k + 1], h, self.w_ih[k + 1])
        return h, new_h + new_c


class Decoder:
    """Decode poems from a model; the vocabulary and prosody masks are built once.

    Static masks are folded into the output layer's bias (``addmm`` adds them for free);
    per-poem masks are one of four bias rows (tones) or, at rhyming positions only, a full mask.
    """

    def __init__(self, model: CharRNN, vocab: Vocab, prosody: Prosody | None = None, device: str = "cpu",
                 training_lines: Iterable[str] = ()):
        if model.config.vocab_size != len(vocab):
            raise ValueError(f"the model has {model.config.vocab_size} output tokens but the vocabulary "
                             f"has {len(vocab)}: they were not made together")
        self.model = model.to(device).eval()
        self.vocab, self.prosody, self.device = vocab, prosody, torch.device(device)
        V, tokens, index = len(vocab), vocab.tokens, vocab.index
        self.index = index
        dev = self.device
        self._lstm = _LSTMStep(self.model) if isinstance(self.model.rnn, torch.nn.LSTM) else None
        self.weight_t = self.model.head.weight.detach().t().contiguous()
        head_bias = self.model.head.bias.detach()

        def bias(mask: torch.Tensor) -> torch.Tensor:  # 0 where allowed, -inf elsewhere, + head bias
            return head_bias + torch.zeros(V, device=dev).masked_fill(~mask, -torch.inf)

        self.content = torch.tensor([i > END_ID and is_hanzi(t) for i, t in enumerate(tokens)], device=dev)
        self.free = torch.ones(V, dtype=torch.bool, device=dev)
        self.free[[PAD_ID, UNK_ID, START_ID]] = False
        self.bias_free, self.bias_content = bias(self.free), bias(self.content)
        self.comma, self.period = index.get(COMMA), index.get(PERIOD)
        self.punct = torch.zeros(V, dtype=torch.bool, device=dev)
        self.punct[[i for i in (self.comma, self.period) if i is not None]] = True
        if prosody is not None:
            codes = [_TONE.get(prosody.tone(t), 3) if is_hanzi(t) else 3 for t in tokens]
            self.tone = torch.tensor(codes, dtype=torch.long, device=dev)
            either, known = self.tone == 2, self.tone < 3
            # fits[r]: characters fitting requirement r = 平, 仄, 平 or 仄 (tone known), anything
            self.fits = torch.stack([self.content & ((self.tone == 0) | either),
                                     self.content & ((self.tone == 1) | either),
                                     self.content & known, self.content])
            self.bias_fits = torch.stack([bias(m) for m in self.fits])
            bits = [sum(1 << g for g in prosody.char_groups.get(t, ())) for t in tokens]
            self.groups = torch.tensor(bits, dtype=torch.long, device=dev)
            self.all_groups = (1 << len(prosody.group_names)) - 1
        # no_copy: the first n-1 characters of each training line of a form's length → its last ones
        self.completions: dict[tuple[int, ...], list[int]] = {}
        widths = {n for _, n in FORMS.values()}
        for line in set(training_lines):
            if len(line) in widths and all(c in index for c in line):
                self.completions.setdefault(tuple(index[c] for c in line[:-1]), []).append(index[line[-1]])

    # ------------------------------------------------------------------------------- public

    def generate(self, begins: list[str | None], acrostics: list[str | None], settings: Settings,
                 batch_size: int = 1024, keys: list[tuple[int, int]] | None = None, score: bool = False) -> Poems:
        """One poem per (begin, acrostic) pair, in batches. Sampling draws come from (seed, poem
        index, step) alone, so each poem is the same whatever the batch size or device. ``keys``:
        a (seed, poem index) per poem; default (``settings.seed``, its position). ``score``: also
        each poem's mean log-probability per character (:meth:`mean_logprobs`)."""
        if len(begins) != len(acrostics):
            raise ValueError("begins and acrostics must have the same length")
        if keys is not None and len(keys) != len(begins):
            raise ValueError("keys must give one (seed, poem index) per poem")
        if (settings.strict_tones or settings.rhyme) and settings.form in FORMS and self.prosody is None:
            raise ValueError("strict tones and rhyme need the tone lexicon and rhyme table (prosody)")
        if settings.no_copy and not self.completions:
            raise ValueError("no_copy needs the training lines (Decoder(..., training_lines=...))")
        keys = keys if keys is not None else [(settings.seed, i) for i in range(len(begins))]
        seeds = torch.tensor([_seed_key(seed) for seed, _ in keys], dtype=torch.long, device=self.device)
        ids = torch.tensor([index for _, index in keys], dtype=torch.long, device=self.device)
        run = self._form if settings.form in FORMS else self._free
        out = Poems([], [], [])
        with torch.inference_mode():
            for start in range(0, len(begins), batch_size):
                chunk = slice(start, start + batch_size)
                poems = run(begins[chunk], acrostics[chunk], settings, (seeds[chunk], ids[chunk]))
                out.texts += poems.texts
                out.templates += poems.templates
                out.fallbacks += poems.fallbacks
        if score:
            out.scores = self.mean_logprobs(out.texts)
        return out

    def mean_logprobs(self, texts: list[str], chunk: int = 4096) -> list[float]:
        """Each text's mean log-probability (nats) per character under the model, from the start
        token: every character and punctuation mark counts, forced ones too; the end token does not.
        The texts are fed one token per step, as the decoder writes them (:meth:`_advance`)."""
        if not texts:
            return []
        width = max(map(len, texts))
        ids = torch.full((len(texts), width + 1), PAD_ID, dtype=torch.long)
        ids[:, 0] = START_ID
        for row, text in enumerate(texts):
            ids[row, 1:len(text) + 1] = torch.tensor([self.index[c] for c in text], dtype=torch.long)
        ids = ids.to(self.device)
        head_bias = self.model.head.bias.detach()
        with torch.inference_mode():
            hidden, state = [], None
            for t in range(width):
                h, state = self._advance(ids[:, t], state)
                hidden.append(h)
            hidden = torch.stack(hidden, 1).flatten(0, 1)      # (B·T, H), row b·T + t
            targets = ids[:, 1:].flatten()
            logp = torch.empty(len(targets), device=self.device)
            for start in range(0, len(targets), chunk):
                rows = slice(start, start + chunk)
                logits = torch.addmm(head_bias, hidden[rows], self.weight_t)
                logp[rows] = logits.gather(1, targets[rows, None])[:, 0] - logits.logsumexp(-1)
            keep = (targets != PAD_ID).view(len(texts), width)
            logp = logp.view(len(texts), width).masked_fill(~keep, 0.0)
            return (logp.sum(1) / keep.sum(1).clamp(min=1)).tolist()

    # ------------------------------------------------------------------------------ helpers

    def _advance(self, token: torch.Tensor, state):
        """Feed one token per poem from the carried state; the top layer's output and new state."""
        if self._lstm is not None:
            return self._lstm(token, state)
        out, state = self.model.rnn(self.model.embedding(token[:, None]), state)
        return out[:, -1], state

    def _heads(self, begins, acrostics, width: int) -> torch.Tensor:
        """(B, width) ids of the characters forced at the start of each line; -1 where none."""
        rows = []
        for begin, acrostic in zip(begins, acrostics):
            chars = list(acrostic) if acrostic else [begin] if begin else []
            rows.append([self.index[c] for c in chars] + [-1] * (width - len(chars)))
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _choose(self, h, bias, s: Settings, u, mask=None, fallback_bias=None, banned=None):
        """Next token per poem from the logits (bias: (V,) or (B, V), -inf = illegal), an optional
        extra mask and optional (B, m) ids that are banned (<pad> where none); ``u``: (B, 1) uniform
        draws when sampling. The bans give way first: a poem they leave with nothing legal is drawn
        again without them; one the masks leave with nothing uses ``fallback_bias``. Returns
        (tokens, which poems fell back to ``fallback_bias``)."""
        token, best = self._pick(self._logits(h, bias, mask, banned), s, u)
        empty = torch.isneginf(best)
        if banned is not None and bool(empty.any()):
            rows = empty.nonzero()[:, 0]
            token[rows], best[rows] = self._pick(
                self._logits(h[rows], bias[rows] if bias.dim() == 2 else bias,
                             None if mask is None else mask[rows], None), s, None if u is None else u[rows])
            empty = torch.isneginf(best)
        if fallback_bias is not None and bool(empty.any()):
            rows = empty.nonzero()[:, 0]
            token[rows] = self._pick(self._logits(h[rows], fallback_bias), s, None if u is None else u[rows])[0]
        return token, empty

    def _logits(self, h, bias, mask=None, banned=None) -> torch.Tensor:
        logits = torch.addmm(bias, h, self.weight_t)
        if mask is not None:
            logits.masked_fill_(~mask, -torch.inf)
        if banned is not None:
            logits.scatter_(1, banned, -torch.inf)
        return logits

    def _pick(self, logits: torch.Tensor, s: Settings, u) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy argmax, or a sample (temperature, then top-k, then top-p); also each row's best logit."""
        if s.strategy == "greedy":
            best, token = logits.max(-1)
            return token, best
        x = logits.div_(s.temperature)
        if not s.top_k and s.top_p >= 1.0:  # plain temperature sampling over everything
            best = x.amax(-1)
            return _sample(torch.exp(x - best[:, None]), u), best
        if not s.top_k:  # top-p alone
            return _nucleus(x, s.top_p, u), x.amax(-1)
        vals, idx = x.topk(min(s.top_k, x.shape[-1]), dim=-1)
        p = vals.softmax(-1)  # renormalised over the top-k, then top-p on that
        if s.top_p < 1.0:
            p = p.masked_fill(p.cumsum(-1) - p >= s.top_p, 0.0)
        return idx.gather(1, _sample(p, u)[:, None])[:, 0], vals[:, 0]

    def _repeats(self, history: torch.Tensor, n: int) -> torch.Tensor | None:
        """(B, m) ids that would repeat an n-gram of characters of each poem's ``history`` (B, t);
        <pad> where none. Punctuation and the start token break n-grams."""
        t = history.shape[1]
        m = t - n + 1  # earlier n-grams, starting at 0 … m-1
        if n <= 0 or m <= 0:
            return None
        prefix = history[:, t - n + 1:]                      # the last n-1 tokens, to be continued
        match = self.content[prefix].all(-1, keepdim=True).expand(-1, m)
        for i in range(n - 1):
            match = match & (history[:, i:i + m] == prefix[:, i:i + 1])
        following = history[:, n - 1:n - 1 + m]
        return torch.where(match & self.content[following], following, PAD_ID)

    def _copies(self, prefix: torch.Tensor) -> torch.Tensor | None:
        """(B, m) ids that would complete a training line after each poem's ``prefix`` (B, n-1) of
        the current line; <pad> where none."""
        hits = [self.completions.get(tuple(row), ()) for row in prefix.tolist()]
        width = max(map(len, hits))
        if not width:
            return None
        rows = [[*h, *[PAD_ID] * (width - len(h))] for h in hits]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    # -------------------------------------------------------------------------- free form

    def _free(self, begins, acrostics, s: Settings, keys) -> Poems:
        B, dev = len(begins), self.device
        lo, hi = FREE_LINE
        n_lines = torch.tensor([len(a) if a else 0 for a in acrostics], device=dev)
        width = max(1, int(n_lines.max()))
        heads = self._heads(begins, acrostics, width)
        acro = n_lines > 0
        steps = max(0 if bool(acro.all()) else s.max_length, int(n_lines.max()) * (hi + 1) + 1)
        zeros = torch.zeros(B, dtype=torch.long, device=dev)
        rows = {"id": torch.arange(B, device=dev), "heads": heads, "n_lines": n_lines, "acro": acro,
                "line": zeros, "col": zeros, "length": zeros}   # per live poem; finished ones drop out
        out = torch.full((B, steps), PAD_ID, dtype=torch.long, device=dev)
        fallbacks = torch.zeros(B, dtype=torch.long, device=dev)
        token, state = torch.full((B,), START_ID, dtype=torch.long, device=dev), None
        for t in range(steps):
            r = rows
            head = r["heads"].gather(1, r["line"].clamp(max=width - 1)[:, None])[:, 0]
            starting = torch.where(r["acro"], (r["col"] == 0) & (r["line"] < r["n_lines"]), r["length"] == 0)
            force = starting & (head >= 0)
            h, state = self._advance(token, state)
            if bool(force.all()):
                token = head
            else:
                mask = self._acrostic_mask(r) | force[:, None] if bool(r["acro"].any()) else None
                banned = self._repeats(out[r["id"], :t], s.no_repeat_ngram) if s.no_repeat_ngram else None
                u = _draws(keys[0][r["id"]], keys[1][r["id"]], t) if s.strategy == "sample" else None
                chosen, empty = self._choose(h, self.bias_free, s, u, mask, self.bias_free, banned)
                fallbacks[r["id"][empty & ~force]] += 1
                token = torch.where(force, head, chosen)
            out[r["id"], t] = token
            is_punct = self.punct[token] & r["acro"]
            r["length"] = r["length"] + 1
            r["col"] = torch.where(is_punct, 0, r["col"] + 1)
            r["line"] = r["line"] + is_punct.long()
            finished = (token == END_ID) | (~r["acro"] & (r["length"] >= s.max_length))
            if bool(finished.all()):
                break
            if bool(finished.any()):
                keep = ~finished
                rows = {k: v[keep] for k, v in r.items()}
                token, state = token[keep], _select(state, keep)
        texts = [self.vocab.decode(row) for row in out.tolist()]
        return Poems(texts, [None] * B, fallbacks.tolist())

    def _acrostic_mask(self, r: dict) -> torch.Tensor:
        """Free-form acrostic lines: lo..hi characters, then ， (。 on the last line), then the end."""
        lo, hi = FREE_LINE
        finish = r["line"] >= r["n_lines"]
        allowed = self.content[None] & ((r["col"] < hi) & ~finish)[:, None]
        if self.comma is not None:
            allowed[:, self.comma] = (r["col"] >= lo) & (r["line"] < r["n_lines"] - 1)
        if self.period is not None:
            allowed[:, self.period] = (r["col"] >= lo) & ~finish
        allowed[:, END_ID] = finish
        return torch.where(r["acro"][:, None], allowed, self.free[None])

    # ------------------------------------------------------------------------------- forms

    def _form(self, begins, acrostics, s: Settings, keys) -> Poems:
        B, dev = len(begins), self.device
        n_lines, n_chars = FORMS[s.form]
        if self.comma is None or self.period is None:
            raise ValueError(f"the vocabulary has no {COMMA!r} or {PERIOD!r}: form {s.form} cannot be written")
        constrained = s.strict_tones or s.rhyme
        temps = templates(s.form)
        K = len(temps)
        req = torch.tensor([[[_REQ[c] if s.strict_tones else 3 for c in line] for line in t.lines]
                            for t in temps], device=dev)                              # (K, lines, chars)
        rhymes = torch.tensor([t.rhymes for t in temps], device=dev) & bool(s.rhyme)  # (K, lines)
        forced = self._heads(begins, acrostics, n_lines)
        alive = torch.ones(B, K, dtype=torch.bool, device=dev)
        cand = torch.full((B, K), self.all_groups if constrained else 0, dtype=torch.long, device=dev)
        fallbacks = torch.zeros(B, dtype=torch.long, device=dev)
        if constrained:  # only the templates that the forced characters fit
            for i in range(n_lines):
                tone = self.tone[forced[:, i].clamp(min=0)]
                alive &= _tone_fits(tone[:, None], req[None, :, i, 0]) | (forced[:, i] < 0)[:, None]
            conflict = ~alive.any(-1)
            alive[conflict] = True
            fallbacks += conflict.long()
        out = torch.empty((B, n_lines * (n_chars + 1)), dtype=torch.long, device=dev)
        ends = torch.arange(n_lines, device=dev) * (n_chars + 1) + n_chars - 1  # each line's last character
        token, state = torch.full((B,), START_ID, dtype=torch.long, device=dev), None
        no_force = torch.zeros(B, dtype=torch.bool, device=dev)
        t = 0
        for i in range(n_lines):
            for j in range(n_chars + 1):
                h, state = self._advance(token, state)
                if j == n_chars:  # end of the line: punctuation, nothing to choose
                    token = torch.full((B,), self.comma if i % 2 == 0 else self.period, device=dev)
                    out[:, t], t = token, t + 1
                    continue
                force = forced[:, i] >= 0 if j == 0 else no_force
                if bool(force.all()):
                    token = forced[:, i]
                else:
                    bias, mask, banned = self.bias_content, None, []
                    if s.no_repeat_ngram:
                        banned.append(self._repeats(out[:, :t], s.no_repeat_ngram))
                    if s.no_copy and j == n_chars - 1:
                        banned.append(self._copies(out[:, t - j:t]))
                    if constrained:
                        rhyming = j == n_chars - 1 and bool(rhymes[:, i].any())
                        if rhyming:
                            mask = self._template_mask(alive, cand, req[:, i, j], rhymes[:, i]) | force[:, None]
                            if s.rhyme:  # 重韵: not the end of an earlier line that may rhyme
                                earlier = ends[:i][rhymes[:, :i].any(0)]
                                banned.append(out[:, earlier] if len(earlier) else None)
                        else:
                            bias = self._tone_bias(alive, req[:, i, j])
                    banned = [b for b in banned if b is not None]
                    u = _draws(*keys, t) if s.strategy == "sample" else None
                    chosen, empty = self._choose(h, bias, s, u, mask, self.bias_content,
                                                 torch.cat(banned, 1) if banned else None)
                    fallbacks += (empty & ~force).long()
                    token = torch.where(force, forced[:, i], chosen)
                if constrained:
                    alive, cand = self._narrow(alive, cand, token, req[:, i, j],
                                               rhymes[:, i] if j == n_chars - 1 else None)
                out[:, t], t = token, t + 1
        texts = [self.vocab.decode(row) for row in out.tolist()]
        names = [temps[k].name if constrained else None for k in alive.long().argmax(-1).tolist()]
        return Poems(texts, names, fallbacks.tolist())

    def _tone_bias(self, alive: torch.Tensor, required: torch.Tensor) -> torch.Tensor:
        """(V,) or (B, V) bias: characters that fit the requirement of a template the poem still fits."""
        wants = [(alive & (required == r)[None]).any(-1) for r in (0, 1, 3)]
        variant = torch.where(wants[2], 3, torch.where(wants[0] & wants[1], 2, torch.where(wants[0], 0, 1)))
        if bool((variant == variant[0]).all()):
            return self.bias_fits[int(variant[0])]
        return self.bias_fits[variant]

    def _template_mask(self, alive, cand, required, rhyming) -> torch.Tensor:
        """(B, V): characters that fit a template the poem still fits, its rhyme included."""
        allowed = None
        for k in range(alive.shape[1]):
            fit = self.fits[required[k]][None]
            if bool(rhyming[k]):
                fit = fit & ((cand[:, k, None] & self.groups[None]) != 0)
            fit = fit & alive[:, k, None]
            allowed = fit if allowed is None else allowed | fit
        return allowed

    def _narrow(self, alive, cand, token, required, rhyming):
        """Drop the templates the emitted characters broke; narrow each template's rhyme groups."""
        ok = _tone_fits(self.tone[token][:, None], required[None])               # (B, K)
        new_cand = cand
        if rhyming is not None and bool(rhyming.any()):
            new_cand = torch.where(rhyming[None], cand & self.groups[token][:, None], cand)
            ok &= ~rhyming[None] | (new_cand != 0)
        keep = alive & ok
        lost = ~keep.any(-1)  # nothing fits any more (after a fallback): keep following the old set
        return torch.where(lost[:, None], alive, keep), torch.where(lost[:, None], cand, new_cand)


def _tone_fits(tone: torch.Tensor, required: torch.Tensor) -> torch.Tensor:
    """tone codes (0 平, 1 仄, 2 either, 3 unknown) vs requirement codes (0 平, 1 仄, 3 free)."""
    return (required == 3) | (tone == 2) | (tone == required)


def _nucleus(x: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
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
        token[todo[done]] = idx[done].gather(1, _sample(p, u[todo[done]])[:, None])[:, 0]
        todo = todo[~done]
        if not len(todo):
            break
    return token


def _sample(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row, with probability proportional to the (unnormalised) weights; ``u``: (B, 1)
    uniform draws in [0, 1). Never an index of zero weight (the draw stays below the row's total)."""
    cum = weights.cumsum(-1)
    total = cum[:, -1:]
    v = torch.minimum(u.to(cum.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cum, v, right=True)[:, 0].clamp(max=weights.shape[-1] - 1)


_M32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x · c) mod 2³² for 0 ≤ x, c < 2³², exact in int64 (no overflow): x split into 16-bit halves."""
    return (((((x >> 16) * c) & 0xFFFF) << 16) + (x & 0xFFFF) * c) & _M32


def _mix32(x):
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2³²) that mixes every bit (ints or tensors)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def _seed_key(seed: int) -> int:
    """A seed (any size) mixed down to the 32-bit key of its random numbers."""
    return _mix32((seed & _M32) ^ _mix32((seed >> 32) & _M32 ^ 0x9E3779B9))


def _uniform(seed: int, poems: torch.Tensor, step: int) -> torch.Tensor:
    """(B, 1) uniform draws in [0, 1), one per poem, from (seed, poem index, step) alone: counter-based
    random numbers, so a poem's draws do not depend on the batch it is decoded in, nor on the device."""
    return _draws(_seed_key(seed), poems, step)


def _draws(key, poems: torch.Tensor, step: int) -> torch.Tensor:
    """:func:`_uniform` from seed keys (an int, or a (B,) tensor: one seed per poem)."""
    x = _mix32((_mul32(poems.long(), 0x9E3779B1) + _mix32(key ^ _mix32(step))) & _M32)
    x = _mix32(x ^ key)
    return ((x >> 8).float() / 2**24)[:, None]  # 24 bits: exact in float32, below 1
