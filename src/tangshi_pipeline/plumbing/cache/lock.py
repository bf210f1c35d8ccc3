"""The project lock, ``data/.cache/run.lock``: one run that writes at a time.

``fcntl.flock`` on a file, so the OS drops the lock when its holder exits or dies. A second run
waits up to ``TANGSHI_LOCK_WAIT`` seconds (10), then stops with :class:`ProjectLocked` naming the
holder's pid and command, which the holder writes into the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on POSIX: runs go without the project lock
    fcntl = None

logger = logging.getLogger(__name__)

CACHE_DIR = Path("data") / ".cache"  # relative to the project (under the environment's output_root)
LOCK_FILE = "run.lock"
LOCK_WAIT_ENV = "TANGSHI_LOCK_WAIT"
DEFAULT_LOCK_WAIT_S = 10.0


class ProjectLocked(RuntimeError):
    """Another run of the project holds its lock (``data/.cache/run.lock``)."""


def lock_wait_seconds() -> float:
    """How long a run waits for another run's lock: ``TANGSHI_LOCK_WAIT`` seconds, else 10."""
    text = os.environ.get(LOCK_WAIT_ENV, "").strip()
    try:
        return max(0.0, float(text)) if text else DEFAULT_LOCK_WAIT_S
    except ValueError:
        logger.warning("%s=%r is not a number of seconds; waiting %g s", LOCK_WAIT_ENV, text,
                       DEFAULT_LOCK_WAIT_S)
        return DEFAULT_LOCK_WAIT_S


def _command_line() -> str:
    """This process's command line, short: ``kedro run --pipeline=training``, ``python -m …``."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv) or ["python"]
    if len(argv) > 1 and not argv[1].startswith("-"):
        argv = argv[1:]  # a script (kedro, pytest): its name says more than the interpreter's
    elif argv[1:2] == ["-c"]:
        argv[2:3] = ["..."]  # the program text itself is too long to say
    argv[0] = Path(argv[0]).name
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def _holder(path: Path) -> dict:
    """What the lock file says about its holder (pid, command, purpose, since); {} if unreadable."""
    try:
        holder = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _locked_message(path: Path, holder: dict, waited_s: float) -> str:
    pid = holder.get("pid", "unknown")
    what = holder.get("command", "an unknown command")
    if holder.get("purpose"):
        what += f" ({holder['purpose']})"
    since = f", since {holder['since']}" if holder.get("since") else ""
    stop = f"stop it (kill {pid})" if isinstance(pid, int) else "stop it"
    return (f"Another run of this project is in progress: pid {pid} is running {what}{since}, and "
            f"holds the project lock {path}. Waited {waited_s:.0f} s. Wait for that run to finish and "
            f"run again, or {stop} if it is stuck; set {LOCK_WAIT_ENV}=<seconds> to wait longer "
            "(a lock left by a process that died is released by the OS and taken over).")


def _write_holder(handle, path: Path, purpose: str) -> None:
    record = {"pid": os.getpid(), "command": _command_line(), "purpose": purpose,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record, ensure_ascii=False))
        handle.flush()
    except OSError as exc:  # disk full: the lock holds all the same, the message lacks the pid
        logger.warning("Could not write the holder into the project lock %s (%s)", path, exc)


def _acquire(handle, path: Path, wait_s: float) -> bool:
    """Take the exclusive lock, waiting up to ``wait_s``; False when it cannot be used at all."""
    start = time.monotonic()
    announced = False
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as exc:  # a file system without locks
            logger.warning("Could not take the project lock %s (%s); running without it", path, exc)
            return False
        waited = time.monotonic() - start
        if waited >= wait_s:
            raise ProjectLocked(_locked_message(path, _holder(path), waited))
        if not announced:
            holder = _holder(path)
            logger.info("Waiting up to %g s for pid %s (%s) to finish: it holds the project lock %s",
                        wait_s, holder.get("pid", "unknown"), holder.get("command", "?"), path)
            announced = True
        time.sleep(min(0.2, wait_s - waited))


def _open_lock_file(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
    except OSError as exc:  # disk full or read-only: a run that skips everything must still work
        logger.warning("Could not open the project lock %s (%s); running without it", path, exc)
        return None


@contextlib.contextmanager
def cache_lock(lock_path: Path, purpose: str, wait_s: float | None = None):
    """Hold the exclusive lock file ``lock_path`` (``fcntl.flock``) for a run that writes.

    A second holder waits up to ``wait_s`` (default: :func:`lock_wait_seconds`), then gets
    :class:`ProjectLocked` naming the holder's pid and command, which the holder writes into the
    file. The OS releases the lock when its holder exits or dies, so a lock file left behind by a
    dead process does not block: it is simply taken over. The file itself is never deleted."""
    handle = _open_lock_file(lock_path) if fcntl is not None else None
    if handle is None:
        yield
        return
    with handle:  # closing the file releases the lock
        if _acquire(handle, lock_path, lock_wait_seconds() if wait_s is None else wait_s):
            _write_holder(handle, lock_path, purpose)
        yield


def project_lock(project_path: str | Path, purpose: str, wait_s: float | None = None):
    """The project's run lock, ``<project>/data/.cache/run.lock``, as a context manager; every
    cached run holds it. ``purpose`` says what the holder does (it appears in the message a
    second run gets)::

        with project_lock(project_path, "distributed training"):
            ...
    """
    return cache_lock(Path(project_path) / CACHE_DIR / LOCK_FILE, purpose, wait_s)
