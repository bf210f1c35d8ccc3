"""Pipelines fit Kedro's conventions: a pipeline made with `kedro pipeline create` joins the default
run, every node has a tag, and each pipeline is a namespace that `--namespaces` selects.

The CLI tests run `kedro` in a throw-away copy of the project (``tests/helpers.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests import test_readme
from tests.helpers import ROOT, kedro, lay_out_project

# A tiny model: a whole `kedro run` on the fixture corpus takes a few seconds.
TINY = ("training.embedding_dim=8,training.hidden_dim=16,training.num_layers=1,training.epochs=1,"
        "training.max_minutes=null,training.device=cpu,training.batch_size=4,training.threads=1,"
        "generate.begin_words=[日]")

# The tags the project gives its nodes (README, "Pipelines"): a tag is a kind of work.
TAGS = {
    "data_processing.flatten": "corpus",
    "data_processing.clean": "corpus",
    "data_processing.frame": "model_input",
    "data_processing.build_vocab": "model_input",
    "data_processing.vectorize": "model_input",
    "data_processing.extract_keywords": "model_input",
    "data_processing.build_prosody": "prosody",
    "training.train": "model",
    "training.evaluate": "evaluation",
    "training.plot_training_curve": "evaluation",
    "generate.generate_poems": "poems",
    "generate.report_generation": "evaluation",
}

POSTER_NODES = '''
def count_poems(clean_poems):
    return {"poems": len(clean_poems)}
'''
POSTER_PIPELINE = '''
from kedro.pipeline import Node, Pipeline

from .nodes import count_poems


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([Node(count_poems, "clean_poems", "poster", name="count_poems", tags="poster")],
                    namespace="poster", prefix_datasets_with_namespace=False)
'''
POSTER_CATALOG = '''
poster:
  type: json.JSONDataset
  filepath: data/08_reporting/poster.json
'''


def test_every_node_has_its_tag_and_its_pipeline_as_namespace(project):
    from kedro.framework.project import pipelines

    pipelines.configure("tangshi_pipeline.pipeline_registry")
    assert set(pipelines) == {"data_processing", "training", "generate", "__default__"}
    default = {n.name: n for n in pipelines["__default__"].nodes}
    assert {name: set(n.tags) for name, n in default.items()} == {k: {v} for k, v in TAGS.items()}
    for name in ("data_processing", "training", "generate"):
        assert {n.namespace for n in pipelines[name].nodes} == {name}
    # The datasets keep the names users type (--from-inputs, --load-versions, the catalog).
    assert {"vectors", "vocab", "model"} <= pipelines["__default__"].all_outputs()


def test_a_created_pipeline_joins_the_default_run(tmp_path):
    root = lay_out_project(tmp_path / "project")
    shutil.copytree(ROOT / "src/tangshi_pipeline", root / "src/tangshi_pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", root / "README.md")
    created = kedro(root, "pipeline", "create", "poster")
    assert created.returncode == 0, created.stdout + created.stderr
    params = root / "conf/base/parameters_poster.yml"
    assert params.is_file() and not [line for line in params.read_text().splitlines()
                                     if line.strip() and not line.startswith("#")]  # comments only
    for section in test_readme.sections(root):  # the README check accepts a pipeline with no parameters
        test_readme.test_readme_documents_every_parameter_with_its_default(section, root)

    package = root / "src/tangshi_pipeline/pipelines/poster"
    (package / "nodes.py").write_text(POSTER_NODES)
    (package / "pipeline.py").write_text(POSTER_PIPELINE)
    (root / "conf/base/catalog_poster.yml").write_text(POSTER_CATALOG)
    run = kedro(root, "run", f"--params={TINY}")  # the package is the copy: `src` comes first on sys.path
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads((root / "data/08_reporting/poster.json").read_text()) == {"poems": 7}
    assert (root / "data/08_reporting/generated_poems.md").is_file()  # the rest of the default run


@pytest.fixture
def cli_project(tmp_path) -> Path:
    return lay_out_project(tmp_path / "project")


def test_tags_select_their_nodes(cli_project):
    run = kedro(cli_project, "run", "--tags=corpus,prosody")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = cli_project / "data"
    assert (data / "03_primary/clean_poems.parquet").is_file()  # flatten, clean
    assert (data / "05_model_input/tone_lexicon.json").is_file()  # build_prosody
    assert not (data / "05_model_input/framed_poems.parquet").exists()  # frame: model_input


def test_namespaces_select_a_whole_pipeline(cli_project):
    run = kedro(cli_project, "run", "--namespaces=data_processing")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = cli_project / "data"
    for path in ("03_primary/clean_poems.parquet", "05_model_input/vectors.parquet",
                 "05_model_input/rhyme_table.json"):
        assert (data / path).is_file(), path
    assert not any((data / "06_models").iterdir())  # training is not in the namespace
