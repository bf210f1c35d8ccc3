"""Data processing: raw corpus → poems table → clean poems → framed poems → vocabulary → vectors,
and from the clean poems the tone lexicon and the rhyme table (build_prosody).

Every node is a pure function of its inputs and the ``data_processing`` parameters. Each poem that
is dropped is counted under the first reason that applies, in this order: a duplicate id, empty
after whitespace removal, a forbidden character, a start/end token inside the text, too short,
too long, an exact duplicate of an earlier poem's text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import opencc
import pandas as pd

from tangshi_pipeline.poet.params import DataProcessingParams, parse
from tangshi_pipeline.poet.prosody import build_rhyme_table, build_tone_lexicon, read_pingshui
from tangshi_pipeline.poet.vocab import Vocab

_WHITESPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate: JSON's "\ud800" escape, not text
_PARTITION = re.compile(r"^(poems|strains)/poet\.tang\.(\d+)$")
CLASSIC_SEPARATOR = ":"  # "title:content"; content is what follows the LAST colon


class CorpusFormatError(ValueError):
    """The raw corpus cannot be read; the message names the partition or line."""


def _example(row_id: str, title: str, text: str) -> dict[str, str]:
    return {"id": row_id, "title": title, "text": text[:80]}


def _summary(dropped: dict) -> str:
    return ", ".join(f"{reason}: {entry['count']}" for reason, entry in dropped.items()) or "no poems"


def _count(log: dict, reason: str, example: dict | None) -> None:
    """Count one unusable line under ``reason``; the first one seen is kept as the example."""
    log.setdefault(reason, {"count": 0, "example": example})["count"] += 1


# --------------------------------------------------------------------------------------- flatten


def _check_poems(records: Any) -> None:
    if not isinstance(records, list):
        raise CorpusFormatError(f"expected a JSON list of poems, got {type(records).__name__}")
    for i, poem in enumerate(records):
        if not isinstance(poem, dict):
            raise CorpusFormatError(f"record {i}: expected an object, got {type(poem).__name__}")
        for field in ("id", "author", "title"):
            if not isinstance(poem.get(field), str):
                raise CorpusFormatError(
                    f"record {i} (id {poem.get('id')!r}): field {field!r} must be a string, got "
                    f"{'nothing' if field not in poem else repr(poem[field])}"
                )
        lines = poem.get("paragraphs")
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise CorpusFormatError(
                f"record {i} (id {poem['id']!r}): 'paragraphs' must be a list of strings, got {lines!r:.60}"
            )


def _check_strains(records: Any) -> None:
    if not isinstance(records, list):
        raise CorpusFormatError(f"expected a JSON list, got {type(records).__name__}")
    for i, item in enumerate(records):
        if not (isinstance(item, dict) and isinstance(item.get("id"), str)
                and isinstance(item.get("strains"), list)
                and all(isinstance(s, str) for s in item["strains"])):
            raise CorpusFormatError(f"record {i}: expected {{'id': str, 'strains': [str, …]}}")


def _lone_surrogate(records: list[dict], fields: tuple[str, ...]) -> str:
    """Where the first lone surrogate is: the record, the field and (for a list) the line."""
    for i, record in enumerate(records):
        for field in fields:
            values = record[field] if isinstance(record[field], list) else [record[field]]
            for line, value in enumerate(values, start=1):
                if m := _SURROGATE.search(value):
                    where = f"{field!r} (line {line})" if isinstance(record[field], list) else repr(field)
                    return (f"record {i} (id {record['id']!r}): field {where} holds a lone surrogate "
                            f"{m.group()!r} at character {m.start() + 1}, which is not Unicode text")
    return "a lone surrogate"  # not reached: the caller found one


def _check_unicode(records: list[dict], values: list[str], fields: tuple[str, ...]) -> None:
    """Every string read must be encodable (UTF-8): one encode of them all, the search only on failure."""
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        raise CorpusFormatError(_lone_surrogate(records, fields)) from None


def _poem_rows(records: Any) -> list[tuple[str, str, str, str]]:
    """(id, author, title, text) per poem; on any malformed record, the precise problem."""
    try:
        rows = [(r["id"], r["author"], r["title"], r["paragraphs"]) for r in records]
        ok = isinstance(records, list) and all(
            type(i) is str and type(a) is str and type(t) is str and type(p) is list for i, a, t, p in rows
        )
        rows = [(i, a, t, "".join(p)) for i, a, t, p in rows] if ok else rows
    except (TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        _check_poems(records)  # raises CorpusFormatError naming the record and field
    _check_unicode(records, [value for row in rows for value in row], ("id", "author", "title", "paragraphs"))
    return rows


def _strain_rows(records: Any) -> dict[str, str]:
    """poem id → tone pattern (lines joined)."""
    try:
        tones = {r["id"]: "".join(r["strains"]) for r in records}
        ok = isinstance(records, list) and all(type(r["strains"]) is list for r in records)
    except (TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        _check_strains(records)
    _check_unicode(records, [*tones, *tones.values()], ("id", "strains"))
    return tones


def _load_partitions(partitions: dict[str, Callable[[], Any]], kind: str, convert, skip_bad: bool,
                     skipped: list[dict]) -> list[tuple[str, Any]]:
    """Load and convert the ``kind`` ('poems' or 'strains') partitions in numeric order."""
    names = sorted(
        (int(m.group(2)), key) for key in partitions if (m := _PARTITION.match(key)) and m.group(1) == kind
    )
    loaded = []
    for _, key in names:
        try:
            rows = convert(partitions[key]())
        except Exception as exc:  # a broken file: JSON syntax (DatasetError) or schema
            problem = str(exc) if isinstance(exc, CorpusFormatError) else str(exc.__cause__ or exc).splitlines()[0]
            if not skip_bad:
                raise CorpusFormatError(
                    f"raw corpus partition '{key}.json': {problem}. Re-fetch the corpus "
                    f"(delete data/01_raw/tang, then `make data`), fix the file, or set "
                    f"data_processing.skip_bad_partitions: true to skip bad partitions."
                ) from None
            skipped.append({"partition": f"{key}.json", "problem": problem})
            continue
        loaded.append((key, rows))
    return loaded


def _flatten_chinese_poetry(partitions: dict[str, Callable[[], Any]], p: DataProcessingParams):
    skipped: list[dict] = []
    poem_parts = _load_partitions(partitions, "poems", _poem_rows, p.skip_bad_partitions, skipped)
    strain_parts = _load_partitions(partitions, "strains", _strain_rows, p.skip_bad_partitions, skipped)
    if not poem_parts:
        raise CorpusFormatError(
            "raw corpus has no readable poem partitions (poems/poet.tang.<N>.json): run `make data` "
            "or check the raw_corpus path in conf/base/catalog.yml."
        )
    tones = {pid: tone for _, part in strain_parts for pid, tone in part.items()}
    ids, authors, titles, texts, sources = [], [], [], [], []
    for key, rows in poem_parts:
        for pid, author, title, text in rows:
            ids.append(pid), authors.append(author), titles.append(title), texts.append(text)
        sources.extend([key] * len(rows))
    aligned = [tones.get(pid) for pid in ids]
    misaligned = 0
    for i, (text, tone) in enumerate(zip(texts, aligned)):
        if tone is not None and len(tone) != len(text):
            aligned[i], misaligned = None, misaligned + 1
    poems = pd.DataFrame({"id": ids, "author": authors, "title": titles, "text": texts,
                          "tones": aligned, "source": sources})
    report = {
        "source": "chinese-poetry",
        "poem_partitions": len(poem_parts),
        "strains_partitions": len(strain_parts),
        "skipped_partitions": skipped,
        "poems": len(poems),
        "with_tones": len(poems) - int(poems["tones"].isna().sum()),
        "tones_misaligned": misaligned,
    }
    return poems, report


def _decode_classic(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CorpusFormatError(
            f"poems.txt is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}) "
            f"cannot be decoded. Convert the file to UTF-8 (e.g. `iconv -f GB18030 -t UTF-8`)."
        ) from None


def _lines(text: str) -> list[str]:
    """Split on ``\n`` and ``\r\n`` only, as ``grep -n`` and editors count lines: a form feed,
    U+2028 or another character ``str.splitlines`` also breaks on stays inside its line."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it does not start another
    return [line.removesuffix("\r") for line in lines]


