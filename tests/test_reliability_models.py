"""Hostile artifacts and interrupted training: untrusted files never execute, damaged files are
named, a killed run resumes, a failed write never becomes the latest version."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tangshi_pipeline import datasets
from tangshi_pipeline.datasets import CheckpointError, CheckpointStore, ModelArtifact
from tangshi_pipeline.model import Artifact, CharRNN, ModelConfig, save_artifact

ROOT = Path(__file__).resolve().parents[1]
TINY = ("training.embedding_dim=8,training.hidden_dim=16,training.batch_size=2,training.device=cpu,"
        "training.learning_rate=0.01")


class Payload:
    """Unpickling this object runs `touch <marker>`: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))
    assert not marker.exists()


def model_version(root: Path, version: str = "2026-01-01T00.00.00.000Z") -> Path:
    folder = root / version / "poet"
    save_artifact(folder, Artifact(CharRNN(ModelConfig(12, hidden_dim=8, embedding_dim=4)), {"vocab_fingerprint": "x"}))
    return folder


def test_pickle_planted_as_model_weights_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    folder = model_version(tmp_path / "poet")
    plant_pickle(folder / "weights.safetensors", marker)
    torch.save({"x": Payload(marker)}, folder.parent / "model.pt")  # a classic checkpoint beside it
    with pytest.raises(Exception, match=r"weights.safetensors is truncated or corrupted"):
        ModelArtifact(str(tmp_path / "poet"), version=datasets.Version(None, None)).load()
    assert not marker.exists()


def test_pickle_planted_as_checkpoint_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    plant_pickle(tmp_path / "ckpt/step-0000000007/state.safetensors", marker)
    (tmp_path / "ckpt/step-0000000007/state.json").write_text("{}", "utf-8")
    with pytest.raises(CheckpointError, match=r"step-0000000007 is unreadable"):
        CheckpointStore(tmp_path / "ckpt").latest()
    assert not marker.exists()


def test_project_never_calls_torch_load_without_weights_only():
    calls = []
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("benchmarks/*.py")]:
        for line in path.read_text("utf-8").splitlines():
            if re.search(r"torch\.load\(", line) and "weights_only=True" not in line:
                calls.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert calls == []


@pytest.mark.parametrize("cut", [0, 7, 300])
def test_truncated_weights_are_named(tmp_path, cut):
    folder = model_version(tmp_path / "poet")
    data = (folder / "weights.safetensors").read_bytes()
    (folder / "weights.safetensors").write_bytes(data[:cut] if cut else b"")
    with pytest.raises(Exception, match=re.escape(str(folder / "weights.safetensors"))):
        ModelArtifact(str(tmp_path / "poet"), version=datasets.Version(None, None)).load()


def test_weights_of_another_architecture_are_refused(tmp_path):
    folder = model_version(tmp_path / "poet")
    other = tmp_path / "other"
    save_artifact(other, Artifact(CharRNN(ModelConfig(12, cell="gru", hidden_dim=8, embedding_dim=4))))
    shutil.copy(other / "weights.safetensors", folder / "weights.safetensors")
    with pytest.raises(Exception, match="does not match the architecture"):
        ModelArtifact(str(tmp_path / "poet"), version=datasets.Version(None, None)).load()


def test_a_write_that_fails_part_way_never_becomes_the_latest_version(tmp_path, monkeypatch):
    root = tmp_path / "poet"
    model_version(root)
    before = ModelArtifact(str(root), version=datasets.Version(None, None)).versions()

    def disk_full(folder, artifact):
        (folder / "weights.safetensors").write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    import tangshi_pipeline.model as model_module
    monkeypatch.setattr(model_module, "save_artifact", disk_full)
    dataset = ModelArtifact(str(root), version=datasets.Version(None, None))
    with pytest.raises(Exception, match="No space left"):
        dataset.save(Artifact(CharRNN(ModelConfig(12))))
    after = ModelArtifact(str(root), version=datasets.Version(None, None))
    assert after.versions() == before
    assert after.load().model.config.vocab_size == 12
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temporary folder left


def test_kill_9_in_the_middle_of_training_then_rerun_resumes(project):
    project.run("data_processing")
    kedro = str(Path(sys.executable).with_name("kedro"))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "400"}
    long_run = [kedro, "run", "--pipeline=training", "--params",
                TINY + ",training.epochs=100000,training.max_minutes=null,training.checkpoint_every=1"]
    proc = subprocess.Popen(long_run, cwd=project.path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = project.path / "data/06_models/checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(checkpoints.glob("step-*"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9: no handler runs
    proc.wait(timeout=30)
    steps = sorted(int(p.name[5:]) for p in checkpoints.glob("step-*"))
    assert steps, "no checkpoint was written before the kill"
    assert not (project.path / "data/06_models/poet").exists() or not any((project.path / "data/06_models/poet").iterdir())

    rerun = subprocess.run([kedro, "run", "--pipeline=training", "--params",
                            TINY + ",training.epochs=100000,training.max_minutes=0.02"],
                           cwd=project.path, env=env, capture_output=True, text=True, timeout=300)
    log = " ".join((rerun.stdout + rerun.stderr).split())
    assert rerun.returncode == 0, log[-2000:]
    assert "resuming from" in log and f"step-{steps[-1]:010d}" in log
    model = project.catalog().load("model")
    assert model.meta["training"]["steps"] >= steps[-1]
