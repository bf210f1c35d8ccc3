"""The last run's stage status and timings for kedro-viz's workflow view.

kedro-viz 12 reads ``.viz/kedro_pipeline_events.json`` (and ``.viz/stats.json`` for dataset
sizes) in the project. Its own hook writes them only for an unfiltered run with Kedro's plain
``SequentialRunner`` and knows nothing of nodes the stage cache skipped, so the project disables
kedro-viz's hooks (``DISABLE_HOOKS_FOR_PLUGINS`` in settings.py) and writes both files here, for
every run: nodes that ran with their duration, nodes the cache skipped as successful with a
duration of 0 and ``"cached": true``, errors with their traceback. ``stats.json`` is merged, so
datasets untouched by a cached run keep their figures. Files are written atomically.
"""

from __future__ import annotations

import json
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from tangshi_pipeline.atomic import write_json
from tangshi_pipeline.plumbing.cache.describe import local_path

VIZ_DIR = ".viz"
EVENTS_FILE = "kedro_pipeline_events.json"
STATS_FILE = "stats.json"


def _now() -> str:
    return datetime.now(tz=timezone.utc).isoformat()


def _ids():
    from kedro_viz.utils import _hash, _hash_input_output  # kedro-viz's own node ids

    return _hash, _hash_input_output


def _file_size(dataset: Any) -> int | None:
    path = local_path(dataset)
    try:
        if path is None:
            return None
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        pass
    return None


class RunStatusHook:
    """Write kedro-viz's run events and dataset stats for every run (cache-aware)."""

    def __init__(self):
        self._project = Path.cwd()
        self._reset()

    def _reset(self) -> None:
        self._events: list[dict] = []
        self._stats: dict[str, dict] = {}
        self._start: dict[str, float] = {}
        self._ran: set[str] = set()
        self._nodes: list = []
        self._catalog = None
        self._current: Any = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project = Path(context.project_path)

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline) -> None:
        catalog = self._catalog
        self._reset()
        self._catalog = catalog
        self._nodes = list(pipeline.nodes)
        self._events.append({"event": "before_pipeline_run", "timestamp": _now(),
                             "run_id": run_params.get("run_id")})

    def _dataset_event(self, event: str, name: str, data: Any) -> None:
        _, hash_io = _ids()
        entry: dict[str, Any] = {"event": event, "dataset": name, "node_id": hash_io(name), "status": "Available"}
        dataset = None
        if self._catalog is not None and not name.startswith("params:") and name != "parameters":
            try:
                dataset = self._catalog.get(name)
            except Exception:
                dataset = None
        size = _file_size(dataset) if dataset is not None else None
        if size is not None:
            entry["size"] = size
        self._events.append(entry)
        shape = getattr(data, "shape", None)
        if hasattr(data, "columns") and isinstance(shape, tuple) and len(shape) == 2:
            stats = {"rows": int(shape[0]), "columns": int(shape[1])}
            if size is not None:
                stats["file_size"] = size
            self._stats[name.split("@")[0]] = stats

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any) -> None:
        self._dataset_event("after_dataset_loaded", dataset_name, data)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        self._dataset_event("after_dataset_saved", dataset_name, data)

    @hook_impl
    def before_node_run(self, node) -> None:
        self._start[node.name] = time.perf_counter()
        self._current = node

    @hook_impl
    def after_node_run(self, node) -> None:
        hash_node, _ = _ids()
        duration = time.perf_counter() - self._start.get(node.name, time.perf_counter())
        self._ran.add(node.name)
        self._events.append({"event": "after_node_run", "node": node.name, "node_id": hash_node(str(node)),
                             "duration": duration, "status": "success"})
        self._current = None

    @hook_impl
    def on_node_error(self, error: Exception, node) -> None:
        hash_node, _ = _ids()
        self._events.append({"event": "on_node_error", "node": node.name, "node_id": hash_node(str(node)),
                             "error": str(error), "timestamp": _now(), "traceback": traceback.format_exc()})

    def _cached_nodes(self) -> None:
        hash_node, _ = _ids()
        for node in self._nodes:
            if node.name not in self._ran:
                self._events.append({"event": "after_node_run", "node": node.name,
                                     "node_id": hash_node(str(node)), "duration": 0.0,
                                     "status": "success", "cached": True})

    def _flush(self) -> None:
        viz = self._project / VIZ_DIR
        try:
            write_json(viz / EVENTS_FILE, self._events)
            try:
                stats = json.loads((viz / STATS_FILE).read_text("utf-8"))
            except (OSError, ValueError):
                stats = {}
            stats.update(self._stats)
            write_json(viz / STATS_FILE, stats)
        except OSError:  # the run's result matters more than its report
            pass

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._cached_nodes()
        self._events.append({"event": "after_pipeline_run", "timestamp": _now()})
        self._flush()

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        hash_node, _ = _ids()
        event = {"event": "on_pipeline_error", "error": str(error), "timestamp": _now(),
                 "traceback": traceback.format_exc()}
        if self._current is not None:
            event.update(node=self._current.name, node_id=hash_node(str(self._current)))
        self._events.append(event)
        self._flush()
