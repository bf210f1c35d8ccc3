"""The training loop: resume after an interruption gives the weights of an uninterrupted run,
incompatible checkpoints are refused, checkpoints are complete and pruned."""

import errno
import hashlib
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tangshi_pipeline.poet.batching import Buckets
from tangshi_pipeline.poet.checkpoints import CheckpointError, CheckpointStore
from tangshi_pipeline.poet.devices import resolve_device
from tangshi_pipeline.poet.model import ModelConfig
from tangshi_pipeline.poet.params import ParameterError, TrainingParams
from tangshi_pipeline.poet.training import fit, learning_rate
from tangshi_pipeline.poet.vocab import END_ID, START_ID
from tests.helpers import shipped_params

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
                max_minutes=None, checkpoint_minutes=None, device="cpu", learning_rate=0.01, warmup_steps=3)
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
    p = partial(params, lr_schedule="constant")  # a cosine cycle over 2 epochs then 1 is not one over 3
    fit(config(p()), "fp", train, val, p(epochs=2), store, CPU)
    again = fit(config(p()), "fp", train, val, p(epochs=2), store, CPU)
    assert again.position.epoch == 2 and again.position.global_step == 2 * len(train)  # nothing left to do
    longer = fit(config(p()), "fp", train, val, p(epochs=3), store, CPU)
    straight = fit(config(p()), "fp", train, val, p(epochs=3), None, CPU)
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
    from tangshi_pipeline.plumbing.datasets import TrainingCheckpoints

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


def test_a_non_finite_checkpoint_is_skipped_for_the_older_finite_one(tmp_path, data, caplog):
    train, val = data
    store = CheckpointStore(tmp_path / "skip")
    p = params(epochs=2, checkpoint_every=1, lr_schedule="constant")  # one cycle over 1 epoch, then 2 would differ
    fit(config(p), "fp", train, val, params(epochs=1, lr_schedule="constant"), store, CPU)
    good = store.latest()
    poisoned = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in good.tensors.items()}
    store.save(good.meta["position"]["global_step"] + 1, good.meta, poisoned)  # as older code could leave
    resumed = fit(config(p), "fp", train, val, p, store, CPU)
    assert resumed.resumed_from == str(good.path)
    assert "holds non-finite values" in caplog.text
    straight = fit(config(p), "fp", train, val, p, None, CPU)
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(resumed)[k]), k


def test_only_non_finite_checkpoints_are_refused_with_what_to_do(tmp_path, data):
    train, val = data
    store = CheckpointStore(tmp_path / "allbad")
    store.save(4, {"x": 1}, {"model.w": torch.tensor([1.0, float("inf")])})
    with pytest.raises(CheckpointError, match=r"step-0000000004.*non-finite.*training.resume=false"):
        fit(config(params()), "fp", train, val, params(epochs=1), store, CPU)
    fresh = fit(config(params()), "fp", train, val, params(epochs=1, resume=False), store, CPU)
    assert fresh.resumed_from is None and store.latest() is not None


def test_weights_that_turn_non_finite_are_never_saved(tmp_path, data):
    train, val = data
    store = CheckpointStore(tmp_path / "inf")
    p = params(epochs=3, checkpoint_every=1)
    fit(config(p), "fp", train, val, params(epochs=1), store, CPU)
    good = store.latest().path

    def poison_at_epoch_end(pos, model):  # the loss of every step was finite; the last update is not
        if pos.global_step == 2 * len(train):
            with torch.no_grad():
                model.head.weight.fill_(float("inf"))

    with pytest.raises(FloatingPointError, match=rf"weights or optimizer state became non-finite .*{good.name}"):
        fit(config(p), "fp", train, val, p, store, CPU, on_step=poison_at_epoch_end)
    assert store.latest().path == good and sorted(store.folder.glob("step-*"))[-1] == good
    with pytest.raises(FloatingPointError, match="there is none .this run keeps no checkpoints"):
        fit(config(p), "fp", train, val, p, None, CPU, on_step=poison_at_epoch_end)  # nor a model


