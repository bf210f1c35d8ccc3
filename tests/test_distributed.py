"""Data-parallel training: a step on 2 gloo ranks equals a single-process step on the combined batch,
ranks resume together from one checkpoint, a non-finite loss on one rank stops every rank with the
same clear error, the shards cover every batch, and the pipeline trains on 2 ranks
(training.world_size) into a loadable versioned model."""

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tangshi_pipeline.poet.artifact import Artifact
from tangshi_pipeline.poet.batching import Buckets
from tangshi_pipeline.poet.checkpoints import CheckpointStore
from tangshi_pipeline.poet.distributed import ONE_PROCESS, GroupComm
from tangshi_pipeline.poet.objective import model_config
from tangshi_pipeline.poet.training import NonFiniteLoss, fit
from tangshi_pipeline.poet.vocab import END_ID, START_ID
from tests.test_training import CPU, V, config, params

WORLD = 2


def sequences():
    """8 poems: 4 of 5 tokens and 4 of 9, so a batch of 4 is one length and the two halves differ in tokens."""
    rng = np.random.default_rng(1)
    return [np.array([START_ID, *rng.integers(4, V, size=k), END_ID]) for k in [3] * 4 + [7] * 4]


def run_ranks(target, *args, timeout=90):
    """Run ``target(comm, *args)`` on WORLD spawned processes joined in a gloo group on 127.0.0.1."""
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
    codes = [p.exitcode for p in procs]
    assert codes == [0] * WORLD, f"ranks exited with {codes} (None: hung; their tracebacks are above)"


