"""Content-addressed stage cache: `kedro run` skips a node whose code, parameters and inputs are
unchanged since the run that produced its current outputs.

How it plugs in (Kedro extension points only, Kedro itself is not patched):

* ``CachedSession`` (``SESSION_CLASS`` in settings.py) gives every run that would use Kedro's
  default ``SequentialRunner`` a ``CachedRunner`` instead: ``kedro run`` (with any of Kedro's
  filters: ``--pipelines``, ``--nodes``, ``--from-nodes``, ``--params``, ``--env``,
  ``--load-versions``…) and ``SESSION_CLASS.create(...).run()`` from Python. A run without the
  cache (Kedro's plain ``KedroSession``, ``--runner=ThreadRunner``/``ParallelRunner``) says so in
  one log line (``CacheNotice``, a hook in settings.py).
* ``CachedRunner`` is a ``SequentialRunner`` that decides, node by node in topological order and
  just before the node would run, whether it is up to date. Deciding late gives *early cutoff*: a
  node that re-runs and writes byte-identical outputs does not make its consumers re-run.
* ``kedro run --force`` (project ``cli.py``) or ``TANGSHI_FORCE_RUN=1`` runs every node and
  refreshes the records.
* A cached run holds the project lock ``data/.cache/run.lock`` (``fcntl.flock``, so the OS drops
  it when the holder dies): a second one waits up to ``TANGSHI_LOCK_WAIT`` seconds (10), then
  stops with :class:`ProjectLocked` naming the holder's pid and command. Other writers can take
  it with :func:`project_lock`.

A node's fingerprint has four parts, each stored (with its digest) in
``data/.cache/nodes/<node>.json``, written atomically after the node ran and its outputs were
saved:

``code``
    The node function's source and, transitively, the source of every project function, class
    and module it references by a global name (walking the code objects' names, closures and
    default values), plus constants those names bind to. "Project" = the project's package
    (``tangshi_pipeline``, Kedro's ``PACKAGE_NAME``) wherever it is installed — an installed wheel
    too — and any other module whose file is not inside the Python installation or site-packages
    (test modules).
    Limits: library code is identified by name and version only (a torch upgrade does not
    invalidate the cache: use ``--force``); code reached only dynamically (``getattr`` with a
    computed name, ``importlib``) or through an attribute of an object rather than a global name
    is not seen; so is anything a node reads outside the catalog (files, environment variables,
    time, randomness without a seed parameter) — the project's rules forbid that in nodes.
``params``
    The parameters the node *read* in the run that produced its outputs. A ``params:<section>``
    input whose section has a schema (``params.SCHEMAS``) is given to the node as an instance of
    that pydantic model which records the fields the node reads (``parse()`` returns it as is);
    any whole-object access (``model_dump()`` without ``include``, ``repr``, ``__dict__`` …)
    counts as reading every field. Because a deterministic node that reads the same values
    follows the same path, comparing only the recorded fields is sound (the rule build systems with
    dynamic dependencies use). Any other parameter input counts as a whole value.
``inputs``
    For a persisted dataset: the content digest (BLAKE2b) of its file or folder (for a versioned
    dataset: the version that will be loaded, so ``--load-versions`` changes it). Digests are
    cached per file by (size, mtime, inode) in ``data/.cache/files.json`` and trusted only when the
    file was last modified well before it was hashed. For a memory dataset: the fingerprint of the
    node that produces it.
    A dataset whose class sets ``cache_role = "state"`` (``TrainingCheckpoints``) is the node's own
    resumable state, not an input: its content is left out, so a finished training run is up to
    date while an interrupted one (no record) re-runs and resumes from its checkpoint.
``config``
    The catalog description of every input and output dataset (type, path, load/save arguments,
    without the version) and the code of project dataset classes.

A node is skipped ("Skipping node X: up to date") only when all four parts match, every persisted
output exists with the content digest recorded when the node wrote it (for a versioned output:
its latest version is the one this node wrote), and no memory output is needed: a node whose
outputs are consumed in memory is run (on demand) as soon as one of its consumers runs, and a node
with a memory output nobody in the run consumes always runs.

A record describes the bytes on disk: the outputs are hashed as soon as the node has saved them
and hashed again just before the record is written; if another process changed them meanwhile,
no record is kept (logged) and the node runs again next time. Cache files are an optimisation,
never a reason to fail: a damaged record (not JSON, or the wrong shape) is a logged cache miss, a
damaged ``files.json`` is ignored and rebuilt, and a record or index that cannot be written (disk
full) is a logged warning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import shlex
import sys
import sysconfig
import tempfile
import time
import types
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import kedro.framework.project as kedro_project
from kedro.framework.hooks import hook_impl
from kedro.framework.session import KedroSession
from kedro.io import AbstractVersionedDataset, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import SequentialRunner
from kedro.runner.task import Task
from pydantic import BaseModel

try:
    import fcntl
except ImportError:  # not on POSIX: runs go without the project lock
    fcntl = None

logger = logging.getLogger(__name__)

CACHE_DIR = Path("data") / ".cache"
FORCE_ENV = "TANGSHI_FORCE_RUN"
LOCK_FILE = "run.lock"
LOCK_WAIT_ENV = "TANGSHI_LOCK_WAIT"
DEFAULT_LOCK_WAIT_S = 10.0
ALL = "*"
_TRUST_AFTER_NS = 2_000_000_000  # a file's cached digest is trusted once it is 2 s older than the hash


def _hasher():
    return hashlib.blake2b(digest_size=16)


def digest_json(value: Any) -> str:
    """Digest of a JSON-like value (keys sorted; anything else by its ``str``)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def force_requested() -> bool:
    return os.environ.get(FORCE_ENV, "").strip().lower() not in ("", "0", "false", "no")


