"""The stage cache under stress: concurrent runs (the project lock), cache files that are damaged
or cannot be written, the project installed from a wheel, and runs that go without the cache.

In-process runs go through the project's SESSION_CLASS (``tests.test_cache.run``); the scenarios a
user meets at a shell run the real ``kedro`` command (or ``python -m tangshi_pipeline``) in the
throw-away project of ``tests/helpers.py``.
"""

from __future__ import annotations

import ast
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tangshi_pipeline import atomic
from tangshi_pipeline.plumbing.cache import CachedRunner
from tests.helpers import ROOT, kedro, kedro_env, lay_out_project, one_line
from tests.test_cache import DP, report, run

LOCK_WAIT_ENV = "TANGSHI_LOCK_WAIT"  # seconds a run waits for another run's lock
HOLD_LOCK = """
import sys
from tangshi_pipeline.plumbing.cache import project_lock
with project_lock(sys.argv[1], "a test holding the lock", wait_s=0):
    print("locked", flush=True)
    sys.stdin.readline()  # until the test says so (or dies)
"""


def kedro_run(cwd: Path, *args: str, **env: str) -> tuple[int, str]:
    """``kedro run <args>`` in ``cwd``: (exit code, output with whitespace runs folded)."""
    done = kedro(cwd, "run", *args, **env)
    return done.returncode, one_line(done)


