"""Project pipelines: every ``pipelines/<name>`` package, each also the sum ``__default__``.

Kedro's own template: ``find_pipelines()`` finds every pipeline, including one added with
``kedro pipeline create``, and ``__default__`` is their sum. The order of the nodes is not the
order of the sum: Kedro runs them in the order of their dataset dependencies
(data_processing → training → generate).
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
