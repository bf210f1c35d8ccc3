"""``CachedRunner``: Kedro's ``SequentialRunner``, skipping the nodes that are up to date.

It decides node by node, in topological order and just before the node would run, whether the
node's record still matches its fingerprint (:mod:`.fingerprint`). Deciding late gives *early
cutoff*: a node that re-runs and writes byte-identical outputs does not make its consumers re-run.
A node whose outputs are consumed in memory is run (on demand) as soon as one of its consumers
runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import SequentialRunner
from kedro.runner.task import Task

from .describe import is_memory
from .files import FileIndex
from .fingerprint import Fingerprints
from .lock import CACHE_DIR, LOCK_FILE, cache_lock
from .records import DamagedRecord, Records, fingerprint

FORCE_ENV = "TANGSHI_FORCE_RUN"


def force_requested() -> bool:
    """``TANGSHI_FORCE_RUN`` is set (and not 0/false/no): every node runs (``kedro run --force``)."""
    return os.environ.get(FORCE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class CachedRunner(SequentialRunner):
    """``SequentialRunner`` that skips up-to-date nodes; ``ran`` and ``skipped`` list them after a run.

    ``cache_dir`` holds the records, the file index and the project lock (default
    ``./data/.cache``); ``force`` runs every node and refreshes the records (default: from
    ``TANGSHI_FORCE_RUN``); ``purpose`` says what the run does, for the message a concurrent run
    gets."""

    def __init__(self, is_async: bool = False, cache_dir: str | Path | None = None,
                 force: bool | None = None, purpose: str | None = None):
        super().__init__(is_async=is_async)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path.cwd() / CACHE_DIR
        self.force = force_requested() if force is None else force
        self.purpose = purpose
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def _run(self, pipeline: Pipeline, catalog, hook_manager=None, run_id: str | None = None) -> None:
        purpose = self.purpose or f"a cached run of {len(pipeline.nodes)} node(s)"
        with cache_lock(self.cache_dir / LOCK_FILE, purpose):
            self._run_locked(pipeline, catalog, hook_manager, run_id)

    def _run_locked(self, pipeline: Pipeline, catalog, hook_manager, run_id: str | None) -> None:
        self.ran, self.skipped = [], []
        self._catalog, self._hooks, self._run_id, self._pipeline = catalog, hook_manager, run_id, pipeline
        self._producer = {out: n for n in pipeline.nodes for out in n.outputs}
        self._consumers: dict[str, list[Node]] = {}
        for n in pipeline.nodes:
            for ds in n.inputs:
                self._consumers.setdefault(ds, []).append(n)
        self._records = Records(self.cache_dir)
        self._parts = Fingerprints(catalog, FileIndex(self.cache_dir / "files.json"), self._producer,
                                   set(self._consumers))
        self._deferred: dict[str, Node] = {}  # up to date, with a memory output: run only on demand
        self._done: set[str] = set()
        if self.force:
            self._logger.info("Cache: forced run (every node runs; records are refreshed)")
        try:
            for node in pipeline.nodes:
                self._visit(node)
            for name in self._deferred:
                self.skipped.append(name)
                self._logger.info("Skipping node %s: up to date", name)
        except Exception:
            self._suggest_resume_scenario(pipeline, [n for n in pipeline.nodes if n.name in self._done], catalog)
            raise
        finally:
            self._parts.files.save()
        self._logger.info("Cache: %d node(s) ran, %d skipped as up to date", len(self.ran), len(self.skipped))

    def _visit(self, node: Node) -> None:
        """Run the node, skip it, or (up to date, with a memory output) defer it to its consumers."""
        try:
            reason = "forced run" if self.force else self._check(node)
        except DamagedRecord as exc:
            self._logger.warning("Cache record for node %s is damaged (%s); running it", node.name, exc)
            self._execute(node)
            return
        if reason is not None:
            self._logger.info("Cache miss for node %s: %s", node.name, reason)
            self._execute(node)
        elif any(is_memory(self._parts.dataset(ds)) and ds in self._consumers for ds in node.outputs):
            self._deferred[node.name] = node  # runs only if a consumer of its memory output runs
        else:
            self.skipped.append(node.name)
            self._logger.info("Skipping node %s: up to date", node.name)

    def _check(self, node: Node) -> str | None:
        """Why the node must run; None when it is up to date (its fingerprint is then known)."""
        record = self._records.load(node.name)
        if record is None:
            return "no record of a previous run"
        reason = self._parts.stale(node, record)
        if reason is None:
            self._parts.known[node.name] = record["fingerprint"]
        return reason

    def _execute(self, node: Node) -> None:
        """Run the node (after any deferred producer of its memory inputs), then record it."""
        for ds in node.inputs:
            producer = self._producer.get(ds)
            if producer is not None and producer.name in self._deferred:
                del self._deferred[producer.name]
                self._logger.info("Cache: running node %s on demand: %s needs its memory output %r",
                                  producer.name, ds, node.name)
                self._execute(producer)
        inputs, code, config = self._parts.inputs(node), self._parts.code(node), self._parts.config(node)
        self._records.drop(node.name)
        self._parts.forget_outputs(node)
        start = time.perf_counter()
        Task(node=node, catalog=self._catalog, hook_manager=self._hooks,
             is_async=self._is_async, run_id=self._run_id).execute()
        outputs = self._parts.saved_outputs(node)  # hashed as soon as the node has saved them
        duration = time.perf_counter() - start
        self._done.add(node.name)
        self.ran.append(node.name)
        self._logger.info("Completed node: %s", node.name)
        self._write_record(node, code, config, inputs, outputs, duration)
        self._release(node)

    def _release(self, node: Node) -> None:
        """Free the memory inputs every consumer of which has run or been skipped."""
        for ds in node.inputs:
            consumers = self._consumers.get(ds, [])
            if (all(c.name in self._done or c.name in self.skipped for c in consumers)
                    and ds not in self._pipeline.inputs() and is_memory(self._parts.dataset(ds))):
                self._catalog.release(ds)

    def _write_record(self, node: Node, code: str, config: str, inputs: dict, outputs: dict,
                      duration: float) -> None:
        """Record what the node's run saw and wrote, unless an input could not be fingerprinted
        or an output changed on disk since the node saved it (then the node runs next time)."""
        record = {"node": node.name, "code": code, "config": config, "inputs": inputs,
                  "params": self._parts.params(node), "outputs": outputs, "run_id": self._run_id,
                  "duration_s": round(duration, 4), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        record["fingerprint"] = fingerprint(record)
        self._parts.known[node.name] = record["fingerprint"]
        if any(v is None for v in inputs.values()):
            return  # an input that cannot be fingerprinted: this node always runs, keep no record
        changed = self._parts.changed_outputs(outputs)
        if changed:
            self._logger.warning(
                "Output(s) %s of node %s changed on disk after the node saved them (another process "
                "writing the same files?); no cache record kept, so %s will run again next time",
                ", ".join(changed), node.name, node.name)
            return
        self._records.save(node.name, record)
