"""What the cache needs to know about a catalog dataset: is it a parameter or a memory dataset,
is it versioned, which local file or folder it reads or writes, and its catalog description."""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any

from kedro.io import AbstractVersionedDataset, MemoryDataset


def is_param(name: str) -> bool:
    """``parameters`` or a ``params:<key>`` input: a value from the configuration, not a dataset."""
    return name == "parameters" or name.startswith("params:")


def is_memory(dataset: Any) -> bool:
    return isinstance(dataset, MemoryDataset) or type(dataset).__name__.endswith("MemoryDataset")


def is_versioned(dataset: Any) -> bool:
    return isinstance(dataset, AbstractVersionedDataset) and bool(getattr(dataset, "_version", None))


def _plain_path(value: Any) -> Path | None:
    if isinstance(value, (str, PurePath)) and str(value):
        text = str(value)
        if "://" in text:
            if not text.startswith("file://"):
                return None
            text = text[len("file://"):]
        return Path(text)
    return None


def local_path(dataset: Any) -> Path | None:
    """The local file or folder behind a (non-versioned) dataset, or None when it has none."""
    if getattr(dataset, "_protocol", "file") not in ("file", "local", None):
        return None
    for attr in ("_filepath", "_path", "filepath", "path"):
        path = _plain_path(getattr(dataset, attr, None))
        if path is not None:
            return path
    return None


def load_path(dataset: Any) -> Path | None:
    """What a load reads: for a versioned dataset the version to be loaded (None when none exists)."""
    if is_versioned(dataset):
        try:
            return Path(str(dataset._get_load_path()))
        except Exception:  # no version yet
            return None
    return local_path(dataset)


def save_path(dataset: Any) -> Path | None:
    """What a save writes: for a versioned dataset the version this run saves."""
    if is_versioned(dataset):
        try:
            return Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
        except Exception:
            return None
    return local_path(dataset)


def latest_version(dataset: Any) -> str | None:
    try:
        versions = dataset.list_versions(full_path=False)
    except Exception:
        return None
    return versions[0] if versions else None


def describe(dataset: Any) -> dict:
    """The dataset's own description (type, path, load/save arguments), without the version."""
    try:
        described = dict(dataset._describe())
    except Exception:
        described = {"repr": re.sub(r" at 0x[0-9a-f]+", "", repr(dataset))}
    described.pop("version", None)
    return described
