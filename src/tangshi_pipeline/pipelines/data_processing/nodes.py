"""Data processing: raw corpus → poems table → clean poems → framed poems → vocabulary → vectors,
from the clean poems the tone lexicon and the rhyme table (build_prosody), and each poem's theme
keywords (extract_keywords).

Every node is a pure function of its inputs and of the ``data_processing`` parameters it is wired
to, one argument per key (``pipeline.py``). Each poem that is dropped is counted under the first
reason that applies, in this order: a duplicate id, empty after whitespace removal, a forbidden
character, a start/end token inside the text, too short, too long, an exact duplicate of an
earlier poem's text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import opencc
import pandas as pd

from tangshi_pipeline.poet.prosody import build_rhyme_table, build_tone_lexicon
from tangshi_pipeline.poet.vocab import END_ID, Vocab

from .readers import CorpusFormatError, read_chinese_poetry, read_classic

__all__ = ["CorpusFormatError", "build_prosody", "build_vocab", "clean_poems", "extract_keywords", "flatten_corpus",
           "frame_poems", "vectorize"]

_WHITESPACE = re.compile(r"\s+")


def flatten_corpus(raw_corpus: dict[str, Callable[[], Any]] | bytes | str, skip_bad_partitions: bool
                   ) -> tuple[pd.DataFrame, dict]:
    """Raw corpus → one row per poem (id, author, title, text, tones, source) and an ingest report.

    ``raw_corpus`` is either the chinese-poetry partitions (``poems/poet.tang.<N>`` and
    ``strains/poet.tang.<N>``, aligned by poem id; ``skip_bad_partitions`` skips and counts the
    unreadable ones) or, in the ``classic`` environment, the bytes (UTF-8, BOM allowed) of a
    ``title:content`` poems.txt.
    """
    if isinstance(raw_corpus, (bytes, str)):
        return read_classic(raw_corpus)
    return read_chinese_poetry(raw_corpus, skip_bad_partitions)


# ----------------------------------------------------------------------------------------- clean


def _example(row_id: str, title: str, text: str) -> dict[str, str]:
    return {"id": row_id, "title": title, "text": text[:80]}


def _summary(dropped: dict) -> str:
    return ", ".join(f"{reason}: {entry['count']}" for reason, entry in dropped.items()) or "no poems"


def _opencc(config: str) -> opencc.OpenCC:
    try:
        return opencc.OpenCC(config)
    except Exception as exc:
        raise ValueError(f"data_processing.opencc_config = {config!r}: OpenCC cannot load it ({exc})") from None


def _strip_whitespace(text: str, tones: str | None) -> tuple[str, str | None]:
    if not isinstance(tones, str):  # None, or NaN from a parquet null
        return _WHITESPACE.sub("", text), None
    if not _WHITESPACE.search(text):
        return text, tones
    kept = [(c, t) for c, t in zip(text, tones) if not c.isspace()]
    return "".join(c for c, _ in kept), "".join(t for _, t in kept)


def _convert(converter: opencc.OpenCC, texts: list[str]) -> list[str]:
    """Convert many short strings with one OpenCC call (texts hold no newline)."""
    if not texts:
        return []
    out = converter.convert("\n".join(texts)).split("\n")
    if len(out) != len(texts):  # defensive: a conversion rule swallowed a line break
        out = [converter.convert(t) for t in texts]
    return out


DROP_REASONS = ("duplicate_id", "empty", "forbidden_character", "contains_start_or_end_token",
                "too_short", "too_long", "duplicate_text")  # checked in this order


def _drop_reasons(ids: pd.Series, text: pd.Series, forbidden: list[str], tokens: list[str], min_length: int,
                  max_length: int, dedupe: bool) -> np.ndarray:
    """Each poem's reason to be dropped (the first of ``DROP_REASONS`` that applies); "" to keep it."""
    length = text.str.len().to_numpy()

    def contains(chars) -> np.ndarray:
        if not chars:  # an empty pattern would match every poem
            return np.zeros(len(text), dtype=bool)
        return text.str.contains("|".join(re.escape(c) for c in chars), regex=True).to_numpy(dtype=bool)

    conditions = [
        ids.duplicated().to_numpy(),
        length == 0,
        contains(forbidden),
        contains(tokens),
        length < min_length,
        length > max_length,
    ]
    reason = np.select(conditions, DROP_REASONS[:-1], default="")
    if dedupe:
        survivors = text[reason == ""]
        reason[survivors.index[survivors.duplicated(keep="first").to_numpy()]] = "duplicate_text"
    return reason


