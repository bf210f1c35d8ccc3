"""What may be written where: the masks the decoder puts on the logits at each step.

* always: never <pad>, <unk> or the start token;
* a form (wujue … qilv): characters at character positions, ``，`` / ``。`` at the ends of the
  lines, the end token after the last line — every poem has the right shape by construction;
  a free-form acrostic: lines of ``FREE_LINE`` characters, each ended by ``，`` (``。`` the last);
* acrostic / begin characters: forced at the first position of their line;
* ``tones: strict``: at a strict position, only characters whose lexicon tone fits the template
  (or that take either tone); ``rhyme``: at a rhyming position, only characters of the poem's
  rhyme group. Each poem keeps the set of templates it still fits (:class:`Templates`: all four
  at the start; the first rhyming character fixes the rhyme group), so the template is chosen
  along the way. With ``rhyme``, a rhyming position also never repeats an earlier line's end
  character (重韵);
* ``no_repeat_ngram`` = n: never a character that would repeat an n-gram of characters already in
  the poem (n-grams do not cross punctuation; 1 = no character twice). Off (0) by default: the
  classic greedy poet loops, and that is its behaviour;
* ``no_copy`` (forms): at a line's last character, never one that would complete a line found
  verbatim in the training lines given to the decoder.

A mask is a (V,) or (B, V) boolean tensor (True: allowed); a ban is (B, m) token ids (<pad> where
none), which the decoder lifts before it gives up on a poem (see ``Decoder._choose``). Where a
free poem stands (line, column, length: what its shape and forced heads depend on) is kept and
advanced by :func:`free_rows`, :func:`free_head` and :func:`free_advance`, for greedy, sampled and
beam decoding alike.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

import torch

from tangshi_pipeline.poet.prosody import COMMA, EITHER, FORMS, FREE, PERIOD, PING, ZE, Prosody, templates
from tangshi_pipeline.poet.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocab

FREE_LINE = (3, 7)  # free-form acrostic: characters per line, at least / at most
_REQ = {PING: 0, ZE: 1, FREE: 3}  # template requirement codes (rows of VocabMasks.fits)
_TONE = {PING: 0, ZE: 1, EITHER: 2}  # lexicon tone codes; 3 = unknown


def is_hanzi(token: str) -> bool:
    """A character that may stand at a character position (a CJK ideograph, not punctuation)."""
    return len(token) == 1 and unicodedata.category(token) == "Lo"


class VocabMasks:
    """Per token of the vocabulary, built once: character or punctuation, tone, rhyme groups; and
    the training lines' completions (``no_copy``)."""

    def __init__(self, vocab: Vocab, prosody: Prosody | None, training_lines: Iterable[str], device: torch.device):
        V, tokens, index = len(vocab), vocab.tokens, vocab.index
        self.content = torch.tensor([i > END_ID and is_hanzi(t) for i, t in enumerate(tokens)], device=device)
        self.free = torch.ones(V, dtype=torch.bool, device=device)
        self.free[[PAD_ID, UNK_ID, START_ID]] = False
        self.comma, self.period = index.get(COMMA), index.get(PERIOD)
        self.punct = torch.zeros(V, dtype=torch.bool, device=device)
        self.punct[[i for i in (self.comma, self.period) if i is not None]] = True
        if prosody is not None:
            codes = [_TONE.get(prosody.tone(t), 3) if is_hanzi(t) else 3 for t in tokens]
            self.tone = torch.tensor(codes, dtype=torch.long, device=device)
            either, known = self.tone == 2, self.tone < 3
            # fits[r]: characters fitting requirement r = 平, 仄, 平 or 仄 (tone known), anything
            self.fits = torch.stack([self.content & ((self.tone == 0) | either),
                                     self.content & ((self.tone == 1) | either),
                                     self.content & known, self.content])
            bits = [sum(1 << g for g in prosody.char_groups.get(t, ())) for t in tokens]
            self.groups = torch.tensor(bits, dtype=torch.long, device=device)
            self.all_groups = (1 << len(prosody.group_names)) - 1
        # no_copy: the first n-1 characters of each training line of a form's length → its last ones
        self.completions: dict[tuple[int, ...], list[int]] = {}
        widths = {n for _, n in FORMS.values()}
        for line in set(training_lines):
            if len(line) in widths and all(c in index for c in line):
                self.completions.setdefault(tuple(index[c] for c in line[:-1]), []).append(index[line[-1]])

    def acrostic_lines(self, line: torch.Tensor, col: torch.Tensor, n_lines: torch.Tensor,
                       acro: torch.Tensor) -> torch.Tensor:
        """(B, V) for free-form acrostic poems (``acro``; the others: :attr:`free`) at (``line``,
        ``col``) of their ``n_lines``: lo..hi characters, then ， (。 on the last line), then the end."""
        lo, hi = FREE_LINE
        finish = line >= n_lines
        allowed = self.content[None] & ((col < hi) & ~finish)[:, None]
        if self.comma is not None:
            allowed[:, self.comma] = (col >= lo) & (line < n_lines - 1)
        if self.period is not None:
            allowed[:, self.period] = (col >= lo) & ~finish
        allowed[:, END_ID] = finish
        return torch.where(acro[:, None], allowed, self.free[None])

    def repeats(self, history: torch.Tensor, n: int) -> torch.Tensor | None:
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

    def copies(self, prefix: torch.Tensor) -> torch.Tensor | None:
        """(B, m) ids that would complete a training line after each poem's ``prefix`` (B, n-1) of
        the current line; <pad> where none."""
        hits = [self.completions.get(tuple(row), ()) for row in prefix.tolist()]
        width = max(map(len, hits))
        if not width:
            return None
        rows = [[*h, *[PAD_ID] * (width - len(h))] for h in hits]
        return torch.tensor(rows, dtype=torch.long, device=prefix.device)


