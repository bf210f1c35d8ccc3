"""The vocabulary: special tokens (defined here, once) and the character ↔ id mapping.

Ids are dense: the four specials first (pad 0, unk 1, start 2, end 3), then characters by
descending frequency, ties broken by code point so the order is deterministic. The start and end
tokens are characters of the text (``G`` and ``E`` by default, as in the classic exercise), chosen
by the data-processing parameters and recorded in the vocabulary file, so every later stage reads
them from there.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PAD = "<pad>"
UNK = "<unk>"
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]  # id -> token; tokens[0:4] are pad, unk, start, end
    counts: tuple[int, ...]  # corpus frequency of each token (0 for pad and unk)

    @property
    def start(self) -> str:
        return self.tokens[START_ID]

    @property
    def end(self) -> str:
        return self.tokens[END_ID]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @property
    def fingerprint(self) -> str:
        """sha256 of the token list: models record it, generation checks it."""
        return hashlib.sha256("\n".join(self.tokens).encode("utf-8")).hexdigest()

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i > END_ID)

    @classmethod
    def build(cls, framed: Iterable[str], start: str, end: str, min_count: int = 1) -> Vocab:
        """Count characters of framed poems (which carry ``start``/``end``) and keep those seen
        at least ``min_count`` times; rarer ones will encode as ``<unk>``."""
        points = np.frombuffer("".join(framed).encode("utf-32-le"), dtype=np.uint32)
        histogram = np.bincount(points)
        counter = Counter({chr(c): int(histogram[c]) for c in np.flatnonzero(histogram)})
        specials = (PAD, UNK, start, end)
        chars = sorted(
            (c for c, n in counter.items() if n >= min_count and c not in specials),
            key=lambda c: (-counter[c], c),
        )
        unk = sum(n for c, n in counter.items() if n < min_count and c not in specials)
        tokens = (*specials, *chars)
        return cls(tokens, (0, unk, counter[start], counter[end], *(counter[c] for c in chars)))

    def to_json(self) -> dict:
        return {
            "specials": {"pad": PAD, "unk": UNK, "start": self.start, "end": self.end},
            "size": len(self),
            "fingerprint": self.fingerprint,
            "tokens": list(self.tokens),
            "counts": list(self.counts),
        }

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        tokens, counts = tuple(data["tokens"]), tuple(data["counts"])
        if tokens[:2] != (PAD, UNK) or len(tokens) != len(counts) or len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary file is malformed: expected <pad>, <unk> first and unique tokens")
        vocab = cls(tokens, counts)
        if data.get("fingerprint", vocab.fingerprint) != vocab.fingerprint:
            raise ValueError("vocabulary file's fingerprint does not match its tokens (edited by hand?)")
        return vocab

    def encode_many(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode many texts at once: (concatenated int32 ids, int64 offsets of len(texts)+1)."""
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        codepoints = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
        chars = [(i, ord(t)) for i, t in enumerate(self.tokens) if len(t) == 1]
        table = np.full(max([int(codepoints.max(initial=0)), *(c for _, c in chars)]) + 1, UNK_ID, np.int32)
        for i, point in chars:
            table[point] = i
        return table[codepoints], offsets