def _rank(rank, port, target, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        target(GroupComm(torch.device("cpu"), WORLD), *args)
    finally:
        dist.destroy_process_group()


def _one_step(comm, optimizer, out):
    grads = {}

    def grab(pos, model):
        grads.update({f"grad.{n}": q.grad.clone() for n, q in model.named_parameters()})

    p = step_params(optimizer, batch_size=4, world_size=WORLD)
    result = fit(config(p), "fp", Buckets(sequences(), 4), None, p, None, CPU, on_step=grab, comm=comm)
    assert result.position.global_step == 1 and result.position.tokens == 4 * 4 + 4 * 8
    weights = {f"weight.{k}": v for k, v in result.model.state_dict().items()}
    save_file({**weights, **grads}, Path(out) / f"{optimizer}-rank{comm.rank}.safetensors")


def _resume(comm, out):
    # dropout > 0: each rank's masks come from its own RNG, which the checkpoint keeps for every rank
    p = params(epochs=2, batch_size=4, dropout=0.3, world_size=WORLD, lr_schedule="constant")  # 1 then 2 epochs: two cycles
    seqs = [np.array([START_ID, *np.random.default_rng(i).integers(4, V, size=3 + i % 5), END_ID])
            for i in range(30)]
    # a train-loss row every 3 steps: the window of one spans the checkpoint (4 steps per epoch)
    straight = fit(config(p), "fp", Buckets(seqs, 4), None, p, CheckpointStore(Path(out) / "a"), CPU, log_every=3,
                   comm=comm)
    store = CheckpointStore(Path(out) / "b")
    first = fit(config(p), "fp", Buckets(seqs, 4), None, p.model_copy(update={"epochs": 1}), store, CPU, log_every=3,
                comm=comm)
    resumed = fit(config(p), "fp", Buckets(seqs, 4), None, p, store, CPU, log_every=3, comm=comm)
    report = {"first_resumed_from": first.resumed_from, "resumed_from": resumed.resumed_from,
              "first_steps": first.position.global_step,
              "same_weights": all(torch.equal(v, resumed.model.state_dict()[k])
                                  for k, v in straight.model.state_dict().items()),
              "straight_rows": [(h["kind"], h["step"]) for h in straight.position.history],
              "resumed_rows": [(h["kind"], h["step"]) for h in resumed.position.history],
              "straight_loss": [h["train_loss"] for h in straight.position.history],
              "resumed_loss": [h["train_loss"] for h in resumed.position.history]}
    (Path(out) / f"resume-rank{comm.rank}.json").write_text(json.dumps(report))


def _non_finite(comm, out):
    rank = comm.rank
    p = params(epochs=3, batch_size=4, dropout=0.0, checkpoint_every=1, world_size=WORLD)
    seqs = [np.array([START_ID, *np.random.default_rng(i).integers(4, V, size=3 + i % 5), END_ID])
            for i in range(40)]

    def poison(pos, model):  # rank 1 only, in epoch 2: its weights blow up, then it is slow
        if rank == 1 and pos.epoch == 1 and pos.step == 2:
            with torch.no_grad():
                model.head.weight.fill_(float("nan"))
        if rank == 1 and pos.epoch == 1 and pos.step == 3:
            time.sleep(0.6)  # its own ~0.5 s check comes first: stopping alone would strand rank 0

    try:
        fit(config(p), "fp", Buckets(seqs, 4), None, p, CheckpointStore(Path(out) / "nan"), CPU, on_step=poison,
            comm=comm)
        outcome = "finished"
    except NonFiniteLoss as exc:
        outcome = str(exc)
    (Path(out) / f"nan-rank{rank}.json").write_text(json.dumps({"outcome": outcome}))


def _adaptive(comm, out):
    # an adaptive head whose rare cluster (the last 3 ids) most batches never reach: DDP must not
    # expect a gradient for every parameter on every step
    p = params(epochs=2, batch_size=4, dropout=0.0, world_size=WORLD, head="adaptive", adaptive_cutoffs=[V - 3])
    seqs = [np.array([START_ID, *np.random.default_rng(i).integers(4, V - 3, size=4), END_ID]) for i in range(15)]
    seqs.append(np.array([START_ID, V - 1, V - 2, END_ID]))
    result = fit(model_config(p, V), "fp", Buckets(seqs, 4), None, p, None, CPU, comm=comm)
    (Path(out) / f"adaptive-rank{comm.rank}.json").write_text(json.dumps(
        {"steps": result.position.global_step, "head": result.model.config.head}))


def _all_checks(comm, out):
    for optimizer in ("adamw", "rmsprop"):
        _one_step(comm, optimizer, out)
    _resume(comm, out)
    _non_finite(comm, out)
    _adaptive(comm, out)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank gloo run (spawning is the slow part) doing every check below; its outputs."""
    out = tmp_path_factory.mktemp("ranks")
    run_ranks(_all_checks, str(out))
    return out


def step_params(optimizer, **kw):
    # No clipping (it would hide a wrongly scaled gradient), no dropout (masks differ by batch shape).
    return params(optimizer=optimizer, epochs=1, dropout=0.0, grad_clip=None, **kw)


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_two_ranks_step_equals_one_process_step_on_the_combined_batch(two_ranks, optimizer):
    ranks = [load_file(two_ranks / f"{optimizer}-rank{r}.safetensors") for r in range(WORLD)]
    single = {}
    one = step_params(optimizer, batch_size=8)
    result = fit(config(one), "fp", Buckets(sequences(), 8), None, one, None, CPU,
                 on_step=lambda pos, model: single.update(
                     {f"grad.{n}": q.grad.clone() for n, q in model.named_parameters()}))
    assert result.position.global_step == 1
    single.update({f"weight.{k}": v for k, v in result.model.state_dict().items()})

    assert set(ranks[0]) == set(single)
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(ranks[1][k], ranks[0][k], rtol=0, atol=0, msg=k)


def test_ranks_resume_together_from_one_checkpoint(two_ranks):
    for r in range(WORLD):
        report = json.loads((two_ranks / f"resume-rank{r}.json").read_text())
        assert report["first_resumed_from"] is None
        assert report["resumed_from"].endswith(f"step-{report['first_steps']:010d}")  # the same one on each rank
        assert report["same_weights"]
        assert report["resumed_rows"] == report["straight_rows"] and ["step", 3] in report["straight_rows"]
        assert report["resumed_loss"] == pytest.approx(report["straight_loss"], rel=1e-6)
    assert len(list((two_ranks / "b").glob("step-*"))) == 2  # rank 0 wrote; nothing half-written
    assert not list((two_ranks / "b").glob(".*"))


def test_a_non_finite_loss_on_one_rank_stops_every_rank(two_ranks):
    kept = sorted((two_ranks / "nan").glob("step-*"))
    assert len(kept) == 1  # epoch 1's checkpoint; nothing after the weights went bad
    for r in range(WORLD):  # the same error on both ranks (not a collective failing on rank 0)
        outcome = json.loads((two_ranks / f"nan-rank{r}.json").read_text())["outcome"]
        assert "non-finite" in outcome and kept[0].name in outcome, outcome


def test_ranks_train_an_adaptive_head_whose_rare_cluster_a_step_may_not_reach(two_ranks):
    reports = [json.loads((two_ranks / f"adaptive-rank{r}.json").read_text()) for r in range(WORLD)]
    assert reports[0] == reports[1] == {"steps": 4, "head": "adaptive"}


def test_one_process_comm_does_nothing():
    """fit's loop reads the same on one process: every collective of the plain Comm is an identity."""
    comm, module = ONE_PROCESS, torch.nn.Linear(2, 1)
    assert (comm.rank, comm.world, comm.local_world, comm.device) == (0, 1, 1, None)
    assert comm.all_sum(2.5) == 2.5 and comm.any(True) and not comm.any(False)
    assert comm.agree(5, over=True, due=False, bad=True, clock=0.25) == (True, False, True, 0.25)
    assert comm.wrap(module) is module and comm.gather_rng() == {} and comm.alone() is comm
    comm.barrier()


TEARDOWN = """
import os, sys
import tangshi_pipeline.poet.training  # what every rank imports before it joins a group
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

threads = lambda: len(os.listdir("/proc/self/task"))
before = threads()
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0, world_size=1)
model = DistributedDataParallel(torch.nn.Linear(2, 1))
model(torch.ones(3, 2)).sum().backward()
del model
dist.destroy_process_group()
print(before, threads())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts the process's threads in /proc")
def test_destroy_process_group_stops_gloo_threads_after_ddp():
    """A rank that used DistributedDataParallel must not keep gloo's worker threads past
    destroy_process_group: one still freeing a tensor when Python exits aborts the rank (SIGABRT,
    "terminate called without an active exception" — the random `ranks exited with [0, -6]`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-c", TEARDOWN, str(port)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = map(int, proc.stdout.split())
    assert after == before, f"{after - before} threads of the destroyed process group still run"


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


def test_torchrun_entry_point_runs_only_training_and_rank0_saves(project):
    project.run("data_processing")
    params = ("training.embedding_dim=8,training.hidden_dim=16,training.epochs=1,training.batch_size=4,"
              "training.max_minutes=null,training.device=cpu,training.threads=1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tangshi_pipeline.plumbing.torchrun", f"--params={params}"],
                          cwd=project.path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = list((project.path / "data/06_models/poet").iterdir())
    assert len(versions) == 1  # saved once, by rank 0
    artifact = project.catalog().load("model")
    assert artifact.meta["training"]["world_size"] == 2 and artifact.meta["training"]["steps"] > 0
    assert (project.path / "data/08_reporting/training_history.csv").is_file()
    assert not (project.path / "data/08_reporting/training_metrics.json").exists()  # evaluate did not run
    assert len(list((project.path / "data/06_models/checkpoints").glob("step-*"))) == 1