def _dropped(reason: np.ndarray, ids: pd.Series, titles: list[str], text: pd.Series, forbidden: list[str]) -> dict:
    """Per drop reason: the count and the first poem as an example; per forbidden character: its count."""
    dropped: dict[str, dict] = {}
    for name in DROP_REASONS:
        where = np.flatnonzero(reason == name)
        if len(where):
            i = where[0]
            dropped[name] = {"count": len(where), "example": _example(ids.iat[i], titles[i], text.iat[i])}
    if "forbidden_character" in dropped:
        bad = text[reason == "forbidden_character"]
        counts = {c: int(bad.str.contains(c, regex=False).sum()) for c in forbidden}
        dropped["forbidden_character"]["by_character"] = dict(
            sorted(((c, n) for c, n in counts.items() if n), key=lambda kv: -kv[1]))
    return dropped


def clean_poems(poems: pd.DataFrame, ingest_report: dict, opencc_config: str, drop_if_contains: list[str],
                min_length: int, max_length: int, dedupe: bool, start_token: str, end_token: str
                ) -> tuple[pd.DataFrame, dict]:
    """Traditional → Simplified (``opencc_config``), whitespace removed, classic filters, duplicates dropped.

    Each dropped poem is counted under the first reason of ``DROP_REASONS`` that applies, and the
    first poem dropped for each reason is kept as its example.
    """
    converter = _opencc(opencc_config)
    stripped = [_strip_whitespace(t, g) for t, g in zip(poems["text"].tolist(), poems["tones"].tolist())]
    text = pd.Series(_convert(converter, [t for t, _ in stripped]), dtype="string")
    tones = pd.Series([g for _, g in stripped], dtype="string")
    titles = _convert(converter, [_WHITESPACE.sub(" ", t).strip() for t in poems["title"].tolist()])
    authors = _convert(converter, poems["author"].tolist())
    tones_lost = tones.notna() & (tones.str.len() != text.str.len())
    tones = tones.mask(tones_lost)
    reason = _drop_reasons(poems["id"], text, drop_if_contains, [start_token, end_token], min_length, max_length,
                           dedupe)
    dropped = _dropped(reason, poems["id"], titles, text, drop_if_contains)

    keep = reason == ""
    clean = pd.DataFrame({
        "id": poems["id"].to_numpy()[keep],
        "author": np.asarray(authors, dtype=object)[keep],
        "title": np.asarray(titles, dtype=object)[keep],
        "text": text[keep].to_numpy(dtype=object),
        "tones": tones[keep].to_numpy(dtype=object, na_value=None),
    })
    if clean.empty:
        raise ValueError(
            f"every one of the {len(poems)} poems was filtered out ({_summary(dropped)}); "
            "check data_processing.min_length / max_length / drop_if_contains and the input file."
        )
    kept_text = "".join(clean["text"].tolist())
    report = {
        "ingest": ingest_report,
        "input_poems": len(poems),
        "kept_poems": len(clean),
        "dropped_poems": len(poems) - len(clean),
        "dropped": dropped,
        "characters": len(kept_text),
        "distinct_characters": len(set(kept_text)),
        "with_tones": int(clean["tones"].notna().sum()),
        "tones_lost_in_conversion": int(tones_lost.sum()),
        "settings": {"opencc_config": opencc_config, "drop_if_contains": list(drop_if_contains),
                     "min_length": min_length, "max_length": max_length, "dedupe": dedupe},
    }
    return clean, report


