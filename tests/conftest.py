"""Fixtures shared by every test: one torch thread, the shipped data parameters, a throw-away
Kedro project. The helpers they use are in ``tests/helpers.py``."""

from __future__ import annotations

import os

import pytest

from tests.helpers import Project, lay_out_project, shipped_params

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests use tiny models: one thread is faster, and a busy 2-core box does not thrash."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_params() -> dict:
    return shipped_params("data_processing")


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    from kedro.framework.startup import bootstrap_project

    root = lay_out_project(tmp_path / "project")
    monkeypatch.chdir(root)
    bootstrap_project(root)
    return Project(root)
