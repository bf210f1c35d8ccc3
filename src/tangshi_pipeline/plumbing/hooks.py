"""Project hooks."""

from __future__ import annotations

import logging
import os

from kedro.framework.hooks import hook_impl

from tangshi_pipeline.plumbing.cache.describe import local_path
from tangshi_pipeline.poet.params import validate_all

logger = logging.getLogger(__name__)


class ValidateParameters:
    """Reject a bad parameter before any node runs, with a message that names it. Nodes take plain
    values (``params:<section>.<key>``), so this is where every section is checked, as a whole,
    against its model in ``poet/params.py``."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        validate_all(catalog.load("parameters"))


class ShowPoems:
    """At the end of a run that makes poems (also when the cache found them up to date): where the
    poems page is, and the first few poems."""

    first = 3

    @hook_impl
    def after_pipeline_run(self, pipeline, catalog) -> None:
        if "poems_page" not in pipeline.all_outputs():
            return
        records = catalog.get("generated_poems").load()  # not catalog.load: no "Loading data" line
        page = os.path.relpath(local_path(catalog.get("poems_page")))
        lines = [f"{len(records)} poem(s) in {page}; the first {min(self.first, len(records))}:"]
        for record in records[: self.first]:
            lines += ["", *("    " + line for line in record["lines"])]
        logger.info("\n".join(lines), extra={"markup": False})
