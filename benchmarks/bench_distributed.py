"""Data-parallel training: tokens/s with 1 vs N ranks, same run (same data, model and budget).

Each configuration trains the default model (``conf/base/parameters_training.yml``) on the full
corpus's train split for ``--seconds`` of wall time, started through the same path as
``training.world_size`` (``training.train_poet``: ranks spawned on this machine, gloo on the CPU,
nccl on CUDA), without checkpoints or validation. tokens/s = predicted tokens over all ranks /
training wall time (start-up excluded). On the CPU the cores are shared: ``R ranks × T threads``.

    python benchmarks/bench_distributed.py                       # CPU: 1×1, 1×cores, 2×(cores/2), 45 s each
    python benchmarks/bench_distributed.py --seconds 10          # a short run
    python benchmarks/bench_distributed.py --device cuda --ranks 1,2,4,8   # GPUs: one rank per GPU
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from tangshi_pipeline.poet.params import TrainingParams  # noqa: E402
from tangshi_pipeline.poet.training import train_poet  # noqa: E402
from tangshi_pipeline.poet.vocab import Vocab  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=45.0, help="training budget of each configuration")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    ap.add_argument("--batch-size", type=int, default=0, help="poems per batch per rank (0 = the YAML's)")
    args = ap.parse_args()
    if not (ROOT / "data/05_model_input/vectors.parquet").is_file():
        raise SystemExit("no vectors: run `kedro run --pipeline=data_processing` first")
    vectors = pd.read_parquet(ROOT / "data/05_model_input/vectors.parquet")
    vocab = Vocab.from_json(yaml.safe_load((ROOT / "data/05_model_input/vocab.json").read_text("utf-8")))
    base = yaml.safe_load((ROOT / "conf/base/parameters_training.yml").read_text("utf-8"))["training"]
    base |= {"max_minutes": args.seconds / 60, "checkpoint_minutes": None, "device": args.device, "resume": False,
             "epochs": 1000, **({"batch_size": args.batch_size} if args.batch_size else {})}
    train = vectors[vectors["split"] == "train"]  # no validation split: nothing evaluated at the end
    cores = len(os.sched_getaffinity(0))
    runs = []
    for world in (int(r) for r in args.ranks.split(",")):
        threads_options = sorted({1, cores // world}) if args.device == "cpu" else [1]
        for threads in threads_options:
            if threads < 1:
                continue
            # training.threads: the machine's threads, shared by its ranks
            p = TrainingParams(**{**base, "world_size": world, "threads": threads * world})
            done = train_poet(train, vocab, p, None)[0].meta["training"]
            runs.append({"ranks": world, "threads_per_rank": threads, "steps": done["steps"],
                         "tokens": done["tokens"], "seconds": done["elapsed_s"],
                         "tokens_per_s": round(done["tokens"] / done["elapsed_s"])})
            print(f"{world} rank(s) × {threads} thread(s): {runs[-1]['tokens_per_s']:,} tokens/s "
                  f"({done['steps']} steps of {world} × {p.batch_size} poems)", flush=True)
    # the ratio is against the best single-process figure (on a busy CPU, 1 thread can beat all cores)
    base_rate = max((r["tokens_per_s"] for r in runs if r["ranks"] == 1), default=runs[0]["tokens_per_s"])
    table = [(f"{r['ranks']} rank(s) × {r['threads_per_rank']} thread(s), {args.device}",
              f"{r['tokens_per_s']:,} tokens/s ({r['tokens_per_s'] / base_rate:.2f}× the best 1-rank run)")
             for r in runs]
    table.append(("load average (1 min) at the end", f"{os.getloadavg()[0]:.2f} on {cores} cores"))
    write_results(f"distributed_{args.device}", {"seconds": args.seconds, "device": args.device,
                                                  "batch_size_per_rank": base["batch_size"], "runs": runs,
                                                  "loadavg_end": os.getloadavg()}, table)


if __name__ == "__main__":
    main()
