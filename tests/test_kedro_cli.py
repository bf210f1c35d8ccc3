"""What `kedro run` shows: Kedro's warnings (known third-party noise silenced), a bad parameter as
one line, and where the poems are at the end. Each test runs `kedro` in a throw-away project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import kedro, lay_out_project

TINY = ("training.embedding_dim=8,training.hidden_dim=16,training.num_layers=1,training.epochs=1,"
        "training.max_minutes=null,training.device=cpu,training.batch_size=4,training.threads=1,"
        "generate.begin_words=[日]")


@pytest.fixture
def root(tmp_path) -> Path:
    return lay_out_project(tmp_path / "project")


def kedro_run(root: Path, *args: str) -> tuple[int, str]:
    result = kedro(root, "run", *args)
    return result.returncode, result.stdout + result.stderr


def test_kedro_deprecations_reach_the_log_and_known_noise_does_not(root):
    code, out = kedro_run(root, "--pipeline=data_processing", "--async")
    assert code == 0, out[-3000:]
    assert "KedroDeprecationWarning: Option '--pipeline' is deprecated" in out
    assert "KedroDeprecationWarning: Option '--async' is deprecated" in out
    assert "register_new_resolver() is deprecated" not in out  # omegaconf's, raised by Kedro's code


def assert_one_short_message(code: int, out: str, message: str, max_lines: int) -> None:
    """Exit code ≠ 0, no traceback, and the message ends the output (after Kedro's start-up log)."""
    lines = out.strip().splitlines()
    assert code != 0
    assert message in " ".join(lines[-3:]) and "Traceback" not in out, out
    assert len(lines) <= max_lines, out


def test_a_bad_parameter_is_one_short_message(root):
    code, out = kedro_run(root, "--params=training.hidden_dim=0")
    assert_one_short_message(code, out, (
        "invalid parameter training.hidden_dim = 0: must be between 1 and 4096 "
        "(set it in conf/base/parameters_training.yml or with --params)"), max_lines=8)
    assert not any((root / "data/02_intermediate").iterdir())  # nothing ran

    code, verbose = kedro_run(root, "--params=training.hidden_dim=0", "--verbose")
    assert code != 0 and "Traceback" in verbose and "training.hidden_dim = 0" in verbose


def test_a_bad_input_file_and_an_unknown_node_are_one_short_message(root):
    (root / "data/01_raw/tang/poems/poet.tang.1000.json").write_text('[{"id": "x", "author"', "utf-8")
    code, out = kedro_run(root, "--pipelines=data_processing")
    assert_one_short_message(code, out, "poems/poet.tang.1000.json changed since the fetch (its SHA-256 "
                             "differs). Run `make data` to repair it", max_lines=16)
    code, out = kedro_run(root, "--nodes=vectorize")  # the name before pipelines had namespaces
    assert_one_short_message(code, out, "Did you mean: ['data_processing.vectorize']?", max_lines=8)


def test_a_run_that_makes_poems_ends_with_them(root):
    code, out = kedro_run(root, f"--params={TINY}")
    assert code == 0, out[-3000:]
    (version,) = (root / "data/07_model_output/generated_poems.json").iterdir()
    poems = json.loads((version / "generated_poems.json").read_text("utf-8"))
    end = out[out.index("Pipeline execution completed"):]
    assert f"{len(poems)} poem(s) in data/08_reporting/generated_poems.md" in end
    assert all(line in end for line in poems[0]["lines"])

    code, out = kedro_run(root, "--pipelines=data_processing")  # no poems in this run: nothing shown
    assert code == 0 and "poem(s) in" not in out