def build_prosody(clean_poems: pd.DataFrame, pingshui_table: dict, opencc_config: str) -> tuple[dict, dict]:
    """The tone lexicon from the clean poems' aligned tone marks, and the level-tone rhyme groups
    of the 平水韵 table (``{"data", "source"}``) converted with the corpus's OpenCC config (see
    ``tangshi_pipeline.poet.prosody``)."""
    lexicon = build_tone_lexicon(clean_poems["text"].tolist(), clean_poems["tones"].tolist())
    table = build_rhyme_table(pingshui_table["data"], _opencc(opencc_config).convert, pingshui_table["source"])
    return lexicon, table


# ------------------------------------------------------------------------- frame, vocab, vectors


def frame_poems(clean_poems: pd.DataFrame, start_token: str, end_token: str) -> pd.DataFrame:
    """Wrap each poem in the start and end tokens and sort by length (then id, for stability)."""
    framed = pd.DataFrame({"id": clean_poems["id"], "text": start_token + clean_poems["text"] + end_token})
    framed["length"] = framed["text"].str.len().astype("int32")
    return framed.sort_values(["length", "id"], kind="stable", ignore_index=True)


def build_vocab(framed_poems: pd.DataFrame, start_token: str, end_token: str, min_count: int) -> dict:
    """Frequency-ordered vocabulary with the special tokens first; saved as JSON."""
    return Vocab.build(framed_poems["text"].tolist(), start_token, end_token, min_count).to_json()


def _split_of(ids: pd.Series, split: dict, salt: str) -> np.ndarray:
    """train/val/test by a salted hash of each poem id: stable whatever else is in the corpus."""
    u = np.array([
        int.from_bytes(hashlib.blake2b(f"{salt}:{i}".encode(), digest_size=8).digest(), "big")
        for i in ids
    ], dtype=np.float64) / 2.0**64
    return np.where(u < split["train"], "train", np.where(u < split["train"] + split["val"], "val", "test"))


def vectorize(framed_poems: pd.DataFrame, vocab: dict, split: dict, split_salt: str) -> tuple[pd.DataFrame, dict]:
    """Token ids (list<int32>) per framed poem, with its split (``split``: the train/val/test shares)."""
    v = Vocab.from_json(vocab)
    values, offsets = v.encode_many(framed_poems["text"].tolist())
    vectors = pd.DataFrame({
        "id": framed_poems["id"].to_numpy(),
        "split": _split_of(framed_poems["id"], split, split_salt),
        "length": np.diff(offsets).astype(np.int32),
        "ids": np.split(values, offsets[1:-1]),
    })
    summary = {
        name: {"poems": int((vectors["split"] == name).sum()),
               "tokens": int(vectors.loc[vectors["split"] == name, "length"].sum())}
        for name in ("train", "val", "test")
    }
    summary["vocab_size"] = len(v)
    summary["unknown_tokens"] = int((values == 1).sum())
    return vectors, summary


# ------------------------------------------------------------------------------------ keywords

_WORD = 1 << 21  # a two-character word's code: first code point × _WORD + second (code points < 2²¹)


