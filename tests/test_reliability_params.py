"""Every bad parameter a user can type is rejected by typed validation, naming itself, before any
node runs (the ValidateParameters hook)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tangshi_pipeline.params import ParameterError, validate_all
from tests.conftest import shipped_params

ROOT = Path(__file__).resolve().parents[1]
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
    ("generate", "strategy", "beam", "generate.strategy = 'beam'"),
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