# ------------------------------------------------------------------------------ project lock


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


# ------------------------------------------------------------------------------ file content


class FileIndex:
    """Content digests of files and folders, with a (size, mtime, inode) cache on disk."""

    def __init__(self, path: Path):
        self.path = path
        self._fresh: dict[str, str] = {}  # hashed during this run: no stat check needed
        self._entries, problem = _read_file_index(path)
        self._dirty = problem is not None  # a damaged index is rewritten at the end of the run
        if problem is not None:
            logger.warning("Cache file index %s is damaged (%s); ignoring it: files are hashed again "
                           "and the index is rebuilt", path, problem)

    def forget(self, path: Path) -> None:
        """``path`` is about to be (re)written: drop what is known about it and below it."""
        key = str(path.resolve())
        for known in [k for k in self._fresh if k == key or k.startswith(key + os.sep)]:
            del self._fresh[known]

    def digest(self, path: Path) -> str | None:
        """Digest of a file, or of a folder's relative names and file digests; None if absent."""
        path = path.resolve()
        if path.is_dir():
            h = _hasher()
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = Path(root, name)
                    h.update(f"{full.relative_to(path).as_posix()}\0{self._file(full)}\0".encode())
            return "dir:" + h.hexdigest()
        if path.is_file():
            return self._file(path)
        return None

    def _file(self, path: Path) -> str:
        key = str(path)
        if key in self._fresh:
            return self._fresh[key]
        st = path.stat()
        entry = self._entries.get(key)
        if (entry and entry[:3] == [st.st_size, st.st_mtime_ns, st.st_ino]
                and entry[3] - st.st_mtime_ns > _TRUST_AFTER_NS):
            digest = entry[4]
        else:
            h = _hasher()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            self._entries[key] = [st.st_size, st.st_mtime_ns, st.st_ino, time.time_ns(), digest]
            self._dirty = True
        self._fresh[key] = digest
        return digest

    def save(self) -> None:
        """Write the index; a failure (disk full…) is logged, not raised: it only costs re-hashing."""
        if not self._dirty:
            return
        live = {k: v for k, v in self._entries.items() if os.path.exists(k)}
        try:
            write_json_atomic(self.path, live)
        except OSError as exc:
            logger.warning("Could not write the cache file index %s (%s); the run goes on, and the "
                           "next run hashes its files again", self.path, exc)
            return
        self._dirty = False


def _index_entry_ok(entry: Any) -> bool:
    """One files.json entry: [size, mtime_ns, inode, hashed_at_ns, digest]."""
    return (isinstance(entry, list) and len(entry) == 5
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry[:4])
            and isinstance(entry[4], str))


def _read_file_index(path: Path) -> tuple[dict[str, list], str | None]:
    """(entries, None), or ({}, what is wrong) for an unreadable or wrongly shaped index."""
    try:
        entries = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return {}, f"{type(exc).__name__}: {exc}"
    if not isinstance(entries, dict):
        return {}, f"a JSON {type(entries).__name__}, not an object"
    bad = next((key for key, entry in entries.items() if not _index_entry_ok(entry)), None)
    if bad is not None:
        return {}, f"entry {bad!r} is not [size, mtime_ns, inode, hashed_at_ns, digest]"
    return entries, None


# ------------------------------------------------------------------------------ code


def _library_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(sysconfig.get_paths()[name])
        except KeyError:
            pass
    return tuple(sorted({os.path.realpath(r) + os.sep for r in roots if r}))


_LIB_ROOTS = _library_roots()


def _project_packages() -> set[str]:
    """The project's own top-level packages: this one and Kedro's configured ``PACKAGE_NAME``."""
    return {__name__.split(".")[0], kedro_project.PACKAGE_NAME} - {None, ""}