def _terms(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(poem row, term code) of every Han character and every pair of adjacent Han characters
    (a two-character word: never across punctuation) of each string."""
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    points = np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    row = np.repeat(np.arange(len(strings)), lengths)
    han = ((points >= 0x3400) & (points <= 0x9FFF)) | ((points >= 0x20000) & (points <= 0x3134F))
    pair = han[:-1] & han[1:] & (row[:-1] == row[1:])
    return (np.concatenate([row[han], row[:-1][pair]]),
            np.concatenate([points[han], points[:-1][pair] * _WORD + points[1:][pair]]))


def _term_text(code: int) -> str:
    return chr(code) if code < _WORD else chr(code // _WORD) + chr(code % _WORD)


def extract_keywords(clean_poems: pd.DataFrame, vocab: dict, keywords: dict) -> tuple[pd.DataFrame, dict]:
    """Each poem's 1–3 theme keywords (characters or two-character words) by TF-IDF over the poems.

    A poem's terms are its Han characters and pairs of adjacent Han characters. A term's weight in
    a poem is its count in the text plus ``title_weight`` × its count in the title, times its
    inverse document frequency ln(poems / poems holding it). Candidates must occur in the text (a
    keyword the poem never writes cannot teach the model anything), in at least ``min_df`` poems (a
    theme is common enough to ask for) and in at most ``max_df`` of them (very common function
    characters: 不, 人); a two-character word must also be a word rather than a chance pair: in at
    least ``word_association`` of the poems of its rarer character. A character is not kept beside
    a chosen word holding it. Each poem keeps its ``per_poem`` best terms, best first; their token
    ids (a word is two tokens) are the prefix the model reads before the start token.
    """
    v = Vocab.from_json(vocab)
    n = len(clean_poems)
    text_rows, text_terms = _terms(clean_poems["text"].tolist())
    title_rows, title_terms = _terms(clean_poems["title"].fillna("").tolist())
    codes, term = np.unique(np.concatenate([text_terms, title_terms]), return_inverse=True)
    pairs, pair = np.unique(np.concatenate([text_rows, title_rows]) * len(codes) + term, return_inverse=True)
    weight = np.concatenate([np.ones(len(text_terms)), np.full(len(title_terms), float(keywords["title_weight"]))])
    tf = np.bincount(pair, weights=weight, minlength=len(pairs))
    in_text = np.bincount(pair[:len(text_terms)], minlength=len(pairs)) > 0
    row, col = pairs // len(codes), pairs % len(codes)
    df = np.bincount(col, minlength=len(codes))
    is_word = codes >= _WORD
    char_df = lambda c: df[np.minimum(np.searchsorted(codes, c), len(codes) - 1)]  # noqa: E731
    rarer = np.where(is_word, np.minimum(char_df(codes // _WORD), char_df(codes % _WORD)), df)
    in_vocab = np.zeros(max([0x3134F, *(ord(t) for t in v.tokens if len(t) == 1)]) + 1, dtype=bool)
    in_vocab[[ord(t) for t in v.tokens[END_ID + 1:] if len(t) == 1]] = True
    known = np.where(is_word, in_vocab[codes // _WORD] & in_vocab[codes % _WORD], in_vocab[codes % _WORD])
    ok = ((df >= keywords["min_df"]) & (df <= keywords["max_df"] * n) & known
          & (~is_word | (df >= keywords["word_association"] * rarer)))
    keep = in_text & ok[col]
    row, col, score = row[keep], col[keep], (tf * np.log(max(n, 1) / np.maximum(df[col], 1)))[keep]
    row, col, score = _without_chars_of_words(row, col, score, codes)
    order = np.lexsort((codes[col], -score, row))  # per poem, best first (ties: by code point)
    row, col = row[order], col[order]
    rank = np.arange(len(row)) - np.searchsorted(row, row)
    row, col = row[rank < keywords["per_poem"]], col[rank < keywords["per_poem"]]
    chosen = [_term_text(c) for c in codes[col].tolist()]
    per_poem = [[] for _ in range(n)]
    for r, word in zip(row.tolist(), chosen):
        per_poem[r].append(word)
    index = v.index
    table = pd.DataFrame({
        "id": clean_poems["id"].to_numpy(),
        "keywords": per_poem,
        "keyword_ids": [np.array([index[ch] for ch in "".join(words)], dtype=np.int32) for words in per_poem],
    })
    counts = pd.Series(chosen, dtype=object).value_counts()
    report = {
        "poems": n, "with_keywords": int(sum(map(bool, per_poem))),
        "keywords": len(chosen), "words": int(sum(len(w) == 2 for w in chosen)),
        "distinct": len(counts), "candidate_terms": int(ok.sum()),
        "most_common": {k: int(c) for k, c in counts.head(50).items()},
        "settings": dict(keywords),
    }
    return table, report


def _without_chars_of_words(row: np.ndarray, col: np.ndarray, score: np.ndarray, codes: np.ndarray):
    """The (poem, term) candidates less each character that is part of a candidate word of its poem."""
    words = codes[col] >= _WORD
    span = max(len(codes), 1)
    inside = np.concatenate([row[words] * span + np.searchsorted(codes, codes[col[words]] // _WORD),
                             row[words] * span + np.searchsorted(codes, codes[col[words]] % _WORD)])
    drop = ~words & np.isin(row * span + col, inside)
    return row[~drop], col[~drop], score[~drop]
