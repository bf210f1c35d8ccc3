"""Training under attack: the documented multi-rank command, non-finite weights, tampered or
unwritable checkpoints, a killed launcher. Each case ends with one clear message (or a clean run)
and no checkpoint or model that would mislead the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tangshi_pipeline.poet.artifact import Artifact
from tests.helpers import KEDRO, kedro, kedro_env, one_line

TINY = ("training.embedding_dim=8,training.hidden_dim=16,training.batch_size=4,training.device=cpu,"
        "training.threads=1,training.learning_rate=0.01")


def test_kedro_run_with_world_size_2_trains_and_saves_a_model(project):
    project.run("data_processing")
    proc = kedro(project.path, "run", "--pipeline=training",
                 f"--params=training.world_size=2,training.max_minutes=0.3,training.epochs=1,{TINY}")
    assert proc.returncode == 0, one_line(proc)[-3000:]
    model = project.catalog().load("model")
    assert isinstance(model, Artifact)
    assert model.meta["training"]["world_size"] == 2 and model.meta["training"]["steps"] > 0
    assert (project.path / "data/08_reporting/training_curve.png").is_file()


def checkpoints(project) -> list[Path]:
    return sorted((project.path / "data/06_models/checkpoints").glob("step-*"))


def test_learning_rate_inf_saves_no_checkpoint_or_model_and_a_rerun_recovers(project):
    project.run("data_processing")
    # one batch per epoch: every step's loss is finite (it is computed before the update), the weights are not
    blowup = f"--params={TINY},training.batch_size=64,training.learning_rate=inf,training.checkpoint_every=1," \
             "training.epochs=3,training.max_minutes=null"
    proc = kedro(project.path, "run", "--pipeline=training", blowup)
    log = one_line(proc)
    assert proc.returncode != 0
    assert "weights or optimizer state became non-finite" in log and "there is none yet" in log, log[-3000:]
    assert not checkpoints(project) and not (project.path / "data/06_models/poet").exists()

    rerun = kedro(project.path, "run", "--pipeline=training",
                  f"--params={TINY},training.batch_size=64,training.epochs=3")
    assert rerun.returncode == 0, one_line(rerun)[-3000:]  # the advice works: nothing poisoned to resume from
    model = project.catalog().load("model")
    assert all(bool(t.isfinite().all()) for t in model.model.state_dict().values())


def test_a_changed_checkpoint_is_refused_naming_the_file(project):
    project.run("data_processing")
    assert kedro(project.path, "run", "--pipeline=training", f"--params={TINY},training.epochs=1").returncode == 0
    state = checkpoints(project)[-1] / "state.safetensors"
    raw = bytearray(state.read_bytes())
    raw[-4:] = bytes(b ^ 0xFF for b in raw[-4:])  # flip bytes in the data region: same size, still parses
    state.write_bytes(bytes(raw))
    proc = kedro(project.path, "run", "--pipeline=training", f"--params={TINY},training.epochs=2")
    log = one_line(proc)
    assert proc.returncode != 0
    expected = f"{state.parent.name}: state.safetensors does not match the sha256 recorded in state.json"
    assert expected in log, log[-3000:]
    assert "delete that folder" in log and "training.resume=false" in log


def test_disk_full_while_checkpointing_names_the_folder_through_the_cli_session(project, monkeypatch):
    import errno

    import safetensors.torch
    from kedro.framework.project import settings

    project.run("data_processing")

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    params = {"training": {"embedding_dim": 8, "hidden_dim": 16, "batch_size": 4, "device": "cpu", "threads": 1,
                           "epochs": 1, "max_minutes": None}}
    with settings.SESSION_CLASS.create(project_path=project.path, runtime_params=params) as session:
        try:
            session.run(pipeline_names=["training"])
        except Exception as exc:  # noqa: BLE001 — the message is what the user sees
            message = str(exc)
        else:
            message = "the run succeeded"
    folder = project.path / "data/06_models/checkpoints"
    assert f"into {Path('data/06_models/checkpoints')}" in message or f"into {folder}" in message, message
    assert "No space left on device" in message and "disk is full" in message
    assert not list(folder.iterdir())  # no checkpoint, no hidden temporary folder
    assert not (project.path / "data/06_models/poet").exists()


def test_a_stale_temporary_checkpoint_folder_is_removed_by_the_next_run(project):
    project.run("data_processing")
    folder = project.path / "data/06_models/checkpoints"
    stale = folder / ".step-0000000003.x1y2.tmp"  # left by a save that was kill -9'd
    stale.mkdir(parents=True)
    (stale / "state.safetensors").write_bytes(b"\0" * 32)
    for path in (stale / "state.safetensors", stale):
        os.utime(path, (1_600_000_000, 1_600_000_000))
    assert kedro(project.path, "run", "--pipeline=training", f"--params={TINY},training.epochs=1").returncode == 0
    assert not stale.exists() and checkpoints(project)


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, ...]; None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int, marker: str) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (_stat(int(entry.name)) or ["", "0"])[1] == str(pid):
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    kids.append(int(entry.name))
            except OSError:
                pass
    return kids


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # an exited orphan may stay a zombie where nothing reaps it


def kill_launcher_and_watch_ranks(project, command: list[str], marker: str) -> list[int]:
    """Start a long training with ``command``; once it has written a checkpoint, ``kill -9`` the
    launcher only. Returns the ranks still running 25 s later (all are killed before returning): a
    rank stuck in a collective is ended 10 s after it noticed, the rest is slack for a loaded machine."""
    env = kedro_env()
    launcher = subprocess.Popen(command, cwd=project.path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    ranks: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (checkpoints(project) and len(ranks) == 2):
            assert launcher.poll() is None, "the training stopped by itself"
            ranks = _children(launcher.pid, marker)
            time.sleep(0.2)
        assert len(ranks) == 2, f"ranks not found: {ranks}"
        launcher.kill()  # SIGKILL to the launcher alone, as `kill -9 <pid>`
        launcher.wait(timeout=30)
        deadline = time.time() + 25
        while time.time() < deadline and any(map(_running, ranks)):
            time.sleep(0.2)
        return [pid for pid in ranks if _running(pid)]
    finally:
        for pid in [launcher.pid, *ranks]:  # torchrun starts its ranks in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


LONG = f"{TINY},training.epochs=100000,training.max_minutes=null,training.checkpoint_every=1"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the ranks in /proc")
def test_kill_9_of_torchrun_stops_its_ranks(project):
    project.run("data_processing")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "tangshi_pipeline.plumbing.torchrun", f"--params={LONG}"]
    assert kill_launcher_and_watch_ranks(project, command, "tangshi_pipeline.plumbing.torchrun") == []


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the ranks in /proc")
def test_kill_9_of_kedro_run_stops_the_ranks_it_spawned(project):
    project.run("data_processing")
    command = [KEDRO, "run", "--pipeline=training", f"--params={LONG},training.world_size=2"]
    assert kill_launcher_and_watch_ranks(project, command, "spawn_main") == []


# A rank whose Ctrl-C handling hangs in C holding the GIL, as gloo's process-group destructor can
# (pytorch/pytorch#56297): no Python thread runs again, so only a kernel timer can end it.
HANGING_RANK = """
import ctypes, signal, time
from tangshi_pipeline.poet.distributed import stop_with_parent
def hang(*_):
    while True:
        ctypes.PyDLL(None).pause()  # PyDLL: called holding the GIL
