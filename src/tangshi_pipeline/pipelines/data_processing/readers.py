"""Reading the two raw corpus formats into one row per poem, for the flatten node.

* chinese-poetry (the default): JSON partitions ``poems/poet.tang.<N>`` (id, author, title,
  paragraphs) and ``strains/poet.tang.<N>`` (the tone pattern of each poem, aligned by id).
* the classic homework file (the ``classic`` environment): one ``title:content`` poem per line,
  UTF-8 (BOM allowed); unusable lines are counted, not fatal.

Every malformed file, record or line gets one message naming it (:class:`CorpusFormatError`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import pandas as pd

_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate: JSON's "\ud800" escape, not text
_PARTITION = re.compile(r"^(poems|strains)/poet\.tang\.(\d+)$")
CLASSIC_SEPARATOR = ":"  # "title:content"; content is what follows the LAST colon


class CorpusFormatError(ValueError):
    """The raw corpus cannot be read; the message names the partition or line."""


def _count(log: dict, reason: str, example: dict | None) -> None:
    """Count one unusable line under ``reason``; the first one seen is kept as the example."""
    log.setdefault(reason, {"count": 0, "example": example})["count"] += 1


# -------------------------------------------------------------------------------- chinese-poetry


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


def read_chinese_poetry(partitions: dict[str, Callable[[], Any]], skip_bad: bool) -> tuple[pd.DataFrame, dict]:
    """The poem partitions (with their tone patterns where aligned) as one table, and a report."""
    skipped: list[dict] = []
    poem_parts = _load_partitions(partitions, "poems", _poem_rows, skip_bad, skipped)
    strain_parts = _load_partitions(partitions, "strains", _strain_rows, skip_bad, skipped)
    if not poem_parts:
        raise CorpusFormatError(
            "raw corpus has no readable poem partitions (poems/poet.tang.<N>.json): run `make data` "
            "or check the path of the raw_corpus dataset in the catalog."
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


# ------------------------------------------------------------------------------ classic poems.txt


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


def read_classic(data: bytes | str) -> tuple[pd.DataFrame, dict]:
    """The poems of a ``title:content`` file as one table, and a report of the unusable lines."""
    text = _decode_classic(data) if isinstance(data, bytes) else data
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
