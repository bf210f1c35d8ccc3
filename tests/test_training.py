"""The training loop: resume after an interruption gives the weights of an uninterrupted run,
incompatible checkpoints are refused, checkpoints are complete and pruned."""


import numpy as np
import pytest
import torch

from tangshi_pipeline.batching import Buckets
from tangshi_pipeline.datasets import CheckpointError, CheckpointStore
from tangshi_pipeline.model import ModelConfig
from tangshi_pipeline.params import ParameterError, TrainingParams
from tangshi_pipeline.training import fit, resolve_device
from tangshi_pipeline.vocab import END_ID, START_ID
from tests.conftest import shipped_params

V = 30
CPU = torch.device("cpu")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    seqs = [np.array([START_ID, *rng.integers(4, V, size=k), END_ID]) for k in rng.choice([4, 6, 6, 9], 40)]
    return Buckets(seqs[:32], 5), Buckets(seqs[32:], 8)


DEFAULTS = shipped_params("training")


def params(**kw):
    base = dict(**DEFAULTS) | dict(embedding_dim=6, hidden_dim=10, num_layers=2, dropout=0.2, batch_size=5, epochs=3,
                max_minutes=None, checkpoint_minutes=None, device="cpu", learning_rate=0.01)
    return TrainingParams(**{**base, **kw})


def config(p):
    return ModelConfig(V, p.cell, p.embedding_dim, p.hidden_dim, p.num_layers, p.dropout)


def weights(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


class Interrupt:
    def __init__(self, at):
        self.at = at

    def __call__(self, pos, model):
        if pos.global_step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, data, optimizer):
    train, val = data
    p = params(optimizer=optimizer)
    straight = fit(config(p), "fp", train, val, p, CheckpointStore(tmp_path / "a"), CPU)

    store = CheckpointStore(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the middle of the second epoch
        fit(config(p), "fp", train, val, p, store, CPU, on_step=Interrupt(len(train) + 3))
    assert store.latest().meta["reason"] == "interrupted"
    resumed = fit(config(p), "fp", train, val, p, store, CPU)
    assert resumed.resumed_from is not None
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(resumed)[k]), k
    assert resumed.position.global_step == straight.position.global_step == 3 * len(train)
    assert [h["epoch"] for h in resumed.position.history] == [1, 2, 3]
    assert [h["train_loss"] for h in resumed.position.history] == \
        pytest.approx([h["train_loss"] for h in straight.position.history], rel=1e-6)


def test_more_epochs_continue_from_the_final_checkpoint(tmp_path, data):
    train, val = data
    store = CheckpointStore(tmp_path / "c")
    fit(config(params()), "fp", train, val, params(epochs=2), store, CPU)
    again = fit(config(params()), "fp", train, val, params(epochs=2), store, CPU)
    assert again.position.epoch == 2 and again.position.global_step == 2 * len(train)  # nothing left to do
    longer = fit(config(params()), "fp", train, val, params(epochs=3), store, CPU)
    straight = fit(config(params()), "fp", train, val, params(epochs=3), None, CPU)
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(longer)[k]), k
    assert len(list((tmp_path / "c").glob("step-*"))) == 2  # the newest two are kept


def test_incompatible_checkpoint_is_refused_and_resume_false_starts_fresh(tmp_path, data):
    train, val = data
    store = CheckpointStore(tmp_path / "d")
    fit(config(params()), "fp", train, val, params(epochs=1), store, CPU)
    wider = params(epochs=1, hidden_dim=12)
    with pytest.raises(CheckpointError, match=r"hidden_dim: 10 → 12.*training.resume=false"):
        fit(config(wider), "fp", train, val, wider, store, CPU)
    with pytest.raises(CheckpointError, match="vocab_fingerprint"):
        fit(config(params()), "other", train, val, params(epochs=1), store, CPU)
    fresh = fit(config(wider), "fp", train, val, params(epochs=1, hidden_dim=12, resume=False), store, CPU)
    assert fresh.resumed_from is None
    assert store.latest().meta["compatibility"]["architecture"]["hidden_dim"] == 12


def test_budget_stops_with_a_checkpoint(tmp_path, data):
    train, val = data
    store = CheckpointStore(tmp_path / "e")
    result = fit(config(params()), "fp", train, val, params(max_minutes=1e-9), store, CPU)
    assert result.stopped == "budget" and result.position.global_step == 1
    assert store.latest().meta["reason"] == "budget"
    assert result.position.history[-1]["epoch"] == pytest.approx(1 / len(train), abs=1e-3)


def test_half_written_checkpoint_is_ignored(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(3, {"x": 1}, {"w": torch.ones(2)})
    (tmp_path / ".step-0000000009.abc.tmp").mkdir()  # a save killed half-way
    assert store.latest().meta == {"x": 1}


def test_unavailable_device_is_named():
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="training.device = 'cuda'"):
            resolve_device("cuda")
    assert resolve_device("cpu") == CPU


def test_checkpoint_dataset_loads_a_store_and_previews_the_newest(tmp_path, data):
    from tangshi_pipeline.datasets import TrainingCheckpoints

    dataset = TrainingCheckpoints(str(tmp_path / "ck"))
    assert "none yet" in dataset.preview()
    train, val = data
    fit(config(params()), "fp", train, val, params(epochs=1), dataset.load(), CPU)
    assert '"epoch": 1' in dataset.preview() and "history" not in dataset.preview()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data):
    train, val = data
    store = CheckpointStore(tmp_path / "nan")
    p = params(epochs=3)
    fit(config(p), "fp", train, val, params(epochs=1), store, CPU)  # a good checkpoint after epoch 1
    good = store.latest()

    def poison(pos, model):  # the weights blow up in the middle of epoch 2
        if pos.global_step == len(train) + 2:
            with torch.no_grad():
                model.head.weight.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match=r"non-finite .* by global step \d+ .*step-0+\d+"):
        fit(config(p), "fp", train, val, p, store, CPU, on_step=poison)
    kept = store.latest()
    assert kept.path == good.path  # nothing saved after the weights went bad
    assert all(torch.isfinite(t).all() for k, t in kept.tensors.items() if t.is_floating_point())