class Templates:
    """The regulated-verse templates each poem of a batch still fits (``tones: strict``, ``rhyme``).

    ``alive`` (B, K): which of the form's K templates each poem still fits; ``groups`` (B, K): per
    template, the rhyme groups (bits over ``prosody.group_names``) its rhyming characters so far
    share. A poem starts with the templates its forced line heads fit (all of them, counted in
    ``conflicts``, when they fit none); each character drops the templates it breaks, unless that
    would drop them all (after a fallback the poem keeps following the old set).
    """

    def __init__(self, masks: VocabMasks, form: str, strict: bool, rhyme: bool, forced: torch.Tensor):
        dev, temps = forced.device, templates(form)
        self.masks, self.names, self.n_chars = masks, [t.name for t in temps], FORMS[form][1]
        self.required = torch.tensor([[[_REQ[c] if strict else 3 for c in line] for line in t.lines]
                                      for t in temps], device=dev)                    # (K, lines, chars)
        self.rhymes = torch.tensor([t.rhymes for t in temps], device=dev) & rhyme      # (K, lines)
        self.alive = torch.ones(len(forced), len(temps), dtype=torch.bool, device=dev)
        self.groups = torch.full(self.alive.shape, masks.all_groups, dtype=torch.long, device=dev)
        for i in range(forced.shape[1]):  # only the templates that the forced characters fit
            tone = masks.tone[forced[:, i].clamp(min=0)]
            self.alive &= _tone_fits(tone[:, None], self.required[None, :, i, 0]) | (forced[:, i] < 0)[:, None]
        self.conflicts = ~self.alive.any(-1)
        self.alive[self.conflicts] = True

    def rhyming(self, i: int, j: int) -> bool:
        """Whether position ``j`` of line ``i`` rhymes in some template."""
        return j == self.n_chars - 1 and bool(self.rhymes[:, i].any())

    def tone_row(self, i: int, j: int) -> int | torch.Tensor:
        """The row of ``VocabMasks.fits`` that each poem may draw from at a non-rhyming position:
        one int when every poem has the same, else (B,)."""
        required = self.required[:, i, j]
        wants = [(self.alive & (required == r)[None]).any(-1) for r in (0, 1, 3)]
        row = torch.where(wants[2], 3, torch.where(wants[0] & wants[1], 2, torch.where(wants[0], 0, 1)))
        return int(row[0]) if bool((row == row[0]).all()) else row

    def rhyme_mask(self, i: int, j: int) -> torch.Tensor:
        """(B, V): characters that fit a template the poem still fits, its rhyme included."""
        fits, required, rhymes = self.masks.fits, self.required[:, i, j], self.rhymes[:, i]
        allowed = None
        for k in range(self.alive.shape[1]):
            fit = fits[required[k]][None]
            if bool(rhymes[k]):
                fit = fit & ((self.groups[:, k, None] & self.masks.groups[None]) != 0)
            fit = fit & self.alive[:, k, None]
            allowed = fit if allowed is None else allowed | fit
        return allowed

    def earlier_rhymes(self, history: torch.Tensor, i: int) -> torch.Tensor | None:
        """(B, m) the end characters of the lines before ``i`` that may rhyme (重韵 bans them)."""
        ends = torch.arange(i, device=history.device) * (self.n_chars + 1) + self.n_chars - 1
        earlier = ends[self.rhymes[:, :i].any(0)]
        return history[:, earlier] if len(earlier) else None

    def narrow(self, token: torch.Tensor, i: int, j: int) -> None:
        """Drop the templates the emitted characters broke; narrow each template's rhyme groups."""
        ok = _tone_fits(self.masks.tone[token][:, None], self.required[None, :, i, j])   # (B, K)
        groups = self.groups
        if j == self.n_chars - 1 and bool(self.rhymes[:, i].any()):
            rhymes = self.rhymes[:, i]
            groups = torch.where(rhymes[None], self.groups & self.masks.groups[token][:, None], self.groups)
            ok &= ~rhymes[None] | (groups != 0)
        keep = self.alive & ok
        lost = ~keep.any(-1)[:, None]  # nothing fits any more (after a fallback): keep the old set
        self.alive, self.groups = torch.where(lost, self.alive, keep), torch.where(lost, self.groups, groups)

    def select(self, rows: torch.Tensor) -> None:
        """Follow a beam search: row i now continues row ``rows[i]``."""
        self.alive, self.groups = self.alive[rows], self.groups[rows]

    def held_to(self) -> list[str]:
        """The template each poem was held to: the first it still fits."""
        return [self.names[k] for k in self.alive.long().argmax(-1).tolist()]


