"""Project hooks."""

from __future__ import annotations

from kedro.framework.hooks import hook_impl

from tangshi_pipeline.params import validate_all


class ValidateParameters:
    """Reject a bad parameter before any node runs, with a message that names it."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        validate_all(catalog.load("parameters"))
