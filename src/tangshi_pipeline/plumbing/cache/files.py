"""Content digests of files and folders, remembered in ``data/.cache/files.json``.

A file's digest is reused while its (size, mtime, inode) are unchanged, and only when the file
was last modified well before it was hashed (a file written in the same instant as its hash could
change again without its mtime moving). A damaged index is ignored and rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tangshi_pipeline import atomic

from .digest import new_hasher

logger = logging.getLogger(__name__)

_TRUST_AFTER_NS = 2_000_000_000  # a file's cached digest is trusted once it is 2 s older than the hash


class FileIndex:
    """Content digests of files and folders, with a (size, mtime, inode) cache on disk."""

    def __init__(self, path: Path):
        self.path = path
        self._fresh: dict[str, str] = {}  # hashed during this run: no stat check needed
        self._entries, problem = _read_file_index(path)
        self._dirty = problem is not None  # a damaged index is rewritten at the end of the run
        if problem is not None:
            logger.warning("Cache file index %s is damaged (%s); ignoring it: files are hashed again "
                           "and the index is rebuilt", path, problem)

    def forget(self, path: Path) -> None:
        """``path`` is about to be (re)written: drop what is known about it and below it."""
        key = str(path.resolve())
        for known in [k for k in self._fresh if k == key or k.startswith(key + os.sep)]:
            del self._fresh[known]

    def digest(self, path: Path) -> str | None:
        """Digest of a file, or of a folder's relative names and file digests; None if absent."""
        path = path.resolve()
        if path.is_dir():
            h = new_hasher()
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = Path(root, name)
                    h.update(f"{full.relative_to(path).as_posix()}\0{self._file(full)}\0".encode())
            return "dir:" + h.hexdigest()
        if path.is_file():
            return self._file(path)
        return None

    def _file(self, path: Path) -> str:
        key = str(path)
        if key in self._fresh:
            return self._fresh[key]
        st = path.stat()
        entry = self._entries.get(key)
        if (entry and entry[:3] == [st.st_size, st.st_mtime_ns, st.st_ino]
                and entry[3] - st.st_mtime_ns > _TRUST_AFTER_NS):
            digest = entry[4]
        else:
            h = new_hasher()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            self._entries[key] = [st.st_size, st.st_mtime_ns, st.st_ino, time.time_ns(), digest]
            self._dirty = True
        self._fresh[key] = digest
        return digest

    def save(self) -> None:
        """Write the index; a failure (disk full…) is logged, not raised: it only costs re-hashing."""
        if not self._dirty:
            return
        live = {k: v for k, v in self._entries.items() if os.path.exists(k)}
        try:
            atomic.write_json(self.path, live, sort_keys=True)
        except OSError as exc:
            logger.warning("Could not write the cache file index %s (%s); the run goes on, and the "
                           "next run hashes its files again", self.path, exc)
            return
        self._dirty = False


def _index_entry_ok(entry: Any) -> bool:
    """One files.json entry: [size, mtime_ns, inode, hashed_at_ns, digest]."""
    return (isinstance(entry, list) and len(entry) == 5
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry[:4])
            and isinstance(entry[4], str))


def _read_file_index(path: Path) -> tuple[dict[str, list], str | None]:
    """(entries, None), or ({}, what is wrong) for an unreadable or wrongly shaped index."""
    try:
        entries = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return {}, f"{type(exc).__name__}: {exc}"
    if not isinstance(entries, dict):
        return {}, f"a JSON {type(entries).__name__}, not an object"
    bad = next((key for key, entry in entries.items() if not _index_entry_ok(entry)), None)
    if bad is not None:
        return {}, f"entry {bad!r} is not [size, mtime_ns, inode, hashed_at_ns, digest]"
    return entries, None