def _owned_module(name: str) -> bool:
    """A module of this project (or its tests), as opposed to the stdlib or an installed library.
    The project's own package counts as the project's wherever it is installed (site-packages
    after ``kedro package`` + ``pip install``), so its code is always fingerprinted by content."""
    top = name.split(".")[0]
    return top in _project_packages() or _outside_libraries(name)


@functools.lru_cache(maxsize=None)
def _outside_libraries(name: str) -> bool:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not file:
        return name == "__main__"
    return not os.path.realpath(file).startswith(_LIB_ROOTS)


def _external_id(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "?")
    top = sys.modules.get(str(module).split(".")[0])
    version = getattr(top, "__version__", "")
    return f"ext:{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', type(obj).__name__))}@{version}"


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


class CodeFingerprint:
    """Digest of a callable and of the project code and constants it reaches by global names."""

    def __init__(self):
        self._memo: dict[int, tuple[Any, str]] = {}  # id → (object, digest): each object hashed once
        self._active: set[int] = set()
        self._cycle = False

    def digest(self, obj: Any) -> str:
        return self._sub(obj)

    def _sub(self, obj: Any) -> str:
        """The digest of one function, class or module (memoised; a cycle gets a placeholder)."""
        hit = self._memo.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        if id(obj) in self._active:
            self._cycle = True
            return f"<cycle {getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}>"
        self._active.add(id(obj))
        outer_cycle, self._cycle = self._cycle, False
        try:
            h = _hasher()
            self._visit(obj, h, set())
            digest = h.hexdigest()
        finally:
            self._active.discard(id(obj))
        if not self._cycle:  # a digest that used a placeholder depends on where hashing began
            self._memo[id(obj)] = (obj, digest)
        self._cycle = self._cycle or outer_cycle
        return digest

    def _feed(self, h, text: str) -> None:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\0")

    def _source(self, obj: Any) -> str:
        try:
            return inspect.getsource(obj)
        except (OSError, TypeError):
            code = getattr(obj, "__code__", None)
            return repr(code.co_code) if code else getattr(obj, "__qualname__", repr(obj))

    def _visit(self, obj: Any, h, seen: set[int]) -> None:
        if id(obj) in seen:
            self._feed(h, "<seen>")
            return
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            self._feed(h, "partial")
            self._feed(h, self._sub(obj.func))
            self._value(obj.args, h, seen)
            self._value(obj.keywords, h, seen)
        elif inspect.ismethod(obj):
            self._feed(h, self._sub(obj.__func__))
            self._value(obj.__self__, h, seen)
        elif inspect.isfunction(obj):
            if not _owned_module(obj.__module__):
                self._feed(h, _external_id(obj))
                return
            self._feed(h, f"def {obj.__module__}.{obj.__qualname__}")
            self._feed(h, self._source(obj))
            g = obj.__globals__
            for code in _code_objects(obj.__code__):
                for name in code.co_names:
                    if name in g:
                        self._feed(h, f"global {name}")
                        self._value(g[name], h, seen)
            for cell in obj.__closure__ or ():
                try:
                    self._value(cell.cell_contents, h, seen)
                except ValueError:  # an empty cell
                    pass
            self._value(obj.__defaults__, h, seen)
            self._value(obj.__kwdefaults__, h, seen)
        elif inspect.isclass(obj):
            if not _owned_module(obj.__module__):
                self._feed(h, _external_id(obj))
                return
            self._feed(h, f"class {obj.__module__}.{obj.__qualname__}")
            self._feed(h, self._source(obj))
            for base in obj.__mro__[1:]:
                if _owned_module(base.__module__):
                    self._feed(h, self._sub(base))
            for member in vars(obj).values():
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    for f in (member.fget, member.fset):
                        if f is not None:
                            self._feed(h, self._sub(f))
                elif inspect.isfunction(member):
                    self._feed(h, self._sub(member))
        elif inspect.ismodule(obj):
            if not _owned_module(obj.__name__):
                self._feed(h, _external_id(obj))
                return
            try:
                self._feed(h, Path(obj.__file__).read_text("utf-8"))
            except (OSError, TypeError):
                self._feed(h, obj.__name__)
            for member in vars(obj).values():
                if (inspect.isfunction(member) or inspect.isclass(member)) and member.__module__ == obj.__name__:
                    self._feed(h, self._sub(member))
        else:
            self._value(obj, h, seen)

    def _value(self, value: Any, h, seen: set[int]) -> None:
        """A constant: by value; code inside it by its code."""
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            self._feed(h, repr(value))
        elif isinstance(value, (types.FunctionType, type, types.ModuleType)):
            self._feed(h, self._sub(value))
        elif isinstance(value, (functools.partial, types.MethodType)):
            self._visit(value, h, seen)
        elif isinstance(value, (list, tuple)):
            self._feed(h, f"{type(value).__name__}[{len(value)}]")
            for item in value:
                self._value(item, h, seen)
        elif isinstance(value, (set, frozenset)):
            self._feed(h, f"set[{len(value)}]")
            for item in sorted(value, key=repr):
                self._value(item, h, seen)
        elif isinstance(value, Mapping):
            self._feed(h, f"map[{len(value)}]")
            for key in sorted(value, key=repr):
                self._feed(h, repr(key))
                self._value(value[key], h, seen)
        elif isinstance(value, re.Pattern):
            self._feed(h, f"re:{value.pattern!r}:{value.flags}")
        else:
            cls = type(value)
            if _owned_module(cls.__module__):
                self._feed(h, self._sub(cls))
            else:
                self._feed(h, _external_id(cls))
            text = repr(value)
            self._feed(h, re.sub(r" at 0x[0-9a-f]+", "", text))


