"""Environments keep their own outputs: `--env=classic` writes under data/classic/ (globals.yml's
``output_root``), with its own models and stage-cache records, so switching environments never
breaks or retrains the other. Runs go through the session class `kedro run` uses."""

from __future__ import annotations

from pathlib import Path

from kedro.framework.hooks import hook_impl

from tests.helpers import nest

TINY = {"training.embedding_dim": 8, "training.hidden_dim": 16, "training.num_layers": 1,
        "training.epochs": 1, "training.max_minutes": None, "training.device": "cpu",
        "training.batch_size": 4, "training.threads": 1,
        "generate.begin_words": ["日"]}  # in both the fixture corpus and the fixture poems.txt


def all_nodes() -> int:
    """How many nodes the default pipeline has (the project's own registry)."""
    from tangshi_pipeline.pipeline_registry import register_pipelines

    return len(register_pipelines()["__default__"].nodes)


class Ran:
    def __init__(self):
        self.nodes: list[str] = []

    @hook_impl
    def after_node_run(self, node):
        self.nodes.append(node.name)


def run(root: Path, env: str | None = None, pipeline: str | None = None, **params) -> list[str]:
    """`kedro run [--env] [--pipelines] --params=TINY,...`; the nodes that ran (not skipped)."""
    from kedro.framework.project import settings

    ran = Ran()
    with settings.SESSION_CLASS.create(project_path=root, env=env,
                                       runtime_params=nest({**TINY, **params})) as session:
        session._hook_manager.register(ran)
        session.run(pipeline_names=[pipeline] if pipeline else None)
    return ran.nodes


def _paths(project, env: str | None) -> dict[str, str]:
    """Every catalog entry's file or folder, as configured for ``env``."""
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project.path, env=env) as session:
        catalog = session.load_context().config_loader["catalog"]
    keys = ("filepath", "folder", "path")
    return {name: next(str(entry[k]) for k in keys if k in entry)
            for name, entry in catalog.items() if isinstance(entry, dict) and any(k in entry for k in keys)}


def test_classic_writes_every_output_under_data_classic(project):
    base, classic = _paths(project, None), _paths(project, "classic")
    assert set(base) == set(classic) and len(base) > 15
    assert classic.pop("raw_corpus") == "data/01_raw/poems.txt"
    assert all(path.startswith("data/classic/") for path in classic.values()), classic
    assert all(path.startswith("data/") and not path.startswith("data/classic") for path in base.values())


def test_a_classic_run_neither_breaks_nor_retrains_the_base_environment(project):
    root, data = project.path, project.path / "data"
    assert len(run(root)) == all_nodes()
    vocab = (data / "05_model_input/vocab.json").read_bytes()
    models = sorted(p.name for p in (data / "06_models/poet").iterdir())

    assert len(run(root, env="classic")) == all_nodes()  # its own records: nothing of base's is reused
    classic = data / "classic"
    assert (classic / "05_model_input/vocab.json").read_bytes() != vocab
    assert len(list((classic / "06_models/poet").iterdir())) == 1
    assert (classic / "08_reporting/generated_poems.md").is_file() and (classic / ".cache/nodes").is_dir()
    assert (data / "05_model_input/vocab.json").read_bytes() == vocab
    assert sorted(p.name for p in (data / "06_models/poet").iterdir()) == models

    # Base generation still works with base's model and vocabulary, and nothing else re-runs.
    assert run(root, pipeline="generate", **{"generate.seed": 7}) == [
        "generate.generate_poems", "generate.report_generation"]
    assert run(root, **{"generate.seed": 7}) == []
    assert run(root, env="classic") == []  # and back: classic is up to date too
