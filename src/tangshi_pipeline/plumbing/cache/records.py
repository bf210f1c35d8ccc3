"""A node's cache record, ``data/.cache/nodes/<node>-<hash>.json``: what its last run saw and wrote.

A record holds ``node``, the four fingerprint parts (``code``, ``config``: digests; ``inputs``,
``params``: name → digest), ``outputs`` (name → path, content digest, version, as saved), the run
id, the duration, and ``fingerprint`` (the digest of the four parts, which a consumer of a memory
output compares with). A record that cannot be read as one is :class:`DamagedRecord`; one that
cannot be written (disk full) is a logged warning: cache files never fail a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from tangshi_pipeline import atomic

from .digest import digest_json

logger = logging.getLogger(__name__)

PARTS = ("code", "config", "inputs", "params")  # what the fingerprint is the digest of


class DamagedRecord(ValueError):
    """A node's cache record that cannot be read as one (not JSON, or JSON of the wrong shape)."""


def fingerprint(record: dict) -> str:
    return digest_json({k: record[k] for k in PARTS})


def _digest_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _outputs_problem(outputs: Any) -> str | None:
    if not isinstance(outputs, dict):
        return "outputs is not an object"
    for name, stored in outputs.items():
        if not (isinstance(stored, dict) and _digest_or_none(stored.get("digest"))
                and _digest_or_none(stored.get("version"))):
            return f"outputs[{name!r}] is not {{path, digest, version}}"
    return None


def record_problem(record: Any) -> str | None:
    """What is wrong with a node's cache record, or None when it has the shape the check reads."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    missing = [k for k in ("node", *PARTS, "outputs", "fingerprint") if k not in record]
    if missing:
        return "missing " + ", ".join(missing)
    wrong = [k for k in ("node", "code", "config", "fingerprint") if not isinstance(record[k], str)]
    if wrong:
        return ", ".join(wrong) + " not a string"
    for part in ("inputs", "params"):
        if not isinstance(record[part], dict) or not all(map(_digest_or_none, record[part].values())):
            return f"{part} is not an object of digests"
    return _outputs_problem(record["outputs"])


class Records:
    """The records of one cache folder (``<cache_dir>/nodes``)."""

    def __init__(self, cache_dir: Path):
        self.folder = cache_dir / "nodes"

    def path(self, node_name: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", node_name)
        return self.folder / f"{safe}-{hashlib.blake2b(node_name.encode(), digest_size=4).hexdigest()}.json"

    def load(self, node_name: str) -> dict | None:
        """The node's record; None when it has none; :class:`DamagedRecord` when it is unusable."""
        path = self.path(node_name)
        try:
            record = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DamagedRecord(f"{path}: {type(exc).__name__}: {exc}") from None
        problem = record_problem(record)
        if problem is not None:
            raise DamagedRecord(f"{path}: {problem}")
        return record if record["node"] == node_name else None

    def save(self, node_name: str, record: dict) -> None:
        """Write a record; a failure (disk full…) is logged, not raised: the node just re-runs."""
        path = self.path(node_name)
        try:
            atomic.write_json(path, record, sort_keys=True)
        except OSError as exc:
            logger.warning("Could not write the cache record %s (%s); the run goes on, and node "
                           "%s will run again next time", path, exc, node_name)

    def drop(self, node_name: str) -> None:
        path = self.path(node_name)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # a stale record left behind no longer matches the new outputs
            logger.warning("Could not remove the cache record %s (%s)", path, exc)
