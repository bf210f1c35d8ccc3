"""``CacheNotice`` (a hook in settings.py): a run that goes without the stage cache says so."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

from kedro.framework.hooks import hook_impl

from .runner import CachedRunner

logger = logging.getLogger(__name__)


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