def test_checkpoint_records_its_sha256_and_a_changed_file_is_refused(tmp_path, data):
    train, val = data
    store = CheckpointStore(tmp_path / "hash")
    fit(config(params()), "fp", train, val, params(epochs=1), store, CPU)
    path = sorted(store.folder.glob("step-*"))[-1]
    state = path / "state.safetensors"
    recorded = json.loads((path / "state.json").read_text("utf-8"))["state_sha256"]
    assert recorded == hashlib.sha256(state.read_bytes()).hexdigest()
    assert "state_sha256" not in store.latest().meta
    raw = bytearray(state.read_bytes())
    raw[-8:] = bytes(b ^ 1 for b in raw[-8:])  # the data region, same size: still a valid safetensors file
    state.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{path.name}.*state.safetensors does not match the sha256 .*"
                                              r"delete that folder.*training.resume=false"):
        fit(config(params()), "fp", train, val, params(epochs=2), store, CPU)


def test_disk_full_while_saving_a_checkpoint_names_the_folder_and_leaves_nothing(tmp_path, data, monkeypatch):
    import safetensors.torch

    train, val = data
    store = CheckpointStore(tmp_path / "full")
    fit(config(params()), "fp", train, val, params(epochs=1), store, CPU)
    before = sorted(os.listdir(store.folder))

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 64)  # a part was written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(CheckpointError, match=rf"cannot write checkpoint step-\d+ into {store.folder} .No space "
                                              r"left on device.*disk is full.*resumes from step-"):
        fit(config(params()), "fp", train, val, params(epochs=2), store, CPU)
    assert sorted(os.listdir(store.folder)) == before  # no hidden temporary folder, no new checkpoint


def test_stale_temporary_folders_are_swept_fresh_ones_kept(tmp_path):
    store = CheckpointStore(tmp_path)
    stale, fresh = tmp_path / ".step-0000000009.abc.tmp", tmp_path / ".step-0000000010.def.tmp"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "state.safetensors").write_bytes(b"\0" * 8)
    old = time.time() - 120  # two minutes untouched
    for f in (stale / "state.safetensors", stale):
        os.utime(f, (old, old))
    store.save(3, {"x": 1}, {"w": torch.ones(2)})
    assert not stale.exists() and fresh.exists()  # a save in progress elsewhere is left alone


@pytest.mark.parametrize("log_every", [1, 3])
def test_history_has_a_train_loss_row_every_few_steps_besides_the_epoch_rows(data, log_every):
    train, val = data
    result = fit(config(params()), "fp", train, val, params(epochs=2), None, CPU, log_every=log_every)
    history = result.position.history
    steps = [h for h in history if h["kind"] == "step"]
    epochs = [h for h in history if h["kind"] == "epoch"]
    assert [h["step"] for h in steps] == list(range(log_every, 2 * len(train) + 1, log_every))
    assert [h["epoch"] for h in epochs] == [1, 2] and all(h["val_loss"] is not None for h in epochs)
    assert all(h["val_loss"] is None and h["train_loss"] > 0 for h in steps)
    if log_every == 1:  # each row is one step's loss: their token-weighted mean is the epoch's
        first = [h for h in steps if h["step"] <= len(train)]
        tokens = np.diff([0] + [h["tokens"] for h in first])
        assert np.average([h["train_loss"] for h in first], weights=tokens) == pytest.approx(epochs[0]["train_loss"])


def test_interrupted_then_resumed_keeps_the_same_loss_rows(tmp_path, data):
    train, val = data
    p = params(checkpoint_minutes=None)
    straight = fit(config(p), "fp", train, val, p, None, CPU, log_every=3)
    store = CheckpointStore(tmp_path / "rows")
    with pytest.raises(KeyboardInterrupt):  # between two rows: the window spans the checkpoint
        fit(config(p), "fp", train, val, p, store, CPU, on_step=Interrupt(len(train) + 4), log_every=3)
    resumed = fit(config(p), "fp", train, val, p, store, CPU, log_every=3)
    assert [(h["kind"], h["step"]) for h in resumed.position.history] == \
        [(h["kind"], h["step"]) for h in straight.position.history]
    assert [h["train_loss"] for h in resumed.position.history] == \
        pytest.approx([h["train_loss"] for h in straight.position.history], rel=1e-6)
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(resumed)[k]), k


