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
    The value of each parameter input (``params:<key>``, ``parameters``), hashed as a whole. The
    granularity is the pipeline's wiring: a node wired to ``params:data_processing.split_salt``
    depends on that key alone, a node wired to ``params:training`` on the whole section.
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
    The node's wiring, the catalog description of every input and output dataset (type, path,
    load/save arguments, without the version) and the code of project dataset classes.

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

The modules, one concern each: ``session`` and ``notice`` (the two hooks into Kedro), ``runner``
(when a node runs), ``fingerprint`` (the four parts, and whether a record still matches),
``code`` (the code part), ``files`` (content digests and their index), ``describe`` (what a
catalog dataset is and where its file lies), ``records`` (a record's shape, reading and writing),
``lock`` (the project lock), ``digest`` (the one hash).
"""

from .code import CodeFingerprint
from .files import FileIndex
from .lock import CACHE_DIR, LOCK_WAIT_ENV, ProjectLocked, cache_lock, lock_wait_seconds, project_lock
from .notice import CacheNotice, runs_cached
from .records import DamagedRecord, record_problem
from .runner import FORCE_ENV, CachedRunner, force_requested
from .session import CachedSession

__all__ = [
    "CACHE_DIR", "FORCE_ENV", "LOCK_WAIT_ENV", "CacheNotice", "CachedRunner", "CachedSession",
    "CodeFingerprint", "DamagedRecord", "FileIndex", "ProjectLocked", "cache_lock", "force_requested",
    "lock_wait_seconds", "project_lock", "record_problem", "runs_cached",
]
