"""Publishing files and folders atomically, the one way the project writes them, and the content
hash it records of them (:func:`sha256_of`).

Everything is written under a hidden temporary name beside its target and renamed into place, so
an interrupted write (Ctrl-C, ``kill -9``, a full disk) never leaves something that looks
complete: readers see the old file or folder, or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_file(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any, **dump_args: Any) -> None:
    """``payload`` as UTF-8 JSON at ``path`` (``dump_args`` go to :func:`json.dumps`)."""
    text = json.dumps(payload, **{"ensure_ascii": False, "indent": 1, **dump_args})
    write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def publish_folder(path: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``path``; when the block ends without an error it is
    renamed to ``path`` (an existing ``path`` is swapped out, then deleted), otherwise deleted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
