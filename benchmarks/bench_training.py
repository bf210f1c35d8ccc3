"""Training on the CPU: the project's trainer vs the classic exercise's loop, same model size, one run.

Both train for ``--minutes`` of wall time (default 10) on the full corpus's train split, one after
the other in this process, with the same number of torch threads. Model snapshots are taken during
training (every 5 s in the first minute, then every 30 s; copying the weights takes milliseconds)
and scored on the validation split afterwards, so evaluation never eats into either budget.

Figures: tokens/s of each and their ratio (target ≥ 2×); validation loss / perplexity of each
after the budget; the time the project needs to reach the classic loop's final validation loss
(target, with the 10-minute budget: ≤ 1 minute, i.e. ≥ 10× time-to-quality). The project trainer
runs with ``conf/base/parameters_training.yml`` (minus checkpoints and per-epoch validation).

    python benchmarks/bench_training.py                 # the full comparison (~25 min)
    python benchmarks/bench_training.py --minutes 0.25  # a dry run (~1-2 min)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from classic_baseline import ClassicPoet, train_classic  # noqa: E402
from common import write_results  # noqa: E402

from tangshi_pipeline.poet.batching import Buckets, split_sequences  # noqa: E402
from tangshi_pipeline.poet.devices import set_threads  # noqa: E402
from tangshi_pipeline.poet.model import ModelConfig  # noqa: E402
from tangshi_pipeline.poet.objective import evaluate  # noqa: E402
from tangshi_pipeline.poet.params import TrainingParams  # noqa: E402
from tangshi_pipeline.poet.training import fit  # noqa: E402
from tangshi_pipeline.poet.vocab import Vocab  # noqa: E402


class Snapshots:
    """Copies of the weights at wall-clock marks: every 5 s for a minute, then every 30 s."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.taken, self.next = model, [], 5.0

    def __call__(self, elapsed: float, tokens: int) -> None:
        if elapsed >= self.next:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.taken.append((elapsed, tokens, state))
            self.next = self.next + 5.0 if self.next < 60 else self.next + 30.0

    def final(self, elapsed: float, tokens: int) -> None:
        self.next = 0.0
        self(elapsed, tokens)

    def scored(self, val: Buckets) -> list[dict]:
        rows = []
        for elapsed, tokens, state in self.taken:
            self.model.load_state_dict(state)
            loss = evaluate(self.model, val, torch.device("cpu"))
            rows.append({"seconds": round(elapsed, 1), "tokens": tokens, "val_loss": round(loss, 4),
                         "val_perplexity": round(math.exp(loss), 1)})
        return rows


def run_project(config: ModelConfig, fingerprint: str, train: Buckets, p: TrainingParams) -> tuple[dict, list]:
    holder: dict = {}
    start = time.perf_counter()

    def on_step(pos, model) -> None:
        if "snap" not in holder:
            holder["snap"] = Snapshots(model)
        holder["snap"](time.perf_counter() - start, pos.tokens)

    result = fit(config, fingerprint, train, None, p, None, torch.device("cpu"), on_step=on_step)
    elapsed = time.perf_counter() - start
    holder["snap"].final(elapsed, result.position.tokens)
    return {"seconds": round(elapsed, 1), "tokens": result.position.tokens, "steps": result.position.global_step,
            "tokens_per_s": round(result.position.tokens / elapsed)}, holder["snap"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget of each trainer")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = one per core)")
    ap.add_argument("--val-poems", type=int, default=0, help="score on this many validation poems (0 = all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a training parameter of the project trainer (repeatable)")
    args = ap.parse_args()
    if not (ROOT / "data/05_model_input/vectors.parquet").is_file():
        raise SystemExit("no vectors: run `kedro run --pipeline=data_processing` first")
    threads = set_threads(args.threads)
    vectors = pd.read_parquet(ROOT / "data/05_model_input/vectors.parquet")
    vocab = Vocab.from_json(yaml.safe_load((ROOT / "data/05_model_input/vocab.json").read_text("utf-8")))
    raw = yaml.safe_load((ROOT / "conf/base/parameters_training.yml").read_text("utf-8"))["training"]
    raw.update(max_minutes=args.minutes, epochs=1000, device="cpu", threads=threads, resume=False)
    for item in args.set:
        key, value = item.split("=", 1)
        raw[key] = yaml.safe_load(value)
    p = TrainingParams(**raw)
    train_seqs = split_sequences(vectors, "train")
    val_seqs = split_sequences(vectors, "val")[: args.val_poems or None]
    val = Buckets(val_seqs, 64)
    seconds = args.minutes * 60

    print(f"classic loop: {seconds:.0f} s ...", flush=True)
    classic = ClassicPoet(len(vocab), p.embedding_dim, p.hidden_dim, seed=p.seed)
    classic_snaps = Snapshots(classic)
    classic_run = train_classic(classic, train_seqs, seconds, on_step=classic_snaps)
    classic_snaps.final(classic_run["seconds"], classic_run["tokens"])
    classic_run = {k: round(v, 1) if isinstance(v, float) else v for k, v in classic_run.items()}

    print(f"project trainer: {seconds:.0f} s ...", flush=True)
    config = ModelConfig(len(vocab), p.cell, p.embedding_dim, p.hidden_dim, p.num_layers, p.dropout)
    project_run, project_snaps = run_project(config, vocab.fingerprint, Buckets(train_seqs, p.batch_size), p)

    print("scoring snapshots on the validation split ...", flush=True)
    classic_curve, project_curve = classic_snaps.scored(val), project_snaps.scored(val)
    target = classic_curve[-1]["val_loss"]
    reached = next((r["seconds"] for r in project_curve if r["val_loss"] <= target), None)
    ratio = project_run["tokens_per_s"] / classic_run["tokens_per_s"]
    results = {
        "minutes": args.minutes, "threads": threads, "val_poems": len(val_seqs),
        "project_params": p.model_dump(),
        "classic": {**classic_run, "final_val_loss": target, "curve": classic_curve},
        "project": {**project_run, "final_val_loss": project_curve[-1]["val_loss"], "curve": project_curve},
        "tokens_per_s_ratio": round(ratio, 2),
        "project_seconds_to_classic_final_val_loss": reached,
        "time_to_quality_ratio": round(classic_run["seconds"] / reached, 1) if reached else None,
        "targets": {"tokens_per_s_ratio": 2.0, "seconds_to_classic_10min_val_loss": 60},
    }
    table = [
        ("budget per trainer", f"{args.minutes:g} min, {threads} threads, CPU"),
        ("tokens/s, classic loop", f"{classic_run['tokens_per_s']:,.0f}"),
        ("tokens/s, project trainer", f"{project_run['tokens_per_s']:,}"),
        ("tokens/s ratio", f"{ratio:.2f}× (target ≥ 2×)"),
        ("val loss / perplexity after the budget, classic",
         f"{target:.3f} / {classic_curve[-1]['val_perplexity']:.1f}"),
        ("val loss / perplexity after the budget, project",
         f"{project_curve[-1]['val_loss']:.3f} / {project_curve[-1]['val_perplexity']:.1f}"),
        ("project: time to the classic's final val loss",
         f"{reached:.0f} s" if reached else "not reached", ),
        ("time-to-quality ratio", f"{results['time_to_quality_ratio']}× (target ≥ 10× with a 10-min budget)"),
    ]
    suffix = "" if args.minutes >= 10 else "_dry"
    write_results(f"training{suffix}", results, table)
    for k, v in table:
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
