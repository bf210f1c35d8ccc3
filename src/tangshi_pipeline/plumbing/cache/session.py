"""``CachedSession`` (``SESSION_CLASS`` in settings.py): the session whose default runs are cached."""

from __future__ import annotations

from pathlib import Path

from kedro.framework.session import KedroSession
from kedro.runner import SequentialRunner

from .lock import CACHE_DIR
from .runner import CachedRunner


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
