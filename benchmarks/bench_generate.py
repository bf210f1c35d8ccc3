"""Poems per second: batched decoding with the recurrent state carried (the generate pipeline)
vs the classic greedy loop that re-feeds the whole prefix for every character, one poem at a
time — same model, same machine, one run. Targets: ≥ 500 poems/s for 1,024 poems on the 2-core
CPU; ≥ 30,000 poems/s on an H100.

The model is the latest version in data/06_models/poet, or an untrained classic-size model
(embedding 100, LSTM 128 × 2, the corpus vocabulary) when there is none. An untrained model never
emits the end token, so every free-form poem runs the full 30 characters: the worst case.

    python benchmarks/bench_generate.py [--poems 1024] [--classic-poems 64] [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import generate_params, write_results  # noqa: E402

from tangshi_pipeline.poet.decoding import Decoder, greedy_refeed  # noqa: E402
from tangshi_pipeline.poet.model import CharRNN, ModelConfig  # noqa: E402
from tangshi_pipeline.poet.prosody import Prosody  # noqa: E402
from tangshi_pipeline.poet.vocab import Vocab  # noqa: E402

DATA = Path("data")
BEGINS = list("日红山夜湖君月")


def load_model(vocab: Vocab) -> tuple[CharRNN, str]:
    from kedro.io import Version

    from tangshi_pipeline.plumbing.datasets import ModelArtifact

    dataset = ModelArtifact(str(DATA / "06_models/poet"), Version(None, None))
    if dataset.exists():
        artifact = dataset.load()
        if artifact.vocab_fingerprint == vocab.fingerprint:
            return artifact.model, f"latest saved model {artifact.version}"
    torch.manual_seed(0)
    return CharRNN(ModelConfig(len(vocab))).eval(), "untrained classic-size model"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--poems", type=int, default=1024)
    ap.add_argument("--classic-poems", type=int, default=64, help="poems timed with the classic loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); on a busy "
                    "2-core box 1 thread is faster, as every parallel op waits for a descheduled thread")
    ap.add_argument("--quick", action="store_true", help="256 poems, 14 classic, 1 repeat")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.poems, args.classic_poems, args.repeats = 256, 14, 1
    vocab = Vocab.from_json(json.loads((DATA / "05_model_input/vocab.json").read_text("utf-8")))
    prosody = Prosody.from_json(json.loads((DATA / "05_model_input/tone_lexicon.json").read_text("utf-8")),
                                json.loads((DATA / "05_model_input/rhyme_table.json").read_text("utf-8")))
    model, which = load_model(vocab)
    begins = [BEGINS[i % len(BEGINS)] for i in range(args.poems)]
    none = [None] * args.poems

    # the classic loop, on the CPU like the exercise, one poem at a time
    classic_begins = begins[: args.classic_poems]
    classic = timed(lambda: [greedy_refeed(model, vocab, b, 30) for b in classic_begins], 1)
    classic_rate = args.classic_poems / classic
    reference = [greedy_refeed(model, vocab, b, 30) for b in BEGINS]
    decoder = Decoder(model, vocab, prosody, args.device)  # moves the model to the device
    identical = decoder.generate(BEGINS, [None] * len(BEGINS), generate_params()).texts == reference

    runs = {
        "free greedy (classic behaviour)": generate_params(),
        "free sample (T 0.8, top-p 0.9)": generate_params(strategy="sample", top_p=0.9),
        "wujue greedy, strict tones + rhyme": generate_params(form="wujue", tones="strict", rhyme=True),
        "qilv sample, strict tones + rhyme": generate_params(form="qilv", strategy="sample", top_p=0.9,
                                                             tones="strict", rhyme=True),
    }
    results = {"model": which, "device": args.device, "poems": args.poems, "threads": torch.get_num_threads(),
               "classic": {"poems": args.classic_poems, "wall_s": round(classic, 3),
                           "poems_per_s": round(classic_rate, 2)},
               "greedy_identical_to_classic": identical, "batched": {}}
    table = [("classic loop (re-feed prefix, batch 1, greedy, CPU)", f"{classic_rate:,.1f} poems/s "
              f"({args.classic_poems} poems)")]
    for name, s in runs.items():
        wall = timed(lambda: decoder.generate(begins, none, s, batch_size=args.poems), args.repeats)
        rate = args.poems / wall
        results["batched"][name] = {"wall_s": round(wall, 3), "poems_per_s": round(rate, 1),
                                    "speedup_vs_classic": round(rate / classic_rate, 1)}
        table.append((f"{name}, {args.poems} poems, {args.device}",
                      f"{rate:,.0f} poems/s ({rate / classic_rate:,.0f}× classic)"))
        print(f"{name:40s} {rate:10,.0f} poems/s", flush=True)
    print(f"{'classic loop':40s} {classic_rate:10,.1f} poems/s ({which})")
    table.append(("model", which))
    table.append(("torch threads", str(torch.get_num_threads())))
    name = "generate" if args.device == "cpu" else f"generate_{args.device}"
    write_results(name if not args.threads else f"{name}_threads{args.threads}", results, table)


if __name__ == "__main__":
    main()
