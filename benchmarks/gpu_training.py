"""Training on a GPU: tokens/s of the project's trainer, and validation perplexity after 60 s.

One prepared script, a few minutes (about 6 on an H100), results to benchmarks/results/gpu_training.*:

1. tokens/s of the classic-size model (embedding 100, 2 × LSTM 128) at batch 256 and 1024, fp32 and
   bf16 (plus the fused head+loss at batch 1024 fp32 for comparison). Each run trains through
   :func:`tangshi_pipeline.poet.training.fit` for ``--seconds`` (default 15); the rate is measured after
   a warm-up of 30 steps, between two device synchronisations. Target on an H100: ≥ 5 M tokens/s.
2. validation perplexity after ``--quality-seconds`` (default 60) of training, for the two presets:
   ``classic`` (conf/base/parameters_training.yml, the default size) and ``large`` (those parameters
   with conf/gpu/parameters_training.yml's on top: what ``kedro run --env=gpu`` trains), each with
   its tokens/s. Target on an H100: ≤ 80 for the large preset. Evaluation is outside the budget.

    python benchmarks/gpu_training.py                       # on the GPU machine
    python benchmarks/gpu_training.py --device cpu --batch-sizes 8 16 --seconds 4 --warmup 2 \
           --quality-seconds 3 --val-poems 50 --presets classic
                                                            # a dry run anywhere (checks the script)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from tangshi_pipeline.poet.batching import Buckets, split_sequences  # noqa: E402
from tangshi_pipeline.poet.devices import resolve_device, torch_settings  # noqa: E402
from tangshi_pipeline.poet.model import ModelConfig  # noqa: E402
from tangshi_pipeline.poet.objective import evaluate, model_config  # noqa: E402
from tangshi_pipeline.poet.params import TrainingParams  # noqa: E402
from tangshi_pipeline.poet.training import fit  # noqa: E402
from tangshi_pipeline.poet.vocab import Vocab  # noqa: E402


def speed_runs(small: int, large: int) -> list[tuple[int, str, bool]]:
    """(batch_size, precision, fused_head) of the tokens/s runs."""
    return [(small, "fp32", False), (small, "bf16", False), (large, "fp32", False), (large, "bf16", False),
            (large, "fp32", True)]
PRESETS = {"classic": "conf/base", "large": "conf/gpu"}  # name → the environment whose parameters it is


def preset(name: str) -> dict:
    """The training parameters of a preset: conf/base's, with the preset environment's keys on top."""
    raw = yaml.safe_load((ROOT / "conf/base/parameters_training.yml").read_text("utf-8"))["training"]
    if PRESETS[name] != "conf/base":
        raw |= yaml.safe_load((ROOT / PRESETS[name] / "parameters_training.yml").read_text("utf-8"))["training"]
    return raw


def params(base: dict, **overrides) -> TrainingParams:
    return TrainingParams(**{**base, **overrides})


def config(p: TrainingParams, vocab_size: int) -> ModelConfig:
    return model_config(p, vocab_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def speed(p: TrainingParams, vocab_size: int, train: list, device: torch.device, warmup: int) -> dict:
    buckets = Buckets(train, p.batch_size, device)
    marks = {}

    def on_step(pos, model) -> None:
        if pos.global_step == warmup:
            sync(device)
            marks.update(t0=time.perf_counter(), tok0=pos.tokens)
        marks.update(step=pos.global_step, tokens=pos.tokens)

    fit(config(p, vocab_size), "bench", buckets, None, p, None, device, on_step=on_step)
    sync(device)
    if "t0" not in marks or marks["step"] == warmup:
        raise SystemExit(f"no more than {warmup} steps in {p.max_minutes * 60:g} s: raise --seconds or lower --warmup")
    seconds = time.perf_counter() - marks["t0"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens = marks["tokens"] - marks["tok0"]
    return {"tokens_per_s": round(tokens / seconds), "steps": marks["step"] - warmup, "seconds": round(seconds, 1),
            "peak_gib": round(peak, 2) if peak else None}


def quality(p: TrainingParams, vocab_size: int, train: list, val: Buckets, device: torch.device) -> dict:
    start = time.perf_counter()
    result = fit(config(p, vocab_size), "bench", Buckets(train, p.batch_size, device), None, p, None, device)
    seconds = time.perf_counter() - start
    loss = evaluate(result.model, val, device, p.precision)
    return {"val_loss": round(loss, 4), "val_perplexity": round(math.exp(loss), 1), "seconds": round(seconds, 1),
            "epochs": round(result.position.tokens / sum(len(s) - 1 for s in train), 2),
            "tokens_per_s": round(result.position.tokens / seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=15, help="training time of each tokens/s run")
    ap.add_argument("--batch-sizes", type=int, nargs=2, default=[256, 1024], metavar=("SMALL", "LARGE"))
    ap.add_argument("--warmup", type=int, default=30, help="steps before the tokens/s clock starts")
    ap.add_argument("--quality-seconds", type=float, default=60, help="training time of each quality run")
    ap.add_argument("--val-poems", type=int, default=0, help="score on this many validation poems (0 = all)")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS),
                    help="presets of the quality runs (default: all)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    with torch_settings(device, threads=0):  # TF32 matmuls on CUDA, one thread per idle core on the CPU
        run(args, device)


def run(args: argparse.Namespace, device: torch.device) -> None:
    vectors = pd.read_parquet(ROOT / "data/05_model_input/vectors.parquet")
    vocab = Vocab.from_json(json.loads((ROOT / "data/05_model_input/vocab.json").read_text("utf-8")))
    train = split_sequences(vectors, "train")
    val_seqs = split_sequences(vectors, "val")[: args.val_poems or None]
    val = Buckets(val_seqs, 512, device)
    default = preset("classic") | dict(device=device.type, epochs=10_000, resume=False, checkpoint_minutes=None)
    print(f"device: {torch.cuda.get_device_name(0) if device.type == 'cuda' else device}", flush=True)

    rows, speeds = [], []
    for batch_size, precision, fused in speed_runs(*args.batch_sizes):
        p = params(default, batch_size=batch_size, precision=precision, fused_head=fused,
                   max_minutes=args.seconds / 60, embedding_dim=100, hidden_dim=128, num_layers=2, cell="lstm")
        r = {"batch_size": batch_size, "precision": precision, "fused_head": fused,
             **speed(p, len(vocab), train, device, args.warmup)}
        speeds.append(r)
        label = f"tokens/s, classic size, batch {batch_size}, {precision}{', fused head' if fused else ''}"
        rows.append((label, f"{r['tokens_per_s']:,}"))
        print(label, r, flush=True)

    qualities = {}
    for name in args.presets:
        overrides = {k: v for k, v in preset(name).items() if preset("classic")[k] != v and k != "device"}
        p = params(default, **{**overrides, "max_minutes": args.quality_seconds / 60})
        qualities[name] = {**quality(p, len(vocab), train, val, device), "params": overrides}
        rows.append((f"val perplexity after {args.quality_seconds:g} s: {name}",
                     f"{qualities[name]['val_perplexity']} ({qualities[name]['epochs']} epochs, "
                     f"{qualities[name]['tokens_per_s']:,} tok/s)"))
        print(name, qualities[name], flush=True)
    best = min(qualities, key=lambda k: qualities[k]["val_loss"])
    rows.append(("best preset", f"{best}: perplexity {qualities[best]['val_perplexity']} (target ≤ 80 for large)"))
    rows.append(("best tokens/s, classic size", f"{max(r['tokens_per_s'] for r in speeds):,} (target ≥ 5 M)"))
    write_results("gpu_training" if device.type == "cuda" else f"gpu_training_dry_{device.type}",
                  {"device": str(device), "speed": speeds, "quality": qualities, "best": best,
                   "val_poems": len(val_seqs), "args": vars(args)}, rows)
    for k, v in rows:
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
