"""The one digest the cache uses: BLAKE2b, 16 bytes, for file contents, code and JSON-like values."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def new_hasher():
    """An empty BLAKE2b-128 hasher (``update`` it, then ``hexdigest``)."""
    return hashlib.blake2b(digest_size=16)


def digest_json(value: Any) -> str:
    """Digest of a JSON-like value (keys sorted; anything else by its ``str``)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    h = new_hasher()
    h.update(text.encode("utf-8"))
    return h.hexdigest()
