"""The saved versions of the versioned ``model`` dataset, newest first, each checked the way a load
checks it: what ``kedro models`` lists and the studio's ``/api/models`` returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import DatasetError


def model_versions(catalog, dataset_name: str = "model") -> list[dict[str, Any]]:
    """Versions of a versioned model dataset, newest first: version, path, what config.json says
    and ``error`` (None, or why the version cannot be loaded: every load check is run)."""
    dataset = catalog.get(dataset_name)
    if dataset is None:
        raise DatasetError(f"no dataset {dataset_name!r} in the catalog")
    if not hasattr(dataset, "list_versions") or not getattr(dataset, "_version", None):
        raise DatasetError(f"dataset {dataset_name!r} is not versioned (set `versioned: true`)")
    return [_version_row(version, Path(str(dataset._get_versioned_path(version))))
            for version in dataset.list_versions(full_path=False)]


def _version_row(version: str, folder: Path) -> dict[str, Any]:
    from tangshi_pipeline.poet.artifact import SHA256, ArtifactError, read_artifact, read_config

    row = {"version": version, "path": str(folder), "metrics": {}, "vocab_fingerprint": None,
           "architecture": None, "verified": False, "error": None}
    try:
        config = read_config(folder)
        metrics = config.get("metrics")
        row.update(metrics=metrics if isinstance(metrics, dict) else {}, architecture=config.get("architecture"),
                   vocab_fingerprint=config.get("vocab_fingerprint"), verified=SHA256 in config)
        read_artifact(folder)
    except ArtifactError as exc:
        row.update(verified=False, error=str(exc))
    return row
