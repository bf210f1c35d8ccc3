"""Shared fixtures: a tiny corpus and a throw-away Kedro project to run pipelines in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.fixtures.poems import CLASSIC_POEMS_TXT, write_corpus

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests use tiny models: one thread is faster, and a busy 2-core box does not thrash."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shipped_params(section: str) -> dict:
    """The ``section`` of conf/base/parameters_<section>.yml: the project's only source of defaults."""
    return yaml.safe_load((ROOT / f"conf/base/parameters_{section}.yml").read_text("utf-8"))[section]


@pytest.fixture
def data_params() -> dict:
    return shipped_params("data_processing")


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    return write_corpus(tmp_path / "tang")


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


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    from kedro.framework.startup import bootstrap_project

    root = lay_out_project(tmp_path / "project")
    monkeypatch.chdir(root)
    bootstrap_project(root)
    return Project(root)
