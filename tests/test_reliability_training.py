"""Training under attack: the documented multi-rank command, non-finite weights, tampered or
unwritable checkpoints, a killed launcher. Each case ends with one clear message (or a clean run)
and no checkpoint or model that would mislead the next run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tangshi_pipeline.model import Artifact

KEDRO = str(Path(sys.executable).with_name("kedro"))
TINY = ("training.embedding_dim=8,training.hidden_dim=16,training.batch_size=4,training.device=cpu,"
        "training.threads=1,training.learning_rate=0.01")


def kedro(project, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`kedro run …` as a user types it, in the throw-away project (the CLI's own session class)."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "400"}
    return subprocess.run([KEDRO, "run", *args], cwd=project.path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


def test_kedro_run_with_world_size_2_trains_and_saves_a_model(project):
    project.run("data_processing")
    proc = kedro(project, "--pipeline=training",
                 f"--params=training.world_size=2,training.max_minutes=0.3,training.epochs=1,{TINY}")
    assert proc.returncode == 0, one_line(proc)[-3000:]
    model = project.catalog().load("model")
    assert isinstance(model, Artifact)
    assert model.meta["training"]["world_size"] == 2 and model.meta["training"]["steps"] > 0
    assert (project.path / "data/08_reporting/training_curve.png").is_file()