# ------------------------------------------------------------------------------ parameters


class ParamTracker:
    """Hook (registered by the runner for its run): give nodes their schema'd parameter sections
    as pydantic models that record which fields the node reads."""

    def __init__(self, schemas: Mapping[str, type[BaseModel]]):
        self.schemas = dict(schemas)
        self.reads: dict[str, dict[str, set[str]]] = {}  # node name → input → fields read
        self._classes: dict[type, type] = {}
        self._live: dict[int, set[str]] = {}
        self._keep: list[BaseModel] = []  # keeps tracked instances alive, so their ids stay theirs

    def section(self, input_name: str) -> str | None:
        if input_name.startswith("params:"):
            name = input_name[len("params:"):]
            if name in self.schemas:
                return name
        return None

    def _tracked_class(self, model_cls: type[BaseModel]) -> type[BaseModel]:
        if model_cls not in self._classes:
            fields = frozenset(model_cls.model_fields)
            whole = frozenset(n for n in dir(BaseModel) if n != "__class__") | {"__dict__"}
            live = self._live  # id(instance) → fields it was asked for

            def __getattribute__(self, name):
                reads = live.get(id(self))
                if reads is not None:
                    if name in fields:
                        reads.add(name)
                    elif name in whole and name != "model_dump":
                        reads.add(ALL)
                return model_cls.__getattribute__(self, name)

            def model_dump(self, *args, include=None, exclude=None, **kwargs):
                reads = live.pop(id(self), None)
                if reads is not None:
                    if isinstance(include, (set, frozenset, list, tuple, dict)) and exclude is None:
                        reads.update(k for k in include if k in fields)
                    else:
                        reads.add(ALL)
                try:
                    return model_cls.model_dump(self, *args, include=include, exclude=exclude, **kwargs)
                finally:
                    if reads is not None:
                        live[id(self)] = reads

            def __getitem__(self, key):  # dict-style reads, as the plain parameter dict allows
                if key not in fields:
                    raise KeyError(key)
                return getattr(self, key)

            def get(self, key, default=None):
                return getattr(self, key) if key in fields else default

            self._classes[model_cls] = type(f"Tracked{model_cls.__name__}", (model_cls,), {
                "__getattribute__": __getattribute__, "model_dump": model_dump, "__module__": __name__,
                "__getitem__": __getitem__, "get": get,
                "__qualname__": f"Tracked{model_cls.__name__}",
            })
        return self._classes[model_cls]

    def model(self, section: str, raw: Any) -> BaseModel | None:
        model_cls = self.schemas[section]
        if isinstance(raw, model_cls):
            return raw
        try:
            return model_cls.model_validate(raw if raw is not None else {})
        except Exception:  # invalid: the ValidateParameters hook reports it
            return None

    def before_node_run(self, node: Node, inputs: dict[str, Any]) -> dict[str, Any] | None:
        overrides = {}
        self.reads[node.name] = {}
        for name in node.inputs:
            section = self.section(name)
            if section is None:
                continue
            model = self.model(section, inputs.get(name))
            if model is None:
                continue
            tracked_cls = self._tracked_class(self.schemas[section])
            tracked = tracked_cls.model_construct(_fields_set=model.model_fields_set, **dict(model))
            reads: set[str] = set()
            self._live[id(tracked)] = reads
            self._keep.append(tracked)
            self.reads[node.name][name] = reads
            overrides[name] = tracked
        return overrides or None

    def digest(self, section: str, raw: Any, keys: list[str]) -> str | None:
        """Digest of the given fields (or of all with ``["*"]``) of the current section value."""
        model = self.model(section, raw)
        if model is None:
            return None
        dumped = model.model_dump(mode="json")
        if keys != [ALL]:
            dumped = {k: dumped.get(k) for k in keys}
        return digest_json(dumped)


