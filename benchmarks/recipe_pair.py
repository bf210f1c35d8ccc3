"""One training recipe, short: the project's trainer for ``--minutes`` with some parameters changed.

For paired comparisons of recipe variants (learning-rate schedule, head): start two of these at the
same time, one thread each, same seed, and compare their validation perplexity after the budget
(the whole validation split, scored after training so evaluation never eats into the budget) and
their tokens/s. A quiet machine is not assumed: the pair shares whatever load there is.

    python benchmarks/recipe_pair.py --minutes 3.5 --set lr_schedule=constant --label constant &
    python benchmarks/recipe_pair.py --minutes 3.5 --label cosine & wait

Results: benchmarks/results/recipe_<label>.json (one file per variant).
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
from common import write_results  # noqa: E402

from tangshi_pipeline.poet.batching import Buckets, split_sequences  # noqa: E402
from tangshi_pipeline.poet.devices import set_threads  # noqa: E402
from tangshi_pipeline.poet.objective import evaluate, model_config  # noqa: E402
from tangshi_pipeline.poet.params import TrainingParams  # noqa: E402
from tangshi_pipeline.poet.training import fit  # noqa: E402
from tangshi_pipeline.poet.vocab import Vocab  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.5, help="training budget")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--label", required=True, help="the variant's name (results/recipe_<label>.json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a training parameter (repeatable)")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    vectors = pd.read_parquet(ROOT / "data/05_model_input/vectors.parquet")
    vocab = Vocab.from_json(yaml.safe_load((ROOT / "data/05_model_input/vocab.json").read_text("utf-8")))
    raw = yaml.safe_load((ROOT / "conf/base/parameters_training.yml").read_text("utf-8"))["training"]
    raw.update(max_minutes=args.minutes, epochs=1000, device="cpu", threads=threads, resume=False)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    p = TrainingParams(**{**raw, **overrides})
    cpu = torch.device("cpu")
    train = Buckets(split_sequences(vectors, "train"), p.batch_size)
    val = Buckets(split_sequences(vectors, "val"), 64)
    start = time.perf_counter()
    result = fit(model_config(p, len(vocab)), vocab.fingerprint, train, None, p, None, cpu)
    seconds = time.perf_counter() - start
    loss = evaluate(result.model, val, cpu)
    out = {"label": args.label, "overrides": overrides, "minutes": args.minutes, "threads": threads,
           "seconds": round(seconds, 1), "steps": result.position.global_step, "tokens": result.position.tokens,
           "tokens_per_s": round(result.position.tokens / seconds), "val_loss": round(loss, 4),
           "val_perplexity": round(math.exp(loss), 2)}
    write_results(f"recipe_{args.label}", out)
    print(out)


if __name__ == "__main__":
    main()