def _tone_fits(tone: torch.Tensor, required: torch.Tensor) -> torch.Tensor:
    """tone codes (0 平, 1 仄, 2 either, 3 unknown) vs requirement codes (0 平, 1 仄, 3 free)."""
    return (required == 3) | (tone == 2) | (tone == required)


# ------------------------------------------------------------------ where each free poem is


def free_rows(heads: torch.Tensor, n_lines: torch.Tensor) -> dict[str, torch.Tensor]:
    """The position of each free poem, one entry per row: its forced line heads ``heads`` (B, width;
    -1 where none), its acrostic's lines ``n_lines`` (0: not an acrostic), and its line, column and
    length so far. Greedy/sampled decoding and beam search advance it the same way."""
    zeros = torch.zeros(len(n_lines), dtype=torch.long, device=n_lines.device)
    return {"heads": heads, "n_lines": n_lines, "acro": n_lines > 0, "line": zeros, "col": zeros, "length": zeros}


def free_steps(n_lines: torch.Tensor, max_length: int) -> int:
    """Steps a batch of free poems may take: ``max_length``, or what the longest acrostic needs
    (``FREE_LINE[1]`` characters and a punctuation mark per line, then the end token), the larger."""
    acrostics_only = bool((n_lines > 0).all())
    return max(0 if acrostics_only else max_length, int(n_lines.max()) * (FREE_LINE[1] + 1) + 1)


def free_head(rows: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the character forced at each poem's next step, -1 where none; whether one is forced): a
    line's head at the start of an acrostic line, the begin character at the poem's start."""
    r, width = rows, rows["heads"].shape[1]
    head = r["heads"].gather(1, r["line"].clamp(max=width - 1)[:, None])[:, 0]
    starting = torch.where(r["acro"], (r["col"] == 0) & (r["line"] < r["n_lines"]), r["length"] == 0)
    return head, starting & (head >= 0)


def free_advance(rows: dict[str, torch.Tensor], token: torch.Tensor, punct: torch.Tensor) -> None:
    """Move each poem past ``token`` (``punct``: the (V,) punctuation mask; it ends an acrostic's line)."""
    is_punct = punct[token] & rows["acro"]
    rows["length"] = rows["length"] + 1
    rows["col"] = torch.where(is_punct, 0, rows["col"] + 1)
    rows["line"] = rows["line"] + is_punct.long()