class _TrackerHook:
    """pluggy wrapper so the tracker can be registered for one run."""

    def __init__(self, tracker: ParamTracker):
        self.tracker = tracker

    @hook_impl
    def before_node_run(self, node, inputs):
        return self.tracker.before_node_run(node, inputs)


# ------------------------------------------------------------------------------ datasets


def _is_memory(dataset: Any) -> bool:
    return isinstance(dataset, MemoryDataset) or type(dataset).__name__.endswith("MemoryDataset")


def _is_param(name: str) -> bool:
    return name == "parameters" or name.startswith("params:")


def _plain_path(value: Any) -> Path | None:
    if isinstance(value, (str, PurePath)) and str(value):
        text = str(value)
        if "://" in text:
            if not text.startswith("file://"):
                return None
            text = text[len("file://"):]
        return Path(text)
    return None


def _versioned(dataset: Any) -> bool:
    return isinstance(dataset, AbstractVersionedDataset) and bool(getattr(dataset, "_version", None))


def _local_path(dataset: Any) -> Path | None:
    """The local file or folder behind a (non-versioned) dataset, or None when it has none."""
    if getattr(dataset, "_protocol", "file") not in ("file", "local", None):
        return None
    for attr in ("_filepath", "_path", "filepath", "path"):
        path = _plain_path(getattr(dataset, attr, None))
        if path is not None:
            return path
    return None


def _load_path(dataset: Any) -> Path | None:
    if _versioned(dataset):
        try:
            return Path(str(dataset._get_load_path()))
        except Exception:  # no version yet
            return None
    return _local_path(dataset)


def _latest_version(dataset: Any) -> str | None:
    try:
        versions = dataset.list_versions(full_path=False)
    except Exception:
        return None
    return versions[0] if versions else None


def _describe(dataset: Any) -> dict:
    try:
        described = dict(dataset._describe())
    except Exception:
        described = {"repr": re.sub(r" at 0x[0-9a-f]+", "", repr(dataset))}
    described.pop("version", None)
    return described


# ------------------------------------------------------------------------------ runner


def _safe_name(node_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", node_name) + "-" + hashlib.blake2b(
        node_name.encode(), digest_size=4).hexdigest()


class DamagedRecord(ValueError):
    """A node's cache record that cannot be read as one (not JSON, or JSON of the wrong shape)."""


def _digest_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _params_problem(params: Any) -> str | None:
    if not isinstance(params, dict):
        return "params is not an object"
    for name, stored in params.items():
        if not (isinstance(stored, dict) and isinstance(stored.get("keys"), list)
                and all(isinstance(k, str) for k in stored["keys"]) and _digest_or_none(stored.get("digest"))):
            return f"params[{name!r}] is not {{keys: [names], digest}}"
    return None


def _outputs_problem(outputs: Any) -> str | None:
    if not isinstance(outputs, dict):
        return "outputs is not an object"
    for name, stored in outputs.items():
        if not (isinstance(stored, dict) and _digest_or_none(stored.get("digest"))
                and _digest_or_none(stored.get("version"))):
            return f"outputs[{name!r}] is not {{path, digest, version}}"
    return None


