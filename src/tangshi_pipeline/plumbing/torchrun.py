"""The torchrun entry point: ``torchrun --nproc_per_node=N -m tangshi_pipeline.plumbing.torchrun
[--params=...] [--env=...] [--project=...]``.

Every rank runs only training (:func:`~tangshi_pipeline.poet.training.train_poet`, what the ``train``
node runs), reading its inputs through the Kedro catalog; rank 0 saves ``model`` and
``training_history`` through the catalog, holding the project lock while it does.
torchrun's ``--nnodes`` and rendezvous options spread the ranks over machines (README,
"Distributed training"). Rank 0 takes the project lock before the process group is formed, so a
run it cannot start never leaves the other ranks waiting in a collective.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from tangshi_pipeline.plumbing.cache import project_lock
from tangshi_pipeline.poet.distributed import exit_when_interrupted, process_group, stop_with_parent
from tangshi_pipeline.poet.params import TrainingParams, parse
from tangshi_pipeline.poet.training import train_poet
from tangshi_pipeline.poet.vocab import Vocab

log = logging.getLogger(__name__)


def _runtime_params(text: str | None) -> dict:
    """``a.b=1,c=x`` (as ``kedro run --params``) → nested dict, values parsed as YAML scalars."""
    import yaml

    nested: dict = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        *parents, leaf = key.strip().split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return nested


def main(argv: list[str] | None = None) -> None:
    """torchrun entry point: every rank trains (as the ``train`` node does); rank 0 saves the outputs."""
    parser = argparse.ArgumentParser(prog="torchrun ... -m tangshi_pipeline.plumbing.torchrun", description=main.__doc__)
    parser.add_argument("--params", help="parameter overrides, as kedro run --params: training.epochs=3,...")
    parser.add_argument("--env", help="Kedro configuration environment")
    parser.add_argument("--project", default=".", help="Kedro project folder (default: the current one)")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        raise SystemExit("start this with torchrun, e.g. torchrun --nproc_per_node=2 -m tangshi_pipeline.plumbing.torchrun")
    stop_with_parent()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank {rank}/{world} %(name)s: %(message)s")
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = Path(args.project).resolve()
    bootstrap_project(project)
    overrides = _runtime_params(args.params)
    overrides.setdefault("training", {})["world_size"] = world  # recorded in the checkpoints and the model
    # rank 0 writes the checkpoints and the model: it holds the project lock as `kedro run` does
    lock = project_lock(project, f"torchrun training ({world} ranks)") if rank == 0 else contextlib.nullcontext()
    with (exit_when_interrupted(), lock,
          KedroSession.create(project_path=project, env=args.env, runtime_params=overrides) as session):
        catalog = session.load_context().catalog
        if rank:  # Kedro's logging configuration is loaded by now: one rank's progress is enough
            for name in ("kedro", "tangshi_pipeline"):
                logging.getLogger(name).setLevel(logging.WARNING)
        p = parse(TrainingParams, "training", catalog.load("params:training"))
        with process_group(p.device, local_rank, local_world) as comm:
            model, history = train_poet(catalog.load("vectors"), Vocab.from_json(catalog.load("vocab")), p,
                                        catalog.load("training_checkpoints"), comm, catalog.load("poem_keywords"))
            if comm.rank == 0:
                catalog.save("model", model)
                catalog.save("training_history", history)
                log.info("saved model and training_history; evaluate and plot with "
                         "kedro run --pipelines=training --tags=evaluation")

if __name__ == "__main__":
    sys.exit(main())
