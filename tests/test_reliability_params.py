"""Every bad parameter a user can type is rejected by typed validation, naming itself, before any
node runs (the ValidateParameters hook)."""

from __future__ import annotations

import pytest

from tangshi_pipeline.poet.params import ParameterError, validate_all
from tests.helpers import kedro, one_line, shipped_params

DEFAULTS = {section: shipped_params(section)
            for section in ("data_processing", "training", "generate")}


def with_value(section: str, key: str, value) -> dict:
    params = {s: dict(v) for s, v in DEFAULTS.items()}
    params[section][key] = value
    return params


def test_the_shipped_parameters_are_valid():
    validate_all(DEFAULTS)


@pytest.mark.parametrize("section, key, value, message", [
    ("training", "cell", "transformer", "training.cell = 'transformer'"),
    ("training", "embedding_dim", 0, "training.embedding_dim = 0"),
    ("training", "hidden_dim", -128, "training.hidden_dim = -128"),
    ("training", "num_layers", 0, "training.num_layers = 0"),
    ("training", "epochs", 0, "training.epochs = 0"),
    ("training", "batch_size", -1, "training.batch_size = -1"),
    ("training", "learning_rate", 0, "training.learning_rate = 0"),
    ("training", "dropout", 1.5, "training.dropout = 1.5"),
    ("training", "optimizer", "sgd", "training.optimizer = 'sgd'"),
    ("training", "device", "tpu", "training.device = 'tpu'"),
    ("training", "max_minutes", -5, "training.max_minutes = -5"),
    ("generate", "temperature", 0, "generate.temperature = 0"),
    ("generate", "temperature", -1.0, "generate.temperature = -1.0"),
    ("generate", "top_p", 0, "generate.top_p = 0"),
    ("generate", "top_p", 1.2, "generate.top_p = 1.2"),
    ("generate", "top_k", -3, "generate.top_k = -3"),
    ("generate", "form", "sonnet", "generate.form = 'sonnet'"),
    ("generate", "num_samples", 0, "generate.num_samples = 0"),
    ("generate", "strategy", "topk", "generate.strategy = 'topk'"),
    ("generate", "beam_size", 0, "generate.beam_size = 0"),
    ("generate", "no_repeat_ngram", -1, "generate.no_repeat_ngram = -1"),
    ("generate", "begin_words", ["日出"], "generate.begin_words.0 = '日出'"),
    ("data_processing", "max_length", 0, "data_processing.max_length = 0"),
    ("data_processing", "min_count", 0, "data_processing.min_count = 0"),
    ("data_processing", "start_token", "", "data_processing.start_token = ''"),
    ("data_processing", "unknown_key", 1, "data_processing.unknown_key = 1"),
])
def test_bad_values_are_named(section, key, value, message):
    with pytest.raises(ParameterError) as err:
        validate_all(with_value(section, key, value))
    assert message in str(err.value)
    assert f"parameters_{section}.yml" in str(err.value)


def test_acrostic_length_must_fit_the_form():
    params = with_value("generate", "form", "qijue")
    params["generate"]["acrostic"] = "春江花"
    with pytest.raises(ParameterError, match="acrostic '春江花' has 3 characters but form qijue has 4 lines"):
        validate_all(params)


def test_validation_runs_before_any_node(project):
    with pytest.raises(ParameterError, match="training.cell = 'transformer'"):
        project.run(params={"training.cell": "transformer"})  # the default pipeline: data_processing first
    assert not (project.path / "data/02_intermediate/poems.parquet").exists()


# ------------------------------------------- values that passed validation, then crashed (15.9)