def _flatten_classic(text: str):
    rows = {"id": [], "author": [], "title": [], "text": [], "tones": [], "source": []}
    unusable: dict[str, dict] = {}
    lines = _lines(text.lstrip("\ufeff"))
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            _count(unusable, "blank_line", None)
            continue
        title, sep, content = line.rpartition(CLASSIC_SEPARATOR)
        if not sep:
            _count(unusable, "no_separator", {"line": number, "text": line[:80]})
            continue
        if not content.strip():
            _count(unusable, "empty_content", {"line": number, "text": line[:80]})
            continue
        digest = hashlib.blake2b(line.encode("utf-8"), digest_size=8).hexdigest()
        rows["id"].append(f"classic-{digest}")
        rows["author"].append("")
        rows["title"].append(title.strip())
        rows["text"].append(content)
        rows["tones"].append(None)
        rows["source"].append(f"poems.txt:{number}")
    poems = pd.DataFrame(rows)
    report = {"source": "classic poems.txt", "lines": len(lines), "poems": len(poems), "unusable_lines": unusable}
    return poems, report


def flatten_corpus(raw_corpus: dict[str, Callable[[], Any]] | bytes | str, params: dict) -> tuple[pd.DataFrame, dict]:
    """Raw corpus → one row per poem (id, author, title, text, tones, source) and an ingest report.

    ``raw_corpus`` is either the chinese-poetry partitions (``poems/poet.tang.<N>`` and
    ``strains/poet.tang.<N>``, aligned by poem id) or, in the ``classic`` environment, the bytes
    (UTF-8, BOM allowed) of a ``title:content`` poems.txt.
    """
    p = parse(DataProcessingParams, "data_processing", params)
    if isinstance(raw_corpus, bytes):
        raw_corpus = _decode_classic(raw_corpus)
    if isinstance(raw_corpus, str):
        return _flatten_classic(raw_corpus)
    return _flatten_chinese_poetry(raw_corpus, p)


