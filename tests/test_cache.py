"""The stage cache, through real KedroSessions of the project's SESSION_CLASS.

Each scenario asserts which nodes ran (an ``after_node_run`` hook fired) and which were skipped.
The data_processing scenarios use the fixture corpus (``project`` fixture); the synthetic ones
register a small pipeline, written as a module file in the temp project so that tests can edit its
code: ``scale`` (memory output) → ``total`` (JSON) → ``report`` (JSON), plus a versioned output.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from kedro.framework.hooks import hook_impl

from tangshi_pipeline.plumbing.cache import FORCE_ENV, CachedSession
from tangshi_pipeline.plumbing.corpus import write_manifest

DP = [f"data_processing.{name}" for name in (
    "flatten", "clean", "build_prosody", "frame", "build_vocab", "extract_keywords", "vectorize")]


class Recorder:
    def __init__(self):
        self.ran: list[str] = []
        self.all: list[str] = []

    @hook_impl
    def before_pipeline_run(self, pipeline):
        self.all = [n.name for n in pipeline.nodes]

    @hook_impl
    def after_node_run(self, node):
        self.ran.append(node.name)


def run(project_path: Path, pipeline: str | None = None, params: dict | None = None,
        env: str | None = None, **kwargs) -> tuple[list[str], list[str]]:
    """Run like `kedro run`; returns (nodes that ran, nodes skipped), in pipeline order."""
    from kedro.framework.project import settings

    assert settings.SESSION_CLASS is CachedSession
    recorder = Recorder()
    with settings.SESSION_CLASS.create(project_path=project_path, env=env, runtime_params=params) as session:
        session._hook_manager.register(recorder)
        session.run(pipeline_names=[pipeline] if pipeline else None, **kwargs)
    ran = [n for n in recorder.all if n in recorder.ran]
    return ran, [n for n in recorder.all if n not in recorder.ran]


def report(project) -> dict:
    return json.loads((project.path / "data/03_primary/cleaning_report.json").read_text("utf-8"))


# ------------------------------------------------------------------------ data_processing


def test_second_run_skips_everything(project):
    assert run(project.path, "data_processing") == (DP, [])
    assert run(project.path, "data_processing") == ([], DP)
    records = sorted(p.name for p in (project.path / "data/.cache/nodes").glob("*.json"))
    assert len(records) == len(DP)


def test_parameter_of_last_node_reruns_only_it(project, caplog):
    run(project.path, "data_processing")
    ran, skipped = run(project.path, "data_processing", params={"data_processing": {"split_salt": "other"}})
    assert ran == ["data_processing.vectorize"] and skipped == DP[:-1]
    assert ("Cache miss for node data_processing.vectorize: parameter params:data_processing.split_salt changed"
            in caplog.text)
    assert run(project.path, "data_processing", params={"data_processing": {"split_salt": "other"}}) == ([], DP)


def test_cleaning_parameter_reruns_cleaning_and_downstream_and_never_reuses_stale(project):
    run(project.path, "data_processing")
    assert report(project)["settings"]["max_length"] == 80
    ran, skipped = run(project.path, "data_processing", params={"data_processing": {"max_length": 20}})
    assert ran == DP[1:] and skipped == ["data_processing.flatten"]
    assert report(project)["settings"]["max_length"] == 20
    assert report(project)["kept_poems"] < 7
    # Back to the default: the outputs now on disk are max_length=20's, so everything re-runs.
    ran, _ = run(project.path, "data_processing")
    assert ran == DP[1:]
    assert report(project)["settings"]["max_length"] == 80 and report(project)["kept_poems"] == 7


def test_edited_raw_file_reruns_everything(project):
    run(project.path, "data_processing")
    raw = sorted((project.path / "data/01_raw/tang/poems").glob("*.json"))[0]
    poems = json.loads(raw.read_text("utf-8"))
    poems[0]["paragraphs"] = ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]
    raw.write_text(json.dumps(poems, ensure_ascii=False), "utf-8")
    write_manifest(raw.parents[1], source="an edited corpus")  # else the raw dataset refuses it
    ran, _ = run(project.path, "data_processing")
    assert ran == DP


def test_deleted_output_reruns_its_node_with_early_cutoff(project):
    run(project.path, "data_processing")
    (project.path / "data/05_model_input/vocab.json").unlink()
    ran, _ = run(project.path, "data_processing")
    # build_vocab re-creates a byte-identical vocab, so vectorize (its consumer) stays cached.
    assert ran == ["data_processing.build_vocab"]
    assert (project.path / "data/05_model_input/vocab.json").is_file()


def test_modified_output_is_not_trusted(project):
    run(project.path, "data_processing")
    path = project.path / "data/03_primary/cleaning_report.json"
    path.write_text(path.read_text("utf-8").replace('"kept_poems": 7', '"kept_poems": 99'), "utf-8")
    ran, _ = run(project.path, "data_processing")
    assert ran == ["data_processing.clean"]
    assert report(project)["kept_poems"] == 7


def test_force_switches(project, monkeypatch):
    from click.testing import CliRunner

    from tangshi_pipeline.cli import cli

    run(project.path, "data_processing")
    monkeypatch.setenv(FORCE_ENV, "1")
    assert run(project.path, "data_processing") == (DP, [])
    monkeypatch.delenv(FORCE_ENV)
    assert run(project.path, "data_processing") == ([], DP)
    result = CliRunner().invoke(
        cli, ["run", "--pipelines=data_processing", "--nodes=data_processing.frame", "--force"])
    assert result.exit_code == 0, result.output
    records = project.path / "data/.cache/nodes"
    record = json.loads(next(records.glob("data_processing.frame-*.json")).read_text())
    flatten = json.loads(next(records.glob("data_processing.flatten-*.json")).read_text())
    assert record["run_id"] != flatten["run_id"]  # only frame ran in the forced CLI run
    assert FORCE_ENV not in __import__("os").environ


def test_kedro_filters_keep_working(project):
    run(project.path, "data_processing")
    assert run(project.path, "data_processing", node_names=["data_processing.frame"]) == (
        [], ["data_processing.frame"])
    ran, skipped = run(project.path, "data_processing", params={"data_processing": {"split_salt": "x"}},
                       from_nodes=["data_processing.build_vocab"])
    assert ran == ["data_processing.vectorize"]
    assert skipped == ["data_processing.build_vocab", "data_processing.extract_keywords"]
    # Another environment reads another raw input: flatten re-runs and the rest follows its output.
    ran, _ = run(project.path, "data_processing", env="classic")
    assert ran == DP


# ------------------------------------------------------------------------ synthetic pipelines

SYNTH = '''
from kedro.pipeline import node, pipeline

OFFSET = 0


def _add(values):
    return sum(values) + OFFSET


def scale(numbers, factor):
    return [n * factor for n in numbers]


def total(scaled):
    return {"total": _add(scaled)}


def report(total, label):
    return {"line": f"{label}: {total['total']}"}


def stamp(numbers):
    return {"count": len(numbers)}


def echo(stamped):
    return stamped


def register_pipelines():
    main = pipeline([
        node(scale, ["numbers", "params:synth.factor"], "scaled", name="scale"),
        node(total, "scaled", "total", name="total"),
        node(report, ["total", "params:synth.label"], "report", name="report"),
    ])
    versioned = pipeline([
        node(stamp, "numbers", "stamped", name="stamp"),
        node(echo, "stamped", "echoed", name="echo"),
    ])
    return {"__default__": main, "synth": main, "versioned": versioned}
'''

CATALOG = '''
numbers: {type: json.JSONDataset, filepath: data/01_raw/numbers.json}
total: {type: json.JSONDataset, filepath: data/02_intermediate/total.json}
report: {type: json.JSONDataset, filepath: data/08_reporting/report.json}
stamped: {type: json.JSONDataset, filepath: data/06_models/stamped.json, versioned: true}
echoed: {type: json.JSONDataset, filepath: data/08_reporting/echoed.json}
'''


@pytest.fixture
def synth(tmp_path, monkeypatch):
    """A project whose registered pipelines are the synthetic ones, importable from a file."""
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    root = tmp_path / "synth"
    conf = root / "conf"
    (conf / "base").mkdir(parents=True)
    (conf / "local").mkdir()
    (conf / "base/catalog.yml").write_text(CATALOG, "utf-8")
    (conf / "base/parameters.yml").write_text("synth: {factor: 2, label: total}\n", "utf-8")
    shutil.copy(Path(__file__).resolve().parents[1] / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()
    (root / "data/01_raw").mkdir(parents=True)
    (root / "data/01_raw/numbers.json").write_text("[1, 2, 3]", "utf-8")
    module_dir = tmp_path / "synth_code"
    module_dir.mkdir()
    module = module_dir / "synth_registry.py"
    module.write_text(SYNTH, "utf-8")
    monkeypatch.syspath_prepend(str(module_dir))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.chdir(root)
    bootstrap_project(root)

    def load(source: str | None = None):
        if source is not None:
            module.write_text(source, "utf-8")
        sys.modules.pop("synth_registry", None)
        importlib.invalidate_caches()
        pipelines.configure("synth_registry")

    load()
    yield root, load
    sys.modules.pop("synth_registry", None)
    pipelines.configure("tangshi_pipeline.pipeline_registry")


def read(root: Path, path: str):
    return json.loads((root / path).read_text("utf-8"))


def test_memory_output_runs_only_when_a_consumer_runs(synth):
    root, _ = synth
    assert run(root) == (["scale", "total", "report"], [])
    assert run(root) == ([], ["scale", "total", "report"])
    # A parameter only `report` reads: the memory producer stays skipped.
    assert run(root, params={"synth": {"label": "sum"}}) == (["report"], ["scale", "total"])
    assert read(root, "data/08_reporting/report.json") == {"line": "sum: 12"}
    # total.json deleted: total must run, so its memory input is produced on demand; total.json
    # comes back byte-identical, so report stays cached.
    (root / "data/02_intermediate/total.json").unlink()
    ran, skipped = run(root, params={"synth": {"label": "sum"}})
    assert ran == ["scale", "total"] and skipped == ["report"]


def test_parameter_of_memory_producer_propagates(synth):
    root, _ = synth
    run(root)
    assert run(root, params={"synth": {"factor": 10}}) == (["scale", "total", "report"], [])
    assert read(root, "data/08_reporting/report.json") == {"line": "total: 60"}


def test_code_changes_rerun_the_nodes_that_reach_them(synth):
    root, load = synth
    run(root)
    load(SYNTH.replace("f\"{label}: {total['total']}\"", "f\"{label} = {total['total']}\""))
    assert run(root) == (["report"], ["scale", "total"])
    assert read(root, "data/08_reporting/report.json") == {"line": "total = 12"}
    # A helper and a constant reached through a global name.
    load(SYNTH.replace("OFFSET = 0", "OFFSET = 100"))
    ran, skipped = run(root)
    assert ran == ["scale", "total", "report"]  # `scale` is the memory producer total needs
    assert read(root, "data/08_reporting/report.json") == {"line": "total: 112"}
    # A comment elsewhere in the module changes no node.
    load(SYNTH.replace("OFFSET = 0", "OFFSET = 100") + "\n# a comment\n")
    assert run(root) == ([], ["scale", "total", "report"])


def test_versioned_output_and_pinned_load_version(synth):
    root, _ = synth
    assert run(root, "versioned") == (["stamp", "echo"], [])
    assert run(root, "versioned") == ([], ["stamp", "echo"])
    first = sorted(p.name for p in (root / "data/06_models/stamped.json").iterdir())
    assert len(first) == 1
    # A forced run writes a second version; then pinning the first re-runs the consumer only.
    import os

    os.environ[FORCE_ENV] = "1"
    try:
        run(root, "versioned", node_names=["stamp"])
    finally:
        del os.environ[FORCE_ENV]
    versions = sorted(p.name for p in (root / "data/06_models/stamped.json").iterdir())
    assert len(versions) == 2
    assert run(root, "versioned") == (["echo"], ["stamp"])  # echo last read the first version
    assert run(root, "versioned") == ([], ["stamp", "echo"])
    pinned = {"stamped": versions[0]}
    assert run(root, "versioned", node_names=["echo"], load_versions=pinned) == (["echo"], [])
    assert run(root, "versioned", node_names=["echo"], load_versions=pinned) == ([], ["echo"])
    assert run(root, "versioned") == (["echo"], ["stamp"])  # back to the latest version
    # The latest version deleted: the producer's record names it, so the producer re-runs.
    shutil.rmtree(root / "data/06_models/stamped.json" / versions[1])
    assert run(root, "versioned") == (["stamp", "echo"], [])


# ------------------------------------------------------------------------ kedro models


def test_models_command_lists_versions_with_metrics(project):
    from click.testing import CliRunner
    from kedro.io import Version

    from tangshi_pipeline.cli import cli
    from tangshi_pipeline.plumbing.datasets import ModelArtifact
    from tangshi_pipeline.poet.artifact import Artifact
    from tangshi_pipeline.poet.model import CharRNN, ModelConfig

    for version, ppl in [("2026-01-01T00.00.00.000Z", 300.5), ("2026-02-01T00.00.00.000Z", 120.25)]:
        ModelArtifact("data/06_models/poet", version=Version(None, version)).save(Artifact(
            CharRNN(ModelConfig(vocab_size=12, embedding_dim=4, hidden_dim=4, num_layers=1)),
            {"vocab_fingerprint": "abc", "training": {}, "metrics": {"val": {"perplexity": ppl}}}))
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("[\n {"):])
    assert [r["version"] for r in rows] == ["2026-02-01T00.00.00.000Z", "2026-01-01T00.00.00.000Z"]
    assert rows[0]["metrics"] == {"val": {"perplexity": 120.25}}
    table = CliRunner().invoke(cli, ["models"])
    assert table.exit_code == 0 and "val.perplexity" in table.output and "120.2" in table.output


# ------------------------------------------------------------------------ units


def test_code_fingerprint_follows_helpers_and_constants(tmp_path, monkeypatch):
    from tangshi_pipeline.plumbing.cache import CodeFingerprint

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    source = "import re\nPAT = re.compile('a+')\ndef helper(x):\n    return PAT.sub('', x)\ndef f(x):\n    return helper(x)\n"
    digests = []
    for variant in (source, source.replace("'a+'", "'b+'"), source + "\ndef unrelated():\n    pass\n"):
        (tmp_path / "fp_mod.py").write_text(variant, "utf-8")
        sys.modules.pop("fp_mod", None)
        importlib.invalidate_caches()
        digests.append(CodeFingerprint().digest(importlib.import_module("fp_mod").f))
    sys.modules.pop("fp_mod", None)
    assert digests[0] != digests[1]  # a constant the helper uses
    assert digests[0] == digests[2]  # an unrelated function in the same module