BOUNDED = [  # (section, key, value, what the message must say)
    ("generate", "device", "meta", "generate.device = 'meta': must be cpu, cuda, cuda:N (N: a GPU index) or mps"),
    ("generate", "device", "cuda:x", "generate.device = 'cuda:x': must be cpu, cuda, cuda:N"),
    ("training", "seed", 2**70, f"training.seed = {2**70}: must be between 0 and 4294967295"),
    ("training", "seed", -1, "training.seed = -1: must be between 0 and 4294967295"),
    ("generate", "seed", 2**64, f"generate.seed = {2**64}: must be between 0 and 4294967295"),
    ("training", "batch_size", 10**9, "training.batch_size = 1000000000: must be between 1 and 8192"),
    ("generate", "batch_size", 10**9, "generate.batch_size = 1000000000: must be between 1 and 65536"),
    ("training", "hidden_dim", 10**5, "training.hidden_dim = 100000: must be between 1 and 4096"),
    ("training", "embedding_dim", 10**5, "training.embedding_dim = 100000: must be between 1 and 4096"),
    ("training", "num_layers", 100, "training.num_layers = 100: must be between 1 and 8"),
    ("generate", "num_samples", 100_001, "generate.num_samples = 100001: must be between 1 and 100000"),
    ("generate", "beam_size", 65, "generate.beam_size = 65: must be between 1 and 64"),
    ("generate", "num_samples", 100_000, "generate.num_samples = 100000 with 7 begin words makes 700,000 poems, "
                                         "over the 100,000 one run may write: allowed 1..14285 with 7 begin words"),
]


@pytest.mark.parametrize("section, key, value, message", BOUNDED)
def test_values_beyond_the_limits_are_named_with_the_range(section, key, value, message):
    with pytest.raises(ParameterError) as err:
        validate_all(with_value(section, key, value))
    assert message in str(err.value)


@pytest.mark.parametrize("section, key, value", [
    ("generate", "device", "cuda:1"), ("generate", "device", "mps"), ("training", "seed", 2**32 - 1),
    ("training", "hidden_dim", 4096), ("training", "batch_size", 8192), ("generate", "batch_size", 65536),
    ("generate", "beam_size", 64),
])
def test_values_at_the_limits_are_accepted(section, key, value):
    validate_all(with_value(section, key, value))


def test_a_beam_returns_at_most_beam_size_poems_per_begin_word():
    params = with_value("generate", "strategy", "beam")
    params["generate"] |= {"beam_size": 4, "num_samples": 5}
    with pytest.raises(ParameterError, match="num_samples = 5 is more than beam_size = 4: a beam returns at most"):
        validate_all(params)
    params["generate"]["num_samples"] = 4
    validate_all(params)
    params["generate"] |= {"strategy": "sample", "num_samples": 5}
    validate_all(params)  # sampling: num_samples draws, whatever beam_size


def test_one_begin_word_may_have_the_whole_poem_budget():
    params = with_value("generate", "num_samples", 100_000)
    params["generate"]["begin_words"] = ["日"]
    validate_all(params)
    params["generate"] |= {"begin_words": ["日", "月"], "acrostic": "春江花月", "form": "qijue"}
    validate_all(params)  # an acrostic writes num_samples poems, whatever the begin words


@pytest.mark.parametrize("pipeline, overrides, messages", [
    ("__default__", f"training.seed={2**70},training.batch_size={10**9},training.hidden_dim={10**5}",
     [f"training.seed = {2**70}: must be between 0 and 4294967295",
      "training.batch_size = 1000000000: must be between 1 and 8192",
      "training.hidden_dim = 100000: must be between 1 and 4096"]),
    ("generate", "generate.device=meta", ["generate.device = 'meta': must be cpu, cuda, cuda:N"]),
    ("generate", "generate.num_samples=100000", ["generate.num_samples = 100000 with 7 begin words",
                                                 "allowed 1..14285 with 7 begin words"]),
])
def test_kedro_run_rejects_them_before_any_node(project, pipeline, overrides, messages):
    result = kedro(project.path, "run", f"--pipeline={pipeline}", f"--params={overrides}")
    assert result.returncode != 0
    log = one_line(result)
    for message in messages:
        assert message in log
    assert "Running node" not in log
    assert not (project.path / "data/02_intermediate/poems.parquet").exists()
