"""Each training node called directly on tiny in-memory inputs: five quatrains as a vectors table,
their vocabulary, a tiny model."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tangshi_pipeline.pipelines.training.nodes import evaluate_model, train, training_curve
from tangshi_pipeline.poet.artifact import Artifact
from tangshi_pipeline.poet.checkpoints import CheckpointStore
from tests.helpers import shipped_params
from tests.helpers_models import POEMS, tiny_model, vectors_of, vocab_of

VOCAB = vocab_of(POEMS)
TINY = {"embedding_dim": 8, "hidden_dim": 16, "num_layers": 2, "batch_size": 2, "epochs": 3,
        "max_minutes": None, "device": "cpu", "threads": 1, "learning_rate": 0.01}


def vectors(splits: list[str]) -> pd.DataFrame:
    return vectors_of(VOCAB, POEMS, splits)


def params(**overrides) -> dict:
    return {**shipped_params("training"), **TINY, **overrides}


# ------------------------------------------------------------------------------------- train

def test_train_returns_a_model_of_this_vocabulary_and_a_history_per_epoch(tmp_path):
    threads = torch.get_num_threads()
    model, history = train(vectors(["train"] * 3 + ["val", "test"]), VOCAB.to_json(), params(threads=threads + 1),
                           CheckpointStore(tmp_path))
    assert torch.get_num_threads() == threads  # torch's settings are put back after the run
    assert list(tmp_path.glob("step-*"))  # a checkpoint to continue from
    assert not model.model.training and model.meta["vocab"]["size"] == len(VOCAB)
    assert isinstance(model, Artifact) and model.vocab_fingerprint == VOCAB.fingerprint
    config = model.model.config
    assert (config.vocab_size, config.hidden_dim, config.embedding_dim) == (len(VOCAB), 16, 8)
    assert model.meta["training"]["epochs_done"] == 3 and model.meta["training"]["stopped"] == "finished"
    assert history["epoch"].tolist() == [1, 2, 3] and history["kind"].tolist() == ["epoch"] * 3
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["val_loss"].notna().all() and model.meta["metrics"]["val_loss"] == history["val_loss"].iloc[-1]


def test_train_without_training_rows_names_the_split_parameter(tmp_path):
    with pytest.raises(ValueError, match="data_processing.split"):
        train(vectors(["val"] * 5), VOCAB.to_json(), params(), CheckpointStore(tmp_path))


# ---------------------------------------------------------------------------- evaluate_model

def model_of(vocab_fingerprint: str, epochs_done: int = 4) -> Artifact:
    return Artifact(tiny_model(len(VOCAB), seed=1), {"vocab_fingerprint": vocab_fingerprint,
                                                      "training": {"epochs_done": epochs_done}})


def mean_nll(model: torch.nn.Module, rows: pd.Series) -> float:
    """The reference: mean negative log-likelihood per predicted token, one poem at a time."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ids in rows:
            ids = torch.as_tensor(ids, dtype=torch.long)[None]
            logits, _ = model(ids[:, :-1])
            total += F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
            tokens += ids.shape[1] - 1
    return total / tokens


def test_evaluate_gives_the_held_out_loss_perplexity_and_bits_per_character():
    table = vectors(["train", "val", "val", "test", "train"])
    model = model_of(VOCAB.fingerprint)
    metrics = evaluate_model(model, table, VOCAB.to_json(), device="cpu", threads=1, precision="fp32")
    for split, poems in (("val", 2), ("test", 1)):
        m = metrics[split]
        rows = table.loc[table["split"] == split, "ids"]
        assert m["poems"] == poems and m["tokens"] == sum(len(ids) - 1 for ids in rows)
        assert m["loss"] == pytest.approx(mean_nll(model.model, rows), rel=1e-5)
        assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
        assert m["bits_per_char"] == pytest.approx(m["loss"] / math.log(2))
    assert metrics["epochs_done"] == 4 and metrics["architecture"]["hidden_dim"] == 32


def test_evaluate_an_empty_split_is_null_not_a_crash():
    metrics = evaluate_model(model_of(VOCAB.fingerprint), vectors(["train"] * 4 + ["val"]), VOCAB.to_json(),
                             device="cpu", threads=1, precision="fp32")
    assert metrics["test"] == {"poems": 0, "tokens": 0, "loss": None, "perplexity": None, "bits_per_char": None}


def test_evaluate_refuses_a_model_of_another_vocabulary():
    with pytest.raises(ValueError, match="retrain"):
        evaluate_model(model_of("0" * 64), vectors(["val"] * 5), VOCAB.to_json(), device="cpu", threads=1,
                       precision="fp32")


# ---------------------------------------------------------------------------- training_curve

def history(steps: bool, val: bool) -> pd.DataFrame:
    rows = [{"epoch": e, "step": 10 * e, "tokens": 100 * e, "elapsed_s": e, "train_loss": 5.0 - e,
             "val_loss": 5.5 - e if val else None, "val_perplexity": None, "tokens_per_s": 1000.0,
             "kind": "epoch"} for e in (1, 2, 3)]
    if steps:
        rows.insert(2, {**rows[1], "epoch": 2.5, "step": 25, "val_loss": None, "kind": "step"})
    return pd.DataFrame(rows)


def labels(fig) -> list[str]:
    loss_ax, _ = fig.axes
    return [line.get_label() for line in loss_ax.get_lines()]


def test_curve_plots_loss_per_epoch_validation_and_speed():
    fig = training_curve(history(steps=False, val=True))
    loss_ax, speed_ax = fig.axes
    assert labels(fig) == ["train (epoch mean)", "validation"]
    assert list(loss_ax.get_lines()[1].get_ydata()) == [4.5, 3.5, 2.5]
    assert list(speed_ax.get_lines()[0].get_ydata()) == [1.0, 1.0, 1.0]  # thousand tokens / s


def test_curve_adds_the_step_rows_and_leaves_out_a_validation_it_does_not_have():
    fig = training_curve(history(steps=True, val=False))
    assert labels(fig) == ["train (steps since the previous point)", "train (epoch mean)"]
    assert len(fig.axes[1].get_lines()[0].get_ydata()) == 3  # speed: epoch rows only


def test_curve_of_a_history_written_before_step_rows_existed():
    old = history(steps=False, val=True).drop(columns="kind")
    assert labels(training_curve(old)) == ["train (epoch mean)", "validation"]
