"""Hostile artifacts and interrupted training: untrusted files never execute, damaged files are
named, a killed run resumes, a failed write never becomes the latest version."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tangshi_pipeline.plumbing import datasets
from tangshi_pipeline.plumbing.datasets import ModelArtifact
from tangshi_pipeline.poet.artifact import Artifact, save_artifact
from tangshi_pipeline.poet.checkpoints import CheckpointError, CheckpointStore
from tangshi_pipeline.poet.model import CharRNN, ModelConfig
from tests.helpers import KEDRO, ROOT, kedro, kedro_env, one_line
from tests.helpers_models import save_model

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

    import tangshi_pipeline.poet.artifact as artifact_module
    monkeypatch.setattr(artifact_module, "save_artifact", disk_full)
    dataset = ModelArtifact(str(root), version=datasets.Version(None, None))
    with pytest.raises(Exception, match="No space left"):
        dataset.save(Artifact(CharRNN(ModelConfig(12))))
    after = ModelArtifact(str(root), version=datasets.Version(None, None))
    assert after.versions() == before
    assert after.load().model.config.vocab_size == 12
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temporary folder left


def test_kill_9_in_the_middle_of_training_then_rerun_resumes(project):
    project.run("data_processing")
    env = kedro_env()
    long_run = [KEDRO, "run", "--pipeline=training", "--params",
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

    rerun = kedro(project.path, "run", "--pipeline=training", "--params",
                  TINY + ",training.epochs=100000,training.max_minutes=0.02")
    log = one_line(rerun)
    assert rerun.returncode == 0, log[-2000:]
    assert "resuming from" in log and f"step-{steps[-1]:010d}" in log
    model = project.catalog().load("model")
    assert model.meta["training"]["steps"] >= steps[-1]


# ------------------------------------------------ model artifacts: integrity, hostile configs, broken versions

GENERATE_PARAMS = "generate.acrostic=日月"  # the fixture corpus has no 湖 (a default begin character)


def run_generate(project, load_versions: dict | None = None) -> None:
    """`kedro run --pipelines=generate` in-process, through the session class the CLI uses."""
    from kedro.framework.project import settings

    params = {"generate": {"begin_words": list("日月")}}
    with settings.SESSION_CLASS.create(project_path=project.path, runtime_params=params) as session:
        session.run(pipeline_names=["generate"], load_versions=load_versions)


def kedro_generate(project, *options: str) -> subprocess.CompletedProcess:
    """`kedro run --pipelines=generate` as a user types it."""
    return kedro(project.path, "run", "--pipeline=generate", f"--params={GENERATE_PARAMS}", *options)


def flip_data_bytes(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of a safetensors file's data region (same size)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    middle = start + (len(data) - start) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text("utf-8"))
    edit(config)
    (folder / "config.json").write_text(json.dumps(config), "utf-8")


def poem_versions(project) -> list[str]:
    folder = project.path / "data/07_model_output/generated_poems.json"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def trained(project):
    """The throw-away project after data processing, with two saved model versions (older, newer)."""
    project.run("data_processing")
    save_model(project.path, seed=1)
    save_model(project.path, seed=2)
    project.versions = sorted(p.name for p in (project.path / "data/06_models/poet").iterdir())
    return project


def model_folder(project, version: str) -> Path:
    return project.path / "data/06_models/poet" / version / "poet"


def test_the_weights_hash_is_recorded_in_config_json(tmp_path):
    folder = model_version(tmp_path / "poet")
    config = json.loads((folder / "config.json").read_text("utf-8"))
    assert config["weights_sha256"] == hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()


def test_tampered_weights_stop_kedro_run_generate_naming_the_file_and_the_version_to_pin(trained):
    older, newer = trained.versions
    weights = model_folder(trained, newer) / "weights.safetensors"
    size = weights.stat().st_size
    flip_data_bytes(weights)
    assert weights.stat().st_size == size
    result = kedro_generate(trained)
    log = one_line(result)
    assert result.returncode != 0, log[-2000:]
    assert str(weights) in log and "sha256" in log
    assert f"--load-versions=model:{older}" in log
    assert poem_versions(trained) == []  # no poems from the tampered model
    pinned = kedro_generate(trained, f"--load-versions=model:{older}")  # the advice works
    assert pinned.returncode == 0, (pinned.stdout + pinned.stderr)[-2000:]


def test_a_model_written_before_hashes_loads_with_a_warning_that_it_cannot_be_verified(tmp_path, caplog):
    folder = model_version(tmp_path / "poet")
    edit_config(folder, lambda config: config.pop("weights_sha256", None))
    with caplog.at_level(logging.WARNING, logger="tangshi_pipeline"):
        artifact = ModelArtifact(str(tmp_path / "poet"), version=datasets.Version(None, None)).load()
    assert artifact.model.config.hidden_dim == 8 and "weights_sha256" not in artifact.meta
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(folder / "weights.safetensors") in w and "cannot be verified" in w for w in warnings), warnings


class Built(Exception):
    """Raised by the spy instead of building a model: proof that the config was not checked first."""


@pytest.mark.parametrize("hidden_dim, message", [
    (100_000, r"config.json: architecture .*hidden_dim.: 100000.* over the limit"),
    (12_000, r"config.json: architecture .*over the limit"),
    (4_000, r"weights.safetensors does not match the architecture in config.json"),
])
def test_a_hostile_config_fails_fast_without_building_the_model(trained, monkeypatch, hidden_dim, message):
    older, newer = trained.versions
    edit_config(model_folder(trained, newer), lambda config: config["architecture"].update(hidden_dim=hidden_dim))

    def spy(self, config):
        raise Built(f"CharRNN built for {config} before the config was checked")

    import tangshi_pipeline.poet.model as model_module
    monkeypatch.setattr(model_module.CharRNN, "__init__", spy)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(Exception, match=message) as raised:
        run_generate(trained)
    assert not isinstance(raised.value, Built)
    assert f"--load-versions=model:{older}" in str(raised.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: nothing big allocated


@pytest.mark.parametrize("architecture, key", [
    ({"hidden_dim": "128"}, "architecture.hidden_dim"),
    ({"num_layers": 0}, "architecture.num_layers"),
    ({"embedding_dim": True}, "architecture.embedding_dim"),
    ({"dropout": 1.5}, "architecture.dropout"),
    ({"cell": "transformer"}, "architecture.cell"),
    ({"vocab_size": 10**12}, "architecture.vocab_size"),
])
def test_invalid_sizes_in_config_json_are_named(tmp_path, architecture, key):
    folder = model_version(tmp_path / "poet")
    edit_config(folder, lambda config: config["architecture"].update(architecture))
    with pytest.raises(Exception, match=re.escape(f"{folder / 'config.json'}: {key}")):
        ModelArtifact(str(tmp_path / "poet"), version=datasets.Version(None, None)).load()


def kedro_models(project, *options: str):
    from click.testing import CliRunner

    from tangshi_pipeline.cli import cli

    return CliRunner().invoke(cli, ["models", *options], env={"COLUMNS": "400"})


def test_kedro_models_shows_a_config_that_is_a_json_list_as_broken(trained):
    older, newer = trained.versions
    (model_folder(trained, newer) / "config.json").write_text("[1, 2]", "utf-8")
    result = kedro_models(trained, "--json")
    assert result.exit_code == 0, result.output
    rows = {row["version"]: row for row in json.loads(result.output)}
    assert "config.json is not a JSON object" in rows[newer]["error"] and rows[older]["error"] is None
    table = kedro_models(trained)
    assert table.exit_code == 0, table.output
    assert newer in table.output and "broken" in table.output


def test_a_version_whose_poet_is_a_file_is_broken_not_missing(trained):
    older, newer = trained.versions
    folder = model_folder(trained, newer)
    shutil.rmtree(folder)
    folder.write_text("not a model", "utf-8")
    rows = {row["version"]: row for row in json.loads(kedro_models(trained, "--json").output)}
    assert "is a file, not a model folder" in rows[newer]["error"]
    with pytest.raises(Exception) as raised:
        run_generate(trained)
    message = str(raised.value)
    assert "does not exist" not in message
    assert f"{folder} is a file, not a model folder" in message
    assert f"kedro run --pipelines=generate --load-versions=model:{older}" in message


@pytest.mark.parametrize("leave", [[], ["config.json"], ["weights.safetensors"]])
def test_an_incomplete_newer_version_stops_generate_with_the_version_to_pin(trained, leave):
    older, newer = trained.versions
    folder = model_folder(trained, newer)
    for path in folder.iterdir():
        if path.name not in leave:
            path.unlink()
    with pytest.raises(Exception) as raised:
        run_generate(trained)
    message = str(raised.value)
    assert f"model version {newer} is broken" in message
    assert f"kedro run --pipelines=generate --load-versions=model:{older}" in message
    assert poem_versions(trained) == []
    run_generate(trained, load_versions={"model": older})  # the advice works
    assert len(poem_versions(trained)) == 1


def test_an_empty_newer_version_folder_is_not_a_version(trained):
    older, newer = trained.versions
    (trained.path / "data/06_models/poet/9999-01-01T00.00.00.000Z").mkdir()  # e.g. a save killed before publishing
    run_generate(trained)
    assert len(poem_versions(trained)) == 1
    rows = json.loads(kedro_models(trained, "--json").output)
    assert [row["version"] for row in rows] == [newer, older]


def test_a_broken_pinned_version_names_the_newest_good_one(trained):
    older, newer = trained.versions
    (model_folder(trained, older) / "weights.safetensors").unlink()
    with pytest.raises(Exception) as raised:
        run_generate(trained, load_versions={"model": older})
    assert f"model version {older} is broken" in str(raised.value)
    assert f"--load-versions=model:{newer}" in str(raised.value)


def test_when_no_version_is_usable_the_advice_is_to_retrain(trained):
    for version in trained.versions:
        (model_folder(trained, version) / "config.json").write_text("{", "utf-8")
    with pytest.raises(Exception) as raised:
        run_generate(trained)
    assert "No other version is usable" in str(raised.value)
    assert "kedro run --pipelines=training" in str(raised.value)


def test_a_model_saved_by_the_helper_leaves_the_next_version_a_later_name(project, monkeypatch):
    # With a clock that ticks every 20 ms (as CI's did), a Kedro session created right after the
    # helper saved a model got the same version name: "Save path ... must not exist"
    from datetime import datetime, timedelta, timezone

    import kedro.io.core

    class CoarseClock(datetime):
        @classmethod
        def now(cls, tz=None):
            t = datetime.now(tz or timezone.utc)
            return t - timedelta(microseconds=t.microsecond % 20_000)

    project.run("data_processing")
    monkeypatch.setattr(kedro.io.core, "datetime", CoarseClock)
    save_model(project.path, seed=1)
    save_model(project.path, seed=2)
    versions = sorted(p.name for p in (project.path / "data/06_models/poet").iterdir())
    assert len(versions) == 2 and kedro.io.core.generate_timestamp() > versions[-1]
