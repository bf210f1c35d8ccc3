"""Themes (issue 12): do theme keywords steer the poems, and do they keep every constraint?

For each of 20 common theme characters it samples 七绝 with strict tones and rhyme (temperature
0.8, top-p 0.9, ``--poems`` poems, the begin characters of quality_generate) twice — with the
character as ``generate.keywords`` and without any — and reports the share of poems containing
the character, format, tonal and rhyme accuracy, and, with ``no_copy``, the copy rate (lines found
verbatim in the training split). Then the validation perplexity of the model on the validation
poems read with their keywords (``poem_keywords``) and without. Results go to
``benchmarks/results/themes.{json,md}``.

The model is the latest version in ``data/06_models/poet`` (or ``--model <version folder>``); it must
be trained with themes (``kedro run --pipelines=training``, ``training.keyword_dropout`` < 1).

    python benchmarks/quality_themes.py [--poems 50] [--model FOLDER] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import generate_params, generation_inputs, write_results  # noqa: E402

from tangshi_pipeline.pipelines.generate.nodes import poem_report, training_clauses  # noqa: E402
from tangshi_pipeline.poet.batching import Buckets, split_sequences, themed_sequences  # noqa: E402
from tangshi_pipeline.poet.decoding import Decoder  # noqa: E402
from tangshi_pipeline.poet.objective import evaluate  # noqa: E402

DATA = Path("data")
THEMES = list("秋月春山水风雨花酒梅雪云江柳夜归送别思乡")
BEGINS = list("日红山夜湖君月")
KEYS = ("format_accuracy", "tonal_conformance", "rhyme_accuracy", "copy_rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--poems", type=int, default=50, help="poems per theme, with and without it (default 50)")
    ap.add_argument("--model", type=Path, help="a model version folder (default: the latest)")
    ap.add_argument("--quick", action="store_true", help="8 poems per theme and 4 themes, for a smoke run")
    ap.add_argument("--boost", type=float, help="keyword_boost of the boosted arm (default: the project's)")
    args = ap.parse_args()
    poems, themes = (8, THEMES[:4]) if args.quick else (args.poems, THEMES)
    torch.set_num_threads(1)

    vocab, vectors, prosody, artifact = generation_inputs(args.model)
    keywords = pd.read_parquet(DATA / "05_model_input/poem_keywords.parquet")
    if not artifact.themed:
        raise SystemExit("the model was trained without themes: train with training.keyword_dropout < 1")
    reference = training_clauses(vectors, vocab)
    decoder = Decoder(artifact.model, vocab, prosody, training_lines=reference)
    begins = [BEGINS[i % len(BEGINS)] for i in range(poems)]
    results: dict = {"model": artifact.meta.get("training", {}), "themes_meta": artifact.meta.get("themes"),
                     "poems_per_theme": poems, "settings": "qijue, strict tones, rhyme, no_copy, sample T 0.8 "
                     "top-p 0.9, seed 42", "per_theme": {}}
    boost = generate_params().keyword_boost if args.boost is None else args.boost
    arms = (("without", [], 0.0), ("with", None, 0.0), ("boosted", None, boost))  # None: [theme]
    results["keyword_boost"] = boost
    table, shares = [], {arm: [] for arm, _, _ in arms}
    totals: dict[str, list[dict]] = {arm: [] for arm, _, _ in arms}
    start = time.perf_counter()
    for theme in themes:
        row = {}
        for arm, words, arm_boost in arms:
            s = generate_params(form="qijue", strategy="sample", temperature=0.8, top_p=0.9, top_k=0,
                                tones="strict", rhyme=True, no_copy=True, seed=42,
                                keywords=[theme] if words is None else words, keyword_boost=arm_boost)
            out = decoder.generate(begins, [None] * poems, s)
            report = poem_report(out.texts, "qijue", prosody, reference)
            report["theme_share"] = sum(theme in t for t in out.texts) / poems
            report["theme_count"] = sum(t.count(theme) for t in out.texts) / poems
            report["examples"] = out.texts[:2]
            row[arm] = {k: report[k] for k in (*KEYS, "theme_share", "theme_count", "examples")}
            shares[arm].append(report["theme_share"])
            totals[arm].append(report)
        results["per_theme"][theme] = row
        print(f"{theme}: without {row['without']['theme_share']:.2f} → with {row['with']['theme_share']:.2f}"
              f" → boosted {row['boosted']['theme_share']:.2f}", {k: round(row["boosted"][k], 3) for k in KEYS},
              flush=True)
        table.append((f"{theme}: share containing it, no theme → theme (conditioning only) → theme + boost {boost:g}",
                      f"{row['without']['theme_share']:.2f} → {row['with']['theme_share']:.2f} → "
                      f"{row['boosted']['theme_share']:.2f}"))
    results["decode_s"] = round(time.perf_counter() - start, 1)
    for arm, _, _ in arms:
        mean = {k: sum(r[k] for r in totals[arm]) / len(totals[arm]) for k in (*KEYS, "theme_count")}
        mean["theme_share"] = sum(shares[arm]) / len(shares[arm])
        results[f"mean_{arm}_theme"] = mean
        table.append((f"mean over {len(themes)} themes, arm {arm} ({poems} poems each)",
                      " · ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in mean.items())))
    results["themes_at_or_over_60pct"] = {arm: sum(s >= 0.6 for s in shares[arm]) for arm, _, _ in arms}
    table.append(("themes whose share reaches 60 % (of 20): no theme / conditioning only / + boost",
                  " / ".join(str(results["themes_at_or_over_60pct"][arm]) for arm, _, _ in arms)))
    results["validation"] = perplexities(artifact.model, vectors, keywords)
    v = results["validation"]
    table.append(("validation perplexity with keywords / without",
                  f"{v['with_keywords']['perplexity']:.2f} / {v['without_keywords']['perplexity']:.2f} "
                  f"({v['poems']} poems, {v['tokens']} predicted tokens each way)"))
    print(v, flush=True)
    write_results("themes", results, table)


def perplexities(model, vectors: pd.DataFrame, keywords: pd.DataFrame) -> dict:
    """Validation loss of the poems read with their keywords and without (the same tokens scored)."""
    device = torch.device("cpu")
    plain = Buckets(split_sequences(vectors, "val"), 256, device)
    seqs, skips = themed_sequences(vectors, "val", keywords)
    themed = Buckets(seqs, 256, device, skips)
    out = {"poems": plain.sequences, "tokens": plain.tokens}
    for name, buckets in (("with_keywords", themed), ("without_keywords", plain)):
        loss = evaluate(model, buckets, device)
        out[name] = {"loss": loss, "perplexity": math.exp(loss)}
    return out


if __name__ == "__main__":
    main()