# ----------------------------------------------------------------------------------------- clean


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


def clean_poems(poems: pd.DataFrame, ingest_report: dict, params: dict) -> tuple[pd.DataFrame, dict]:
    """Traditional → Simplified, whitespace removed, classic filters, duplicates dropped.

    Each dropped poem is counted under the first reason of ``DROP_REASONS`` that applies, and the
    first poem dropped for each reason is kept as its example.
    """
    p = parse(DataProcessingParams, "data_processing", params)
    try:
        converter = opencc.OpenCC(p.opencc_config)
    except Exception as exc:
        raise ValueError(f"data_processing.opencc_config = {p.opencc_config!r}: OpenCC cannot load it ({exc})") from None

    stripped = [_strip_whitespace(t, g) for t, g in zip(poems["text"].tolist(), poems["tones"].tolist())]
    text = pd.Series(_convert(converter, [t for t, _ in stripped]), dtype="string")
    tones = pd.Series([g for _, g in stripped], dtype="string")
    titles = _convert(converter, [_WHITESPACE.sub(" ", t).strip() for t in poems["title"].tolist()])
    authors = _convert(converter, poems["author"].tolist())
    length = text.str.len().to_numpy()
    tones_lost = tones.notna() & (tones.str.len() != text.str.len())
    tones = tones.mask(tones_lost)

    def contains(chars) -> np.ndarray:
        return text.str.contains("|".join(re.escape(c) for c in chars), regex=True).to_numpy(dtype=bool)

    conditions = [
        poems["id"].duplicated().to_numpy(),
        length == 0,
        contains(p.drop_if_contains),
        contains([p.start_token, p.end_token]),
        length < p.min_length,
        length > p.max_length,
    ]
    reason = np.select(conditions, DROP_REASONS[:-1], default="")
    if p.dedupe:
        survivors = text[reason == ""]
        reason[survivors.index[survivors.duplicated(keep="first").to_numpy()]] = "duplicate_text"

    dropped: dict[str, dict] = {}
    for name in DROP_REASONS:
        where = np.flatnonzero(reason == name)
        if len(where):
            i = where[0]
            dropped[name] = {"count": len(where), "example": _example(poems["id"].iat[i], titles[i], text.iat[i])}
    if "forbidden_character" in dropped:
        bad = text[reason == "forbidden_character"]
        counts = {c: int(bad.str.contains(c, regex=False).sum()) for c in p.drop_if_contains}
        dropped["forbidden_character"]["by_character"] = dict(
            sorted(((c, n) for c, n in counts.items() if n), key=lambda kv: -kv[1]))

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
        "settings": p.model_dump(include={"opencc_config", "drop_if_contains", "min_length", "max_length", "dedupe"}),
    }
    return clean, report