signal.signal(signal.SIGINT, hang)
stop_with_parent(grace_s=1, interval_s=0.1)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""
LAUNCHER = """
import subprocess, sys
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
assert rank.stdout.readline() == "ready\\n"
print(rank.pid, flush=True)
rank.wait()
"""


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the rank in /proc")
def test_a_rank_hung_holding_the_gil_is_still_ended_after_its_launcher_dies():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, HANGING_RANK], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    rank = 0
    try:
        rank = int(launcher.stdout.readline())
        launcher.kill()
        launcher.wait(timeout=30)
        deadline = time.time() + 20  # noticed within 0.1 s, ended 1 s later: the rest is slack
        while time.time() < deadline and _running(rank):
            time.sleep(0.1)
        assert not _running(rank), "the rank outlived its launcher"
    finally:
        for pid in filter(None, [launcher.pid, rank]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# An interrupted rank whose unwinding would free an object whose destructor hangs holding the GIL,
# as freeing DDP's reducer after an interrupted all-reduce can (gloo's process-group destructor)
INTERRUPTED_RANK = """
import ctypes
from tangshi_pipeline.poet.distributed import exit_when_interrupted
class Reducer:
    def __del__(self):
        while True:
            ctypes.PyDLL(None).pause()  # PyDLL: called holding the GIL
def train():
    reducer = Reducer()
    raise KeyboardInterrupt  # the training saved its state and re-raised
with exit_when_interrupted():
    train()
"""


def test_an_interrupted_rank_exits_without_freeing_what_could_hang():
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_RANK], capture_output=True, timeout=60)
    assert done.returncode == 130, done.stderr.decode()[-2000:]
