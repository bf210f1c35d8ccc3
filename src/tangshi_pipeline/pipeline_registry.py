"""Project pipelines: `data_processing`, then `training`, then `generate`."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

ORDER = ("data_processing", "training", "generate")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum((pipelines[name] for name in ORDER if name in pipelines), Pipeline([]))
    return pipelines