def record_problem(record: Any) -> str | None:
    """What is wrong with a node's cache record, or None when it has the shape the check reads."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    missing = [k for k in ("node", "code", "config", "inputs", "params", "outputs", "fingerprint")
               if k not in record]
    if missing:
        return "missing " + ", ".join(missing)
    wrong = [k for k in ("node", "code", "config", "fingerprint") if not isinstance(record[k], str)]
    if wrong:
        return ", ".join(wrong) + " not a string"
    if not isinstance(record["inputs"], dict) or not all(map(_digest_or_none, record["inputs"].values())):
        return "inputs is not an object of digests"
    return _params_problem(record["params"]) or _outputs_problem(record["outputs"])


class CachedRunner(SequentialRunner):
    """``SequentialRunner`` that skips up-to-date nodes (see the module docstring)."""

    def __init__(self, is_async: bool = False, cache_dir: str | Path | None = None,
                 force: bool | None = None, param_schemas: Mapping[str, type[BaseModel]] | None = None,
                 purpose: str | None = None):
        super().__init__(is_async=is_async)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path.cwd() / CACHE_DIR
        self.force = force_requested() if force is None else force
        self.purpose = purpose  # what this run does, for the message a concurrent run gets
        if param_schemas is None:
            from tangshi_pipeline.poet.params import SCHEMAS as param_schemas
        self.param_schemas = dict(param_schemas)
        self.ran: list[str] = []
        self.skipped: list[str] = []

    # -- records
    def _record_path(self, name: str) -> Path:
        return self.cache_dir / "nodes" / f"{_safe_name(name)}.json"

    def _load_record(self, name: str) -> dict | None:
        """The node's record; None when it has none; :class:`DamagedRecord` when it is unusable."""
        path = self._record_path(name)
        try:
            record = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DamagedRecord(f"{path}: {type(exc).__name__}: {exc}") from None
        problem = record_problem(record)
        if problem is not None:
            raise DamagedRecord(f"{path}: {problem}")
        return record if record["node"] == name else None

    def _save_record(self, node_name: str, record: dict) -> None:
        """Write a record; a failure (disk full…) is logged, not raised: the node just re-runs."""
        path = self._record_path(node_name)
        try:
            write_json_atomic(path, record)
        except OSError as exc:
            self._logger.warning("Could not write the cache record %s (%s); the run goes on, and node "
                                 "%s will run again next time", path, exc, node_name)

    def _drop_record(self, node_name: str) -> None:
        path = self._record_path(node_name)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # a stale record left behind no longer matches the new outputs
            self._logger.warning("Could not remove the cache record %s (%s)", path, exc)

    # -- run
    def _run(self, pipeline: Pipeline, catalog, hook_manager=None, run_id: str | None = None) -> None:
        purpose = self.purpose or f"a cached run of {len(pipeline.nodes)} node(s)"
        with cache_lock(self.cache_dir / LOCK_FILE, purpose):
            self._run_locked(pipeline, catalog, hook_manager, run_id)

    def _run_locked(self, pipeline: Pipeline, catalog, hook_manager, run_id: str | None) -> None:
        self.ran, self.skipped = [], []
        self._files = FileIndex(self.cache_dir / "files.json")
        self._code = CodeFingerprint()
        self._tracker = ParamTracker(self.param_schemas)
        self._catalog, self._hooks, self._run_id = catalog, hook_manager, run_id
        self._pipeline = pipeline
        self._producer = {out: n for n in pipeline.nodes for out in n.outputs}
        self._consumers: dict[str, list[Node]] = {}
        for n in pipeline.nodes:
            for ds in n.inputs:
                self._consumers.setdefault(ds, []).append(n)
        self._fingerprint: dict[str, str] = {}
        self._deferred: dict[str, Node] = {}
        self._done: set[str] = set()

        tracker_hook = _TrackerHook(self._tracker)
        registered = hook_manager is not None and hasattr(hook_manager, "register")
        if registered:
            hook_manager.register(tracker_hook, name=f"tangshi-cache-params-{id(tracker_hook)}")
        if self.force:
            self._logger.info("Cache: forced run (every node runs; records are refreshed)")
        try:
            for node in pipeline.nodes:
                self._visit(node, registered)
            for name, node in self._deferred.items():
                self.skipped.append(name)
                self._logger.info("Skipping node %s: up to date", name)
        except Exception:
            self._suggest_resume_scenario(pipeline, [n for n in pipeline.nodes if n.name in self._done], catalog)
            raise
        finally:
            if registered:
                hook_manager.unregister(tracker_hook)
            self._files.save()
        self._logger.info("Cache: %d node(s) ran, %d skipped as up to date", len(self.ran), len(self.skipped))

    def _visit(self, node: Node, tracking: bool) -> None:
        try:
            reason, fingerprint = ("forced run", None) if self.force else self._check(node)
        except DamagedRecord as exc:
            self._logger.warning("Cache record for node %s is damaged (%s); running it", node.name, exc)
            self._execute(node, tracking)
            return
        if reason is None:
            self._fingerprint[node.name] = fingerprint
            if any(self._memory(ds) and ds in self._consumers for ds in node.outputs):
                self._deferred[node.name] = node  # runs only if a consumer of its memory output runs
            else:
                self.skipped.append(node.name)
                self._logger.info("Skipping node %s: up to date", node.name)
            return
        self._logger.info("Cache miss for node %s: %s", node.name, reason)
        self._execute(node, tracking)

    def _execute(self, node: Node, tracking: bool) -> None:
        for ds in node.inputs:  # memory inputs from deferred producers: run those first
            producer = self._producer.get(ds)
            if producer is not None and producer.name in self._deferred:
                del self._deferred[producer.name]
                self._logger.info("Cache: running node %s on demand: %s needs its memory output %r",
                                  producer.name, ds, node.name)
                self._execute(producer, tracking)
        inputs = self._input_digests(node)
        code = self._code.digest(node.func)
        config = self._config_digest(node)
        self._drop_record(node.name)
        for ds in node.outputs:
            path = self._output_path(ds)
            if path is not None:
                self._files.forget(path)
        start = time.perf_counter()
        Task(node=node, catalog=self._catalog, hook_manager=self._hooks,
             is_async=self._is_async, run_id=self._run_id).execute()
        outputs = self._saved_outputs(node)  # hashed as soon as the node has saved them
        duration = time.perf_counter() - start
        self._done.add(node.name)
        self.ran.append(node.name)
        self._logger.info("Completed node: %s", node.name)
        self._write_record(node, code, config, inputs, outputs, duration, tracking)
        self._release(node)

    def _release(self, node: Node) -> None:
        for ds in node.inputs:
            consumers = self._consumers.get(ds, [])
            if (all(c.name in self._done or c.name in self.skipped for c in consumers)
                    and ds not in self._pipeline.inputs() and self._memory(ds)):
                self._catalog.release(ds)

    # -- fingerprint parts
    def _dataset(self, name: str):
        return self._catalog.get(name, fallback_to_runtime_pattern=True)

    def _memory(self, name: str) -> bool:
        return _is_memory(self._dataset(name))

    def _output_path(self, name: str) -> Path | None:
        dataset = self._dataset(name)
        if _versioned(dataset):
            try:
                return Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
            except Exception:
                return None
        return _local_path(dataset)

    def _config_digest(self, node: Node) -> str:
        parts = {"node": node.name, "inputs": list(node.inputs), "outputs": list(node.outputs), "datasets": {}}
        for name in [*node.inputs, *node.outputs]:
            if _is_param(name):
                continue
            dataset = self._dataset(name)
            parts["datasets"][name] = {"type": self._code.digest(type(dataset)),
                                       "describe": None if _is_memory(dataset) else _describe(dataset)}
        return digest_json(parts)

    def _input_digest(self, name: str) -> str | None:
        dataset = self._dataset(name)
        if getattr(dataset, "cache_role", None) == "state":
            return "state"  # state the node keeps for itself (training checkpoints), not an input
        producer = self._producer.get(name)
        if _is_memory(dataset):
            if producer is not None and producer.name in self._fingerprint:
                return "node:" + self._fingerprint[producer.name]
            return None
        path = _load_path(dataset)
        if path is not None:
            digest = self._files.digest(path)
            if digest is not None and _versioned(dataset):
                return f"{dataset.resolve_load_version()}:{digest}"
            return digest
        if producer is not None and producer.name in self._fingerprint:
            return "node:" + self._fingerprint[producer.name]  # not a local file: trust its producer
        return None

    def _input_digests(self, node: Node) -> dict[str, str | None]:
        return {ds: self._input_digest(ds) for ds in node.inputs if not _is_param(ds)}

    def _param_digest(self, name: str, keys: list[str]) -> str | None:
        raw = self._dataset(name).load()  # not catalog.load: no log line per check
        section = self._tracker.section(name)
        if section is not None:
            return self._tracker.digest(section, raw, keys)
        return digest_json(raw)

    @staticmethod
    def _fingerprint_of(record: dict) -> str:
        return digest_json({k: record[k] for k in ("code", "config", "inputs", "params")})

    def _saved_outputs(self, node: Node) -> dict[str, dict]:
        """Each output as this node has just saved it: path, content digest, version."""
        outputs = {}
        for name in node.outputs:
            dataset = self._dataset(name)
            if _is_memory(dataset):
                outputs[name] = {"memory": True}
                continue
            path = self._output_path(name)
            outputs[name] = {
                "path": str(path) if path else None,
                "digest": self._files.digest(path) if path else None,
                "version": dataset.resolve_save_version() if _versioned(dataset) else None,
            }
        return outputs

    def _changed_outputs(self, outputs: dict[str, dict]) -> list[str]:
        """Outputs whose bytes on disk are no longer the ones the node saved (hashed again now)."""
        changed = []
        for name, saved in outputs.items():
            if saved.get("path"):
                path = Path(saved["path"])
                self._files.forget(path)
                if self._files.digest(path) != saved["digest"]:
                    changed.append(name)
        return changed

    def _write_record(self, node: Node, code: str, config: str, inputs: dict, outputs: dict,
                      duration: float, tracking: bool) -> None:
        params = {}
        reads = self._tracker.reads.get(node.name, {}) if tracking else {}
        for name in node.inputs:
            if not _is_param(name):
                continue
            read = reads.get(name)
            keys = [ALL] if read is None or ALL in read else sorted(read)
            params[name] = {"keys": keys, "digest": self._param_digest(name, keys)}
        record = {"node": node.name, "code": code, "config": config, "inputs": inputs, "params": params,
                  "outputs": outputs, "run_id": self._run_id, "duration_s": round(duration, 4),
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        record["fingerprint"] = self._fingerprint_of(record)
        self._fingerprint[node.name] = record["fingerprint"]
        if any(v is None for v in inputs.values()):
            return  # an input that cannot be fingerprinted: this node always runs, keep no record
        changed = self._changed_outputs(outputs)
        if changed:
            self._logger.warning(
                "Output(s) %s of node %s changed on disk after the node saved them (another process "
                "writing the same files?); no cache record kept, so %s will run again next time",
                ", ".join(changed), node.name, node.name)
            return
        self._save_record(node.name, record)

    def _check(self, node: Node) -> tuple[str | None, str | None]:
        """(why the node must run, or None when up to date; its fingerprint when up to date)."""
        record = self._load_record(node.name)
        if record is None:
            return "no record of a previous run", None
        if record["code"] != self._code.digest(node.func):
            return "code changed", None
        if record["config"] != self._config_digest(node):
            return "dataset configuration changed", None
        for name in node.inputs:
            if not _is_param(name):
                continue
            stored = record["params"].get(name)
            if stored is None or stored["digest"] != self._param_digest(name, stored["keys"]):
                keys = "" if stored is None or stored["keys"] == [ALL] else f" ({', '.join(stored['keys'])})"
                return f"parameter {name}{keys} changed", None
        for name in node.inputs:
            if _is_param(name):
                continue
            digest = self._input_digest(name)
            if digest is None:
                return f"input {name} cannot be fingerprinted", None
            if record["inputs"].get(name) != digest:
                return f"input {name} changed", None
        for name in node.outputs:
            reason = self._output_problem(name, record["outputs"].get(name))
            if reason:
                return reason, None
        return None, record["fingerprint"]

    def _output_problem(self, name: str, stored: dict | None) -> str | None:
        dataset = self._dataset(name)
        if stored is None:
            return f"output {name} not recorded"
        if _is_memory(dataset):
            return None if name in self._consumers else f"output {name} is a memory dataset nobody here consumes"
        if _versioned(dataset):
            latest = _latest_version(dataset)
            if latest is None:
                return f"output {name} missing"
            if latest != stored.get("version"):
                return f"output {name}: latest version {latest} was not written by this node's last run"
            path = Path(str(dataset._get_versioned_path(latest)))
        else:
            path = _local_path(dataset)
            if path is None:
                return None if dataset.exists() else f"output {name} missing"
        digest = self._files.digest(path)
        if digest is None:
            return f"output {name} missing"
        if digest != stored.get("digest"):
            return f"output {name} was modified after this node wrote it"
        return None


class CachedSession(KedroSession):
    """``KedroSession`` whose default (sequential) runs go through :class:`CachedRunner`."""

    def run(self, pipeline_name=None, pipeline_names=None, tags=None, runner=None, **kwargs):
        if runner is None or type(runner) is SequentialRunner:
            is_async = bool(getattr(runner, "_is_async", False))
            names = pipeline_names or [pipeline_name or "__default__"]
            runner = CachedRunner(is_async=is_async, cache_dir=self._cache_dir(),
                                  purpose="pipelines " + ", ".join(names))
        return super().run(pipeline_name=pipeline_name, pipeline_names=pipeline_names, tags=tags,
                           runner=runner, **kwargs)

    def _cache_dir(self) -> Path:
        """``<output_root>/.cache`` (conf globals.yml): each environment's records sit with its outputs."""
        root = self.load_context().config_loader["globals"].get("output_root", "data")
        return Path(self._project_path) / root / CACHE_DIR.name


# ------------------------------------------------------------------------------ runs without it


def _runner_class(text: Any) -> type | None:
    """The class named in Kedro's ``run_params["runner"]`` (``str(runner)``: "<module.Class object
    at 0x…>"); None for ``"None"`` (KedroSession's default SequentialRunner) or anything else."""
    match = re.match(r"<([\w.]+)\.(\w+) object at 0x", str(text))
    if match is None:
        return None
    found = getattr(sys.modules.get(match[1]), match[2], None)
    return found if isinstance(found, type) else None


def runs_cached(run_params: Mapping[str, Any]) -> bool:
    """Whether a run (Kedro's ``run_params``) goes through the stage cache's runner."""
    runner = _runner_class(run_params.get("runner"))
    return runner is not None and issubclass(runner, CachedRunner)


class CacheNotice:
    """Hook: say so, in one log line, when a run goes without the stage cache — a plain
    ``KedroSession`` from Python, or ``--runner=ThreadRunner`` / ``ParallelRunner`` — and how to
    get it."""

    @hook_impl
    def before_pipeline_run(self, run_params) -> None:
        if runs_cached(run_params):
            return
        runner = _runner_class(run_params.get("runner"))
        logger.warning(
            "Stage cache off for this run (%s): every node runs, up-to-date ones too. For the cache, "
            "use `kedro run` (default runner) or, from Python, settings.SESSION_CLASS.create(...) "
            "(tangshi_pipeline.plumbing.cache.CachedSession) instead of KedroSession.create(...)",
            runner.__name__ if runner is not None else "KedroSession's SequentialRunner")
