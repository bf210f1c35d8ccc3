"""Load what the studio needs once, through the project's Kedro catalog (no paths here).

The catalog of ``settings.SESSION_CLASS`` (the one ``kedro run`` uses, with ``--env``) gives the
model (the newest version, or the one pinned with ``--model-version``, as ``--load-versions``
does), ``vocab``, ``tone_lexicon``, ``rhyme_table``, ``vectors`` (training lines, for ``no_copy``
and copied-line flags), ``clean_poems`` (their titles and authors) and ``params:generate`` (the
defaults of a request).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import DatasetError
from kedro.io.core import VersionNotFoundError
from pydantic import ValidationError

from tangshi_pipeline.pipelines.generate.nodes import GenerationError
from tangshi_pipeline.poet.prosody import Prosody
from tangshi_pipeline.studio.poet import Poet, line_sources
from tangshi_pipeline.poet.vocab import Vocab

TRAIN = "run `kedro run --pipelines=training` (or `kedro run`) first"
PROCESS = "run `kedro run --pipelines=data_processing` first"


class StudioError(RuntimeError):
    """The studio cannot start; the message names what is missing and the command that makes it."""


def _load(catalog, name: str, remedy: str, version: str | None = None) -> Any:
    try:
        return catalog.load(name, version=version) if version else catalog.load(name)
    except DatasetError as exc:
        reason = str(exc).splitlines()[0].removeprefix(f"{name}: ").rstrip(".")
        raise StudioError(f"cannot load {name!r}: {reason} — {remedy}.") from None


def served_version(catalog, pinned: str | None) -> str:
    """The pinned model version, or the newest one."""
    dataset = catalog.get("model")
    if dataset is None:
        raise StudioError("the catalog has no dataset 'model' (conf/base/catalog_training.yml)")
    if pinned:
        return pinned
    try:
        return dataset.resolve_load_version()
    except VersionNotFoundError:
        raise StudioError(f"no trained model yet (the catalog's 'model' dataset has no version): {TRAIN}.") from None


def load_poet(project_path: Path, env: str | None = None, model_version: str | None = None,
              device: str = "cpu") -> tuple[Poet, list[dict[str, Any]]]:
    """The :class:`Poet` and the model versions (newest first), read once through the catalog."""
    from kedro.framework.project import settings
    from kedro.framework.startup import bootstrap_project

    from tangshi_pipeline.plumbing.model_versions import model_versions

    bootstrap_project(project_path)
    with settings.SESSION_CLASS.create(project_path=project_path, env=env) as session:
        catalog = session.load_context().catalog
        version = served_version(catalog, model_version)
        artifact = _load(catalog, "model", "`kedro models` lists the versions" if model_version else TRAIN, version)
        vocab = Vocab.from_json(_load(catalog, "vocab", PROCESS))
        prosody = Prosody.from_json(_load(catalog, "tone_lexicon", PROCESS), _load(catalog, "rhyme_table", PROCESS))
        sources = line_sources(_load(catalog, "vectors", PROCESS), _load(catalog, "clean_poems", PROCESS), vocab)
        defaults = _load(catalog, "params:generate", "restore conf/base/parameters_generate.yml")
        models = model_versions(catalog)
    try:
        poet = Poet(artifact, vocab, prosody, sources, defaults, version, device)
    except GenerationError as exc:
        raise StudioError(f"model {version}: {exc}") from None
    except ValidationError as exc:
        raise StudioError(f"the generate parameters (conf/*/parameters_generate.yml) are invalid: {exc}") from None
    return poet, models