def test_learning_rate_warms_up_then_decays_to_the_floor_at_the_cycle_end():
    p = params(learning_rate=0.01, warmup_steps=4, min_lr_ratio=0.1)
    assert [learning_rate(p, s, 0.0) for s in range(4)] == pytest.approx([0.002, 0.004, 0.006, 0.008])
    assert learning_rate(p, 4, 0.0) == pytest.approx(0.01)
    assert learning_rate(p, 50, 0.5) == pytest.approx(0.0055)  # half-way down the cosine
    assert learning_rate(p, 99, 1.0) == learning_rate(p, 99, 3.0) == pytest.approx(0.001)
    assert learning_rate(params(lr_schedule="constant"), 0, 0.9) == params().learning_rate


def lr_rows(result, after=0):
    """(steps, learning rates) of the history's step rows after global step ``after``."""
    rows = [(h["step"], h["learning_rate"]) for h in result.position.history if h["kind"] == "step" and h["step"] > after]
    return [s for s, _ in rows], [lr for _, lr in rows]


def test_the_optimizer_follows_the_schedule_and_a_resumed_run_takes_the_same_rates(tmp_path, data):
    train, val = data
    p = params()
    straight = fit(config(p), "fp", train, val, p, None, CPU, log_every=1)
    total = p.epochs * len(train)
    steps, rates = lr_rows(straight)
    assert steps == list(range(1, total + 1))
    assert rates == pytest.approx([learning_rate(p, s, s / total) for s in range(total)])  # set before each step
    store = CheckpointStore(tmp_path / "lr")
    with pytest.raises(KeyboardInterrupt):
        fit(config(p), "fp", train, val, p, store, CPU, on_step=Interrupt(len(train) + 2), log_every=1)
    resumed = fit(config(p), "fp", train, val, p, store, CPU, log_every=1)
    assert lr_rows(resumed) == lr_rows(straight)
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(resumed)[k]), k


def test_more_epochs_after_a_finished_cycle_start_a_new_cycle_over_the_added_epochs(tmp_path, data):
    train, val = data
    store, b = CheckpointStore(tmp_path / "cycle"), len(train)
    first = fit(config(params()), "fp", train, val, params(epochs=2), store, CPU, log_every=1)
    assert lr_rows(first)[1][-1] == pytest.approx(learning_rate(params(), 2 * b - 1, (2 * b - 1) / (2 * b)))
    ended = store.latest().meta["position"]
    longer = fit(config(params()), "fp", train, val, params(epochs=3), store, CPU, log_every=1)
    assert (longer.position.cycle_start_step, longer.position.cycle_start_s) == (2 * b, ended["elapsed_s"])
    steps, rates = lr_rows(longer, after=2 * b)
    assert steps == list(range(2 * b + 1, 3 * b + 1))
    assert rates == pytest.approx([learning_rate(params(), s, s / b) for s in range(b)])
    assert rates[0] == pytest.approx(params().learning_rate / 4)  # warm-up again: 1 / (warmup_steps + 1)


def test_a_spent_budget_ends_the_cycle_and_an_interrupted_one_is_resumed(tmp_path, data):
    train, val = data
    store = CheckpointStore(tmp_path / "budget")
    spent = fit(config(params()), "fp", train, val, params(max_minutes=1e-9), store, CPU)
    ended = store.latest().meta["position"]
    assert spent.stopped == "budget" and ended["cycle_done"]
    again = fit(config(params()), "fp", train, val, params(max_minutes=1e-9), store, CPU)
    assert (again.position.cycle_start_step, again.position.cycle_start_s) == (1, ended["elapsed_s"])
    assert again.position.global_step == 2  # one step of the new cycle's budget

    store = CheckpointStore(tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        fit(config(params()), "fp", train, val, params(max_minutes=60), store, CPU, on_step=Interrupt(3))
    assert not store.latest().meta["position"]["cycle_done"]
    resumed = fit(config(params()), "fp", train, val, params(max_minutes=60, epochs=1), store, CPU)
    assert resumed.position.cycle_start_step == 0 and resumed.stopped == "finished"
