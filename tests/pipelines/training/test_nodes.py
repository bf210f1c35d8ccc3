"""The train node on a tiny in-memory vectors table: the model with what it was trained on, the
history, torch's settings left as they were, and a table without training rows named."""

import numpy as np
import pandas as pd
import pytest
import torch

from tangshi_pipeline.pipelines.training.nodes import train
from tangshi_pipeline.poet.checkpoints import CheckpointStore
from tangshi_pipeline.poet.model import Artifact
from tangshi_pipeline.poet.vocab import Vocab
from tests.conftest import shipped_params

POEMS = ["G床前明月光E", "G疑是地上霜E", "G举头望明月E", "G低头思故乡E", "G春眠不觉晓E", "G处处闻啼鸟E"]


@pytest.fixture
def vocab() -> dict:
    return Vocab.build(POEMS, "G", "E").to_json()


def vectors(vocab: dict, splits: list[str]) -> pd.DataFrame:
    index = Vocab.from_json(vocab).index
    return pd.DataFrame({"split": splits, "ids": [np.array([index[c] for c in poem], np.int32) for poem in POEMS]})


def params(**overrides) -> dict:
    tiny = {"embedding_dim": 8, "hidden_dim": 16, "batch_size": 2, "epochs": 2, "max_minutes": None,
            "device": "cpu", "threads": 1, "learning_rate": 0.01}
    return {**shipped_params("training"), **tiny, **overrides}


def test_train_returns_the_model_with_what_it_was_trained_on_and_the_history(tmp_path, vocab):
    threads = torch.get_num_threads()
    model, history = train(vectors(vocab, ["train"] * 4 + ["val"] * 2), vocab, params(threads=threads + 1),
                           CheckpointStore(tmp_path))
    assert torch.get_num_threads() == threads  # torch's settings are put back
    assert isinstance(model, Artifact) and not model.model.training
    assert model.vocab_fingerprint == vocab["fingerprint"]
    assert model.meta["vocab"] == {"size": vocab["size"], "specials": vocab["specials"]}
    done = model.meta["training"]
    assert (done["epochs_done"], done["steps"], done["device"], done["stopped"]) == (2, 4, "cpu", "finished")
    assert history.columns.tolist() == ["epoch", "step", "tokens", "elapsed_s", "train_loss", "val_loss",
                                        "val_perplexity", "tokens_per_s", "kind"]
    assert history["kind"].tolist() == ["epoch", "epoch"] and history["epoch"].tolist() == [1, 2]
    assert model.meta["metrics"]["val_loss"] == history["val_loss"].iloc[-1] > 0
    assert list(tmp_path.glob("step-*"))  # a checkpoint to continue from


def test_a_vectors_table_without_training_rows_is_named(vocab):
    with pytest.raises(ValueError, match=r"no 'train' rows: check data_processing.split"):
        train(vectors(vocab, ["val"] * 6), vocab, params(), None)
