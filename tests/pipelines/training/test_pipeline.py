"""The training pipeline on an in-memory catalog, and end to end through a KedroSession on the
fixture corpus (versioned models, checkpoints on disk, resuming), with a tiny model."""

import json

import pandas as pd
import pytest
import torch
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from tangshi_pipeline.pipelines.training import create_pipeline
from tangshi_pipeline.poet.artifact import Artifact
from tangshi_pipeline.poet.checkpoints import CheckpointStore
from tests.helpers import memory_catalog, shipped_params
from tests.helpers_models import POEMS, keywords_of, vectors_of, vocab_of

TINY = {"embedding_dim": 8, "hidden_dim": 16, "num_layers": 2, "dropout": 0.1, "batch_size": 2,
        "epochs": 2, "max_minutes": None, "device": "cpu", "learning_rate": 0.01}


def run(project, **overrides):
    return project.run("training", params={"training": {**TINY, **overrides}})


def load_model(project) -> Artifact:
    return project.catalog().load("model")


def test_training_pipeline_writes_a_versioned_model_metrics_history_and_curve(project):
    project.run("data_processing")
    run(project)
    data = project.path / "data"
    versions = sorted((data / "06_models/poet").iterdir())
    assert len(versions) == 1 and (versions[0] / "poet/weights.safetensors").is_file()
    artifact = load_model(project)
    vocab = json.loads((data / "05_model_input/vocab.json").read_text("utf-8"))
    assert artifact.vocab_fingerprint == vocab["fingerprint"]
    assert artifact.model.config.hidden_dim == 16 and artifact.model.config.vocab_size == vocab["size"]
    assert artifact.meta["training"]["epochs_done"] == 2 and artifact.meta["training"]["stopped"] == "finished"
    assert artifact.meta["vocab"]["specials"]["start"] == "G"
    assert artifact.meta["metrics"]["train_loss"] > 0
    history = pd.read_csv(data / "08_reporting/training_history.csv")
    assert history["epoch"].tolist() == [1, 2] and history["kind"].tolist() == ["epoch", "epoch"]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    metrics = json.loads((data / "08_reporting/training_metrics.json").read_text("utf-8"))
    assert set(metrics) >= {"val", "test"}
    for split in ("val", "test"):  # the fixture corpus's splits may be empty: then null, not a crash
        m = metrics[split]
        assert (m["perplexity"] is None) == (m["tokens"] == 0)
    assert (data / "08_reporting/training_curve.png").stat().st_size > 1000
    assert list((data / "06_models/checkpoints").glob("step-*/state.safetensors"))


def test_rerun_with_more_epochs_continues_and_matches_a_straight_run(project):
    project.run("data_processing")
    constant = {"lr_schedule": "constant"}  # with cosine, 1 then 2 more epochs are two cycles, not one of 3
    run(project, epochs=1, **constant)
    run(project, epochs=3, **constant)  # continues from the epoch-1 checkpoint
    resumed = load_model(project)
    assert resumed.meta["training"]["resumed_from"] is not None
    run(project, epochs=3, resume=False, **constant)  # deletes the checkpoints, trains from scratch
    straight = load_model(project)
    assert straight.meta["training"]["resumed_from"] is None
    assert len(list((project.path / "data/06_models/poet").iterdir())) == 3  # every run is a version
    for (k, a), (_, b) in zip(resumed.model.state_dict().items(), straight.model.state_dict().items()):
        assert torch.equal(a, b), k
    history = pd.read_csv(project.path / "data/08_reporting/training_history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]


def test_changed_shape_refuses_the_checkpoint_with_a_clear_message(project):
    project.run("data_processing")
    run(project, epochs=1)
    with pytest.raises(Exception, match=r"hidden_dim: 16 → 24.*training.resume=false"):
        run(project, epochs=1, hidden_dim=24)
    run(project, epochs=1, hidden_dim=24, resume=False)
    assert load_model(project).model.config.hidden_dim == 24


def test_bad_training_parameter_is_named_before_any_node_runs(project):
    project.run("data_processing")
    with pytest.raises(Exception, match=r"training.cell = 'transformer'"):
        run(project, cell="transformer")
    assert not (project.path / "data/06_models/poet").exists()


def test_history_and_curve_get_a_train_loss_row_every_200_steps(project):
    project.run("data_processing")
    run(project, batch_size=1, epochs=30)  # 7 training poems: 210 steps
    history = pd.read_csv(project.path / "data/08_reporting/training_history.csv")
    steps = history[history["kind"] == "step"]
    assert steps["step"].tolist() == [200] and steps["val_loss"].isna().all() and steps["train_loss"].gt(0).all()
    assert history.loc[history["kind"] == "epoch", "epoch"].tolist() == list(range(1, 31))
    assert load_model(project).meta["training"]["epochs_done"] == 30  # from the last epoch row
    assert (project.path / "data/08_reporting/training_curve.png").stat().st_size > 1000


def test_training_pipeline_in_memory(tmp_path):
    vocab = vocab_of(POEMS)
    vectors = vectors_of(vocab, POEMS, ["train", "train", "train", "val", "test"])
    keywords = keywords_of(vocab, [["明月"], ["山", "海"], ["山"], ["秋"], ["雪", "江"]])
    catalog = memory_catalog(
        {"vectors": vectors, "vocab": vocab.to_json(), "training_checkpoints": CheckpointStore(tmp_path),
         "poem_keywords": keywords},
        {"training": {**shipped_params("training"), **TINY, "threads": 1}})
    SequentialRunner().run(create_pipeline(), catalog)
    metrics = catalog.load("training_metrics")
    assert metrics["epochs_done"] == 2 and metrics["architecture"]["hidden_dim"] == 16
    assert metrics["val"]["poems"] == metrics["test"]["poems"] == 1 and metrics["val"]["perplexity"] > 1
    # a themed model (training.keyword_dropout < 1): validation loss with and without the keywords
    assert metrics["themes"]["keyword_dropout"] == shipped_params("training")["keyword_dropout"]
    assert metrics["val"]["with_keywords"]["perplexity"] > 1 and metrics["val"]["with_keywords"]["loss"] != \
        metrics["val"]["loss"]
    assert isinstance(catalog.load("training_curve"), Figure)