def build_prosody(clean_poems: pd.DataFrame, params: dict) -> tuple[dict, dict]:
    """The tone lexicon from the clean poems' aligned tone marks, and the level-tone rhyme groups
    of the 平水韵 table converted with the corpus's OpenCC config (see ``tangshi_pipeline.poet.prosody``)."""
    p = parse(DataProcessingParams, "data_processing", params)
    lexicon = build_tone_lexicon(clean_poems["text"].tolist(), clean_poems["tones"].tolist())
    table, source = read_pingshui()
    return lexicon, build_rhyme_table(table, opencc.OpenCC(p.opencc_config).convert, source)


# ------------------------------------------------------------------------- frame, vocab, vectors


def frame_poems(clean_poems: pd.DataFrame, params: dict) -> pd.DataFrame:
    """Wrap each poem in the start and end tokens and sort by length (then id, for stability)."""
    p = parse(DataProcessingParams, "data_processing", params)
    framed = pd.DataFrame({"id": clean_poems["id"], "text": p.start_token + clean_poems["text"] + p.end_token})
    framed["length"] = framed["text"].str.len().astype("int32")
    return framed.sort_values(["length", "id"], kind="stable", ignore_index=True)


def build_vocab(framed_poems: pd.DataFrame, params: dict) -> dict:
    """Frequency-ordered vocabulary with the special tokens first; saved as JSON."""
    p = parse(DataProcessingParams, "data_processing", params)
    return Vocab.build(framed_poems["text"].tolist(), p.start_token, p.end_token, p.min_count).to_json()


def _split_of(ids: pd.Series, p: DataProcessingParams) -> np.ndarray:
    """train/val/test by a salted hash of each poem id: stable whatever else is in the corpus."""
    u = np.array([
        int.from_bytes(hashlib.blake2b(f"{p.split_salt}:{i}".encode(), digest_size=8).digest(), "big")
        for i in ids
    ], dtype=np.float64) / 2.0**64
    return np.where(u < p.split.train, "train", np.where(u < p.split.train + p.split.val, "val", "test"))


def vectorize(framed_poems: pd.DataFrame, vocab: dict, params: dict) -> tuple[pd.DataFrame, dict]:
    """Token ids (list<int32>) per framed poem, with its split."""
    p = parse(DataProcessingParams, "data_processing", params)
    v = Vocab.from_json(vocab)
    values, offsets = v.encode_many(framed_poems["text"].tolist())
    vectors = pd.DataFrame({
        "id": framed_poems["id"].to_numpy(),
        "split": _split_of(framed_poems["id"], p),
        "length": np.diff(offsets).astype(np.int32),
        "ids": np.split(values, offsets[1:-1]),
    })
    summary = {
        split: {"poems": int((vectors["split"] == split).sum()),
                "tokens": int(vectors.loc[vectors["split"] == split, "length"].sum())}
        for split in ("train", "val", "test")
    }
    summary["vocab_size"] = len(v)
    summary["unknown_tokens"] = int((values == 1).sum())
    return vectors, summary
