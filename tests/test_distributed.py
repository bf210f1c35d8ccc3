"""Data-parallel training: a step on 2 gloo ranks equals a single-process step on the combined batch,
ranks resume together from one checkpoint, the shards cover every batch, and the pipeline trains
on 2 ranks (training.world_size) into a loadable versioned model."""

import os
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tangshi_pipeline.batching import Buckets
from tangshi_pipeline.datasets import CheckpointStore
from tangshi_pipeline.model import Artifact
from tangshi_pipeline.training import fit
from tangshi_pipeline.vocab import END_ID, START_ID
from tests.test_training import CPU, V, config, params

WORLD = 2


def sequences():
    """8 poems: 4 of 5 tokens and 4 of 9, so a batch of 4 is one length and the two halves differ in tokens."""
    rng = np.random.default_rng(1)
    return [np.array([START_ID, *rng.integers(4, V, size=k), END_ID]) for k in [3] * 4 + [7] * 4]


def run_ranks(target, *args, timeout=90):
    """Run ``target(rank, *args)`` on WORLD spawned processes joined in a gloo group on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, port, target, args)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * WORLD, "a rank failed or hung (its traceback is above)"


def _rank(rank, port, target, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        target(rank, *args)
    finally:
        dist.destroy_process_group()


def _one_step(rank, p, out):
    grads = {}

    def grab(pos, model):
        grads.update({f"grad.{n}": q.grad.clone() for n, q in model.named_parameters()})

    result = fit(config(p), "fp", Buckets(sequences(), 4), None, p, None, CPU, on_step=grab)
    assert result.position.global_step == 1 and result.position.tokens == 4 * 4 + 4 * 8
    weights = {f"weight.{k}": v for k, v in result.model.state_dict().items()}
    save_file({**weights, **grads}, Path(out) / f"rank{rank}.safetensors")


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_two_ranks_step_equals_one_process_step_on_the_combined_batch(tmp_path, optimizer):
    # No clipping (it would hide a wrongly scaled gradient), no dropout (masks differ by batch shape).
    p = params(optimizer=optimizer, epochs=1, batch_size=4, dropout=0.0, grad_clip=None, world_size=WORLD)
    run_ranks(_one_step, p, str(tmp_path))
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(WORLD)]

    single = {}
    one = params(optimizer=optimizer, epochs=1, batch_size=8, dropout=0.0, grad_clip=None)
    result = fit(config(one), "fp", Buckets(sequences(), 8), None, one, None, CPU,
                 on_step=lambda pos, model: single.update(
                     {f"grad.{n}": q.grad.clone() for n, q in model.named_parameters()}))
    assert result.position.global_step == 1
    single.update({f"weight.{k}": v for k, v in result.model.state_dict().items()})

    assert set(ranks[0]) == set(single)
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(ranks[1][k], ranks[0][k], rtol=0, atol=0, msg=k)


def _resume(rank, p, folder):
    seqs = [np.array([START_ID, *np.random.default_rng(i).integers(4, V, size=3 + i % 5), END_ID])
            for i in range(30)]
    straight = fit(config(p), "fp", Buckets(seqs, 4), None, p, CheckpointStore(Path(folder) / "a"), CPU)
    store = CheckpointStore(Path(folder) / "b")
    first = fit(config(p), "fp", Buckets(seqs, 4), None, p.model_copy(update={"epochs": 1}), store, CPU)
    assert first.resumed_from is None
    resumed = fit(config(p), "fp", Buckets(seqs, 4), None, p, store, CPU)
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith(f"step-{first.position.global_step:010d}")
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [h["train_loss"] for h in resumed.position.history] == \
        pytest.approx([h["train_loss"] for h in straight.position.history], rel=1e-6)


def test_ranks_resume_together_from_one_checkpoint(tmp_path):
    # dropout 0: rank 0 checkpoints its own RNG state only, so dropout masks of other ranks would differ
    run_ranks(_resume, params(epochs=2, batch_size=4, dropout=0.0, world_size=WORLD), str(tmp_path))
    assert len(list((tmp_path / "b").glob("step-*"))) == 2  # rank 0 wrote; nothing half-written
    assert not list((tmp_path / "b").glob(".*"))


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_cover_every_batch_in_equal_steps(world):
    seqs = [np.array([START_ID, *[5] * k, END_ID]) for k in [1, 2, 2, 3, 5, 5, 5, 8, 9, 9, 9, 9, 12]]
    buckets = Buckets(seqs, 2)
    whole = [b.ids.tolist() for b in buckets.epoch(7, 3)]
    shards = [list(buckets.shard(7, 3, r, world)) for r in range(world)]
    assert {len(s) for s in shards} == {buckets.steps(world)}
    steps = [[shards[r][s] for r in range(world)] for s in range(buckets.steps(world))]
    flat = [batch.ids.tolist() for step in steps for batch, _ in step]
    assert flat[: len(whole)] == whole and flat[len(whole):] == whole[: len(flat) - len(whole)]
    for step in steps:
        assert {t for _, t in step} == {sum(b.tokens for b, _ in step)}
    assert list(buckets.shard(7, 3, 0, world, skip=1)) and \
        [b.ids.tolist() for b, _ in buckets.shard(7, 3, 0, world, skip=1)] == [b.ids.tolist() for b, _ in shards[0][1:]]


def test_pipeline_trains_on_two_ranks_into_a_versioned_model(project):
    project.run("data_processing")
    tiny = {"training.embedding_dim": 8, "training.hidden_dim": 16, "training.epochs": 2,
            "training.batch_size": 4, "training.max_minutes": None, "training.device": "cpu",
            "training.threads": 1, "training.world_size": 2}
    project.run("training", params=tiny)
    artifact = project.catalog().load("model")
    assert isinstance(artifact, Artifact)
    assert artifact.meta["training"]["world_size"] == 2 and artifact.meta["training"]["epochs_done"] == 2
    assert artifact.meta["metrics"]["train_loss"] > 0
    assert len(list((project.path / "data/06_models/poet").iterdir())) == 1
    logits, _ = artifact.model(torch.tensor([[START_ID]]))
    assert torch.isfinite(logits).all()
