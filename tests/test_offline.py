"""A normal run reaches no network: telemetry is off in the committed project, and a run in a
network namespace with nothing but loopback (a user offline) succeeds as usual."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import KEDRO, ROOT


def test_telemetry_consent_is_false_in_the_committed_project():
    assert yaml.safe_load((ROOT / ".telemetry").read_text("utf-8")) == {"consent": False}


def _can_isolate_network() -> bool:
    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_isolate_network(), reason="cannot create a network namespace here (unshare -n)")
def test_data_processing_runs_with_no_network_at_all(project):
    env = {k: v for k, v in os.environ.items() if k != "KEDRO_DISABLE_TELEMETRY"}  # rely on .telemetry
    result = subprocess.run(["unshare", "-n", KEDRO, "run", "--pipeline=data_processing"], cwd=project.path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (project.path / "data/05_model_input/vectors.parquet").is_file()
