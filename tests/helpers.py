"""Shared test helpers (``conftest.py`` holds only fixtures): the project root, the shipped
parameters, an in-memory catalog for pipeline tests, a throw-away Kedro project on disk for the
tests of the project's wiring, files and cache, and `kedro` run as a user types it.

The tiny models, vocabulary and prosody of the poet's tests are in ``tests/helpers_models.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from kedro.io import DataCatalog

from tests.fixtures.poems import CLASSIC_POEMS_TXT, write_corpus

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))


def shipped_params(section: str) -> dict:
    """The ``section`` of conf/base/parameters_<section>.yml: the project's only source of defaults."""
    return yaml.safe_load((ROOT / f"conf/base/parameters_{section}.yml").read_text("utf-8"))[section]


def nest(params: dict | None) -> dict | None:
    """{"a.b": 1} → {"a": {"b": 1}}, as `kedro run --params=a.b=1` does."""
    if params is None:
        return None
    nested: dict = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def memory_catalog(datasets: dict, params: dict) -> DataCatalog:
    """A catalog of in-memory datasets holding ``datasets``, and ``params`` as Kedro's context feeds
    them to a run: ``params:<section>`` and ``params:<section>.<key>`` for every key below it."""
    catalog = DataCatalog()
    for name, data in datasets.items():
        catalog[name] = data

    def feed(key: str, value) -> None:
        catalog[f"params:{key}"] = value
        if isinstance(value, dict):
            for sub, inner in value.items():
                feed(f"{key}.{sub}", inner)

    for section, values in params.items():
        feed(section, values)
    return catalog


def kedro_env(**extra: str) -> dict[str, str]:
    """The environment of a `kedro` subprocess: telemetry off, a wide terminal (no wrapped lines)."""
    return {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "COLUMNS": "400", **extra}


def kedro(root: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`kedro <args>` as a user types it, in the project at ``root``, output captured; ``env`` adds
    to :func:`kedro_env`."""
    return subprocess.run([KEDRO, *args], cwd=root, env=kedro_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """A subprocess's output (stdout, then stderr) with every run of whitespace folded to one space."""
    return " ".join((proc.stdout + proc.stderr).split())


class Project:
    """A copy of the project's conf in a temp dir, with the tiny corpus as data/01_raw."""

    def __init__(self, path: Path):
        self.path = path

    def run(self, pipeline_name: str | None = None, env: str | None = None,
            params: dict | None = None, **kwargs) -> dict:
        """Run a pipeline through a KedroSession; ``params`` may use dotted keys like --params."""
        from kedro.framework.session import KedroSession

        with KedroSession.create(project_path=self.path, env=env, runtime_params=nest(params)) as session:
            return session.run(pipeline_names=[pipeline_name] if pipeline_name else None, **kwargs)

    def catalog(self, env: str | None = None):
        from kedro.framework.session import KedroSession

        with KedroSession.create(project_path=self.path, env=env) as session:
            return session.load_context().catalog


def lay_out_project(root: Path) -> Path:
    """A throw-away Kedro project at ``root``: the project's conf (no local), pyproject.toml,
    .telemetry, the data layers and the fixture corpus (chinese-poetry layout and a poems.txt)."""
    shutil.copytree(ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf/local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / name, root / name)
    (root / "src").mkdir()  # the package itself is installed (editable) in the venv
    for layer in ("01_raw", "02_intermediate", "03_primary", "05_model_input", "06_models",
                  "07_model_output", "08_reporting"):
        (root / "data" / layer).mkdir(parents=True)
    write_corpus(root / "data/01_raw/tang")
    (root / "data/01_raw/poems.txt").write_text(CLASSIC_POEMS_TXT, "utf-8", newline="")
    return root
