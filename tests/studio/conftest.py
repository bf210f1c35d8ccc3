"""A throw-away project with a tiny model trained by the training pipeline, shared by the studio tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import lay_out_project, nest
from tests.helpers_models import save_model

# A few seconds of training on the fixture corpus: enough for the model to prefer its poems' characters.
TINY = {"embedding_dim": 16, "hidden_dim": 32, "num_layers": 2, "dropout": 0.0, "batch_size": 2,
        "epochs": 30, "max_minutes": None, "device": "cpu", "learning_rate": 0.02, "threads": 1}


@pytest.fixture(scope="session")
def studio_project(tmp_path_factory) -> Path:
    """data_processing run; an untrained model version, then a trained one (the latest)."""
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    from tangshi_pipeline.plumbing.cache import CachedSession

    root = lay_out_project(tmp_path_factory.mktemp("studio") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        bootstrap_project(root)
        pipelines.configure("tangshi_pipeline.pipeline_registry")
        with CachedSession.create(project_path=root) as session:
            session.run(pipeline_names=["data_processing"])
        save_model(root, seed=5)  # an older version, for --model-version
        with CachedSession.create(project_path=root, runtime_params=nest({"training": TINY})) as session:
            session.run(pipeline_names=["training"])
        pipelines.configure("tangshi_pipeline.pipeline_registry")
    return root


def model_versions(root: Path) -> list[str]:
    """Saved model versions, oldest first."""
    return sorted(p.name for p in (root / "data/06_models/poet").iterdir() if not p.name.startswith("."))