def hold_lock(project_path: Path) -> subprocess.Popen:
    """Another process holding the project lock until a line on its stdin; returns once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(project_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=kedro_env())
    for line in holder.stdout:  # Kedro's start-up log lines come first
        if line.strip() == "locked":
            return holder
    raise AssertionError(f"the lock holder exited with {holder.wait()} before taking the lock")


def stop(holder: subprocess.Popen) -> None:
    if holder.poll() is None:
        holder.kill()
    holder.wait(timeout=30)


class ReleaseWhenWaiting(logging.Handler):
    """Lets the holder go as soon as the waiting run says it waits: a wait, whatever the timing."""

    def __init__(self, holder: subprocess.Popen):
        super().__init__()
        self.holder = holder

    def emit(self, record):
        if record.getMessage().startswith("Waiting up to"):
            self.holder.stdin.write("release\n")
            self.holder.stdin.flush()


def lock_file(project_path: Path) -> Path:
    return project_path / "data/.cache/run.lock"


def record_path(project_path: Path, node: str) -> Path:
    return next((project_path / "data/.cache/nodes").glob(f"{node}-*.json"))


# ------------------------------------------------------------------------ the project lock


def test_a_run_stops_while_another_holds_the_lock_naming_its_pid(project):
    holder = hold_lock(project.path)
    try:
        code, log = kedro_run(project.path, "--pipelines=data_processing", **{LOCK_WAIT_ENV: "0"})
    finally:
        stop(holder)
    assert code != 0
    assert f"pid {holder.pid} is running" in log and "a test holding the lock" in log
    assert "Wait for that run to finish" in log and LOCK_WAIT_ENV in log
    assert not (project.path / "data/02_intermediate/poems.parquet").exists()  # nothing ran


def test_a_lock_left_by_a_dead_process_is_taken_over(project):
    holder = hold_lock(project.path)
    os.kill(holder.pid, signal.SIGKILL)  # kill -9: the lock file stays, naming the dead pid
    holder.wait(timeout=30)
    assert json.loads(lock_file(project.path).read_text("utf-8"))["pid"] == holder.pid
    code, log = kedro_run(project.path, "--pipelines=data_processing", **{LOCK_WAIT_ENV: "0"})
    assert code == 0, log[-3000:]
    taken = json.loads(lock_file(project.path).read_text("utf-8"))
    assert taken["pid"] != holder.pid and "--pipelines=data_processing" in taken["command"]


def test_a_run_waits_for_the_lock_then_runs(project, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="tangshi_pipeline.plumbing.cache")
    monkeypatch.setenv(LOCK_WAIT_ENV, "60")
    holder = hold_lock(project.path)
    release = ReleaseWhenWaiting(holder)
    logging.getLogger("tangshi_pipeline.plumbing.cache").addHandler(release)
    try:
        assert run(project.path, "data_processing") == (DP, [])
    finally:
        logging.getLogger("tangshi_pipeline.plumbing.cache").removeHandler(release)
        stop(holder)
    assert f"Waiting up to 60 s for pid {holder.pid}" in caplog.text


def test_a_concurrent_run_with_other_parameters_is_stopped_before_the_record_write(project, monkeypatch):
    """The reported race: a default run is between saving clean's outputs and writing its record
    when a max_length=20 run starts. The second run must not get in."""
    second: list[tuple[int, str]] = []
    original = CachedRunner._write_record

    def second_run_meanwhile(self, node, *args, **kwargs):
        if node.name.endswith("clean") and not second:
            second.append(kedro_run(project.path, "--pipelines=data_processing",
                                    "--params=data_processing.max_length=20", **{LOCK_WAIT_ENV: "0"}))
        return original(self, node, *args, **kwargs)

    monkeypatch.setattr(CachedRunner, "_write_record", second_run_meanwhile)
    run(project.path, "data_processing")
    code, log = second[0]
    assert code != 0 and f"pid {os.getpid()} is running" in log, log[-3000:]
    monkeypatch.setattr(CachedRunner, "_write_record", original)
    assert run(project.path, "data_processing") == ([], DP)
    assert report(project)["settings"]["max_length"] == 80


def test_a_record_never_claims_bytes_the_node_did_not_write(project, monkeypatch, caplog):
    """A writer that takes no lock (a run with another runner, a script) replaces clean's outputs
    after clean saved them and before its record is written: no record may vouch for them."""
    run(project.path, "data_processing", params={"data_processing": {"max_length": 20}})
    primary = project.path / "data/03_primary"
    other_bytes = {p: p.read_bytes() for p in primary.iterdir() if p.is_file()}
    original = CachedRunner._write_record

    def overwritten_first(self, node, *args, **kwargs):
        if node.name.endswith("clean"):
            for path, data in other_bytes.items():
                path.write_bytes(data)
        return original(self, node, *args, **kwargs)

    monkeypatch.setattr(CachedRunner, "_write_record", overwritten_first)
    run(project.path, "data_processing")
    assert "changed on disk after the node saved them" in caplog.text
    monkeypatch.setattr(CachedRunner, "_write_record", original)
    ran, _ = run(project.path, "data_processing")
    assert "data_processing.clean" in ran
    assert report(project)["settings"]["max_length"] == 80


# ------------------------------------------------------------------------ damaged cache files


def _damaged_records(record: dict) -> dict[str, str]:
    return {
        "a list": "[]",
        "missing keys": json.dumps({"node": record["node"]}),
        "params entry a list": json.dumps({**record, "params": {k: ["x"] for k in record["params"]}}),
        "outputs a list": json.dumps({**record, "outputs": []}),
        "not JSON": '{"node": "cle',
    }


@pytest.mark.parametrize("damage", ["a list", "missing keys", "params entry a list", "outputs a list",
                                    "not JSON"])
def test_a_damaged_record_is_a_logged_cache_miss(project, caplog, damage):
    run(project.path, "data_processing")
    path = record_path(project.path, "data_processing.clean")
    path.write_text(_damaged_records(json.loads(path.read_text("utf-8")))[damage], "utf-8")
    ran, _ = run(project.path, "data_processing")
    assert ran == ["data_processing.clean"]  # its outputs come back byte-identical: its consumers stay cached
    assert "Cache record for node data_processing.clean is damaged" in caplog.text and "running it" in caplog.text
    assert run(project.path, "data_processing") == ([], DP)  # the record was written again


@pytest.mark.parametrize("index", ["a list", "an entry of the wrong shape"])
def test_a_damaged_file_index_is_ignored_and_rebuilt_even_with_force(project, caplog, index):
    from click.testing import CliRunner

    from tangshi_pipeline.cli import cli

    run(project.path, "data_processing")
    files = project.path / "data/.cache/files.json"
    entries = json.loads(files.read_text("utf-8"))
    damaged = [] if index == "a list" else {k: {"size": 1} for k in entries}
    files.write_text(json.dumps(damaged), "utf-8")
    result = CliRunner().invoke(cli, ["run", "--pipelines=data_processing", "--force"])
    assert result.exit_code == 0, repr(result.exception)
    assert f"Cache file index {files} is damaged" in caplog.text
    rebuilt = json.loads(files.read_text("utf-8"))
    assert isinstance(rebuilt, dict) and rebuilt and all(len(e) == 5 for e in rebuilt.values())


def _cache_disk_full(monkeypatch):
    """Writes under data/.cache fail as on a full disk (the error carries no path); returns the
    real writer, to put back."""
    real = atomic.write_json

    def write(path, payload, **dump_args):
        if ".cache" in Path(path).parts:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, payload, **dump_args)

    monkeypatch.setattr(atomic, "write_json", write)
    return real


def test_a_full_cache_disk_does_not_fail_a_run_that_skips_everything(project, monkeypatch, caplog):
    run(project.path, "data_processing")
    _cache_disk_full(monkeypatch)
    assert run(project.path, "data_processing") == ([], DP)
    files = project.path / "data/.cache/files.json"
    assert f"Could not write the cache file index {files} ([Errno 28] No space left" in caplog.text


def test_a_record_that_cannot_be_written_is_logged_and_the_node_reruns_next_time(project, monkeypatch,
                                                                              caplog):
    run(project.path, "data_processing")
    real = _cache_disk_full(monkeypatch)
    shorter = {"data_processing": {"max_length": 20}}
    ran, _ = run(project.path, "data_processing", params=shorter)
    assert ran == DP[1:]
    assert "Could not write the cache record" in caplog.text and "node data_processing.clean will run again" in caplog.text
    assert str(project.path / "data/.cache/nodes/data_processing.clean-") in caplog.text
    monkeypatch.setattr(atomic, "write_json", real)  # space again
    assert run(project.path, "data_processing", params=shorter)[0] == DP[1:]
    assert run(project.path, "data_processing", params=shorter) == ([], DP)


# ------------------------------------------------------------------------ runs without the cache


def test_a_plain_kedro_session_says_the_cache_is_off(project, caplog):
    project.run("data_processing")  # KedroSession.create(...).run(...): Kedro's documented API
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Stage cache off")]
    assert len(lines) == 1
    assert "settings.SESSION_CLASS.create" in lines[0] and "kedro run" in lines[0]


def test_a_cached_run_does_not_say_the_cache_is_off(project, caplog):
    run(project.path, "data_processing")
    assert "Stage cache off" not in caplog.text


def test_kedro_run_with_thread_runner_says_the_cache_is_off(project):
    code, log = kedro_run(project.path, "--pipelines=data_processing", "--runner=ThreadRunner")
    assert code == 0, log[-3000:]
    assert log.count("Stage cache off for this run (ThreadRunner)") == 1


# ------------------------------------------------------------------------ installed from a wheel

LOCATE_FRAME = """
import inspect, tangshi_pipeline
from tangshi_pipeline.pipelines.data_processing.pipeline import create_pipeline
node = next(n for n in create_pipeline().nodes if n.name.split(".")[-1] == "frame")
print(tangshi_pipeline.__file__, node.name, inspect.getsourcefile(node.func), node.func.__name__, sep="\\n")
"""


def _edit_function(source_file: Path, function: str) -> None:
    """Add a statement to ``function`` (before its last statement): new code, same behaviour."""
    text = source_file.read_text("utf-8")
    tree = ast.parse(text)
    body = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == function).body
    lines = text.splitlines(keepends=True)
    last = body[-1]
    lines.insert(last.lineno - 1, " " * last.col_offset + "pass  # edited after installation\n")
    source_file.write_text("".join(lines), "utf-8")


@pytest.fixture
def deployed(tmp_path):
    """`kedro package` a copy of the project and `pip install --no-deps --target` the wheel into a
    folder inside this Python installation (``sys.prefix``), where installed libraries live, as
    after `pip install dist/*.whl`; the folder is removed afterwards. Runs import it first with
    ``PYTHONPATH``."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "conf", source / "conf", ignore=shutil.ignore_patterns("local"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = kedro(source, "package")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel = next((source / "dist").glob("tangshi_pipeline-*.whl"))
    if not os.access(sys.prefix, os.W_OK):
        pytest.skip(f"cannot install into this Python installation ({sys.prefix} is read-only)")
    target = Path(tempfile.mkdtemp(prefix="test-deployed-", dir=sys.prefix))
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--target", str(target), str(wheel)], check=True, capture_output=True, timeout=300)
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_an_installed_wheel_reruns_a_node_edited_in_the_installed_copy(tmp_path, deployed):
    project = lay_out_project(tmp_path / "project")
    env = kedro_env(PYTHONPATH=str(deployed))
    located = subprocess.check_output([sys.executable, "-c", LOCATE_FRAME], cwd=project, env=env, text=True)
    package_file, node, source_file, function = located.strip().splitlines()[-4:]
    assert Path(package_file).is_relative_to(deployed)  # the installed copy, not the editable source
    assert Path(source_file).is_relative_to(deployed)

    def python_m_run() -> str:
        done = subprocess.run([sys.executable, "-m", "tangshi_pipeline", "--pipelines=data_processing"],
                              cwd=project, env=env, capture_output=True, text=True, timeout=300)
        log = one_line(done)
        assert done.returncode == 0, log[-3000:]
        return log

    python_m_run()
    _edit_function(Path(source_file), function)
    log = python_m_run()
    assert f"Cache miss for node {node}: code changed" in log
    assert "Skipping node" in log  # the untouched nodes stay cached
