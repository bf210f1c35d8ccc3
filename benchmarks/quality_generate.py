"""Quality of generated poems per form with strict tones + rhyme, against the real corpus.

For each form (wujue, qijue, wulv, qilv) it writes poems with ``tones: strict, rhyme: true`` —
greedy and sampled — and scores them with the pipeline's own report (format accuracy, tonal
conformance and per-position mean, rhyme accuracy, distinct-1/2, copy rate against the training
split). The same figures for the corpus's own poems of each form (every clean poem whose shape is
that form), through the same checker, are the reference point. Results go to
``benchmarks/results/quality_generate.{json,md}``.

Decoding settings per form: greedy (one poem per begin character), greedy with
``no_repeat_ngram=2`` and ``no_copy``, and sampling at the shipped defaults (temperature 0.8,
top-p 0.9) and at temperature 1.0 — ``--poems`` poems each.

The model is the latest version in ``data/06_models/poet`` (or ``--model <version folder>``);
train one first with ``kedro run --pipeline=training``.

    python benchmarks/quality_generate.py [--poems 210] [--model FOLDER] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import generate_params, generation_inputs, write_results  # noqa: E402

from tangshi_pipeline.pipelines.generate.nodes import poem_report, training_clauses  # noqa: E402
from tangshi_pipeline.poet.decoding import Decoder  # noqa: E402
from tangshi_pipeline.poet.prosody import FORMS, shape_of  # noqa: E402

DATA = Path("data")
BEGINS = list("日红山夜湖君月")
# name → (strategy, temperature, no_repeat_ngram, no_copy); top-p 0.9 as shipped
RUNS = {"greedy": ("greedy", 0.8, 0, False), "greedy, no_repeat_ngram 2, no_copy": ("greedy", 0.8, 2, True),
        "sample, T 0.8": ("sample", 0.8, 0, False), "sample, T 1.0": ("sample", 1.0, 0, False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--poems", type=int, default=210, help="poems per form and strategy (default 210)")
    ap.add_argument("--model", type=Path, help="a model version folder (default: the latest)")
    ap.add_argument("--quick", action="store_true", help="28 poems per form, for a smoke run")
    args = ap.parse_args()
    poems = 28 if args.quick else args.poems

    vocab, vectors, prosody, artifact = generation_inputs(args.model)
    reference = training_clauses(vectors, vocab)
    decoder = Decoder(artifact.model, vocab, prosody, training_lines=reference)
    begins = [BEGINS[i % len(BEGINS)] for i in range(poems)]

    results: dict = {"model": artifact.meta.get("training", {}), "poems_per_run": poems, "generated": {},
                     "corpus": {}}
    table = []
    keys = ("format_accuracy", "tonal_conformance", "tonal_position_mean", "rhyme_accuracy",
            "distinct_1", "distinct_2", "copy_rate")
    for form in FORMS:
        for name, (strategy, temperature, no_repeat, no_copy) in RUNS.items():
            s = generate_params(form=form, strategy=strategy, temperature=temperature, top_p=0.9, tones="strict",
                                rhyme=True, no_repeat_ngram=no_repeat, no_copy=no_copy, seed=42)
            run = begins if strategy == "sample" else BEGINS  # greedy: one poem per begin character
            start = time.perf_counter()
            out = decoder.generate(run, [None] * len(run), s)
            wall = time.perf_counter() - start
            report = poem_report(out.texts, form, prosody, reference)
            report.update(fallback_steps=sum(out.fallbacks), poems_per_s=round(len(run) / wall, 1),
                          examples=out.texts[:3])
            results["generated"][f"{form}/{name}"] = report
            table.append((f"{form} {name} (strict+rhyme, {len(run)} poems)",
                          " · ".join(f"{k.replace('_', ' ')} {report[k]:.3f}" for k in keys)))
            print(f"{form:6s} {name:26s}", {k: round(report[k], 3) for k in keys}, flush=True)
    clean = pd.read_parquet(DATA / "03_primary/clean_poems.parquet")
    train_ids = set(vectors.loc[vectors["split"] == "train", "id"])
    shapes = clean["text"].map(shape_of)
    for form in FORMS:
        # the corpus's own poems of this shape (held-out ones, so the copy rate means something)
        texts = clean.loc[(shapes == form) & ~clean["id"].isin(train_ids), "text"].tolist()
        all_texts = clean.loc[shapes == form, "text"].tolist()
        report = poem_report(all_texts, form, prosody)
        report["copy_rate"] = poem_report(texts, form, prosody, reference)["copy_rate"]  # held-out poems
        # distinct-n falls as the set grows: also measure it on as many poems as were sampled
        subset = pd.Series(all_texts).sample(min(poems, len(all_texts)), random_state=0).tolist()
        sub = poem_report(subset, form, prosody)
        report["distinct_1_all"], report["distinct_2_all"] = report["distinct_1"], report["distinct_2"]
        report["distinct_1"], report["distinct_2"] = sub["distinct_1"], sub["distinct_2"]
        results["corpus"][form] = report
        table.append((f"{form} corpus ({len(all_texts):,} poems; distinct on {len(subset)})",
                      " · ".join(f"{k.replace('_', ' ')} {report[k]:.3f}" for k in keys)))
        print(f"{form:6s} corpus", {k: round(report[k], 3) for k in keys}, flush=True)
    write_results("quality_generate", results, table)


if __name__ == "__main__":
    main()
