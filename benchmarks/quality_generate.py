"""Quality of generated poems per form with strict tones + rhyme, against the real corpus.

For each form (wujue, qijue, wulv, qilv) it writes poems with ``tones: strict, rhyme: true`` —
greedy and sampled — and scores them with the pipeline's own report (format accuracy, tonal
conformance and per-position mean, rhyme accuracy, distinct-1/2, copy rate against the training
split). The same figures for the corpus's own poems of each form (every clean poem whose shape is
that form), through the same checker, are the reference point. Results go to
``benchmarks/results/quality_generate.{json,md}``.

The model is the latest version in ``data/06_models/poet`` (or ``--model <version folder>``).
Without the training pipeline, ``--train-standin MINUTES`` first trains a classic-size model
(embedding 100, LSTM 128 × 2) with a plain loop for that long and saves it there as a new
version (its meta says it is a stand-in).

    python benchmarks/quality_generate.py [--poems 210] [--train-standin 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from kedro.io import Version
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from tangshi_pipeline.datasets import ModelArtifact  # noqa: E402
from tangshi_pipeline.decoding import Decoder, Settings  # noqa: E402
from tangshi_pipeline.model import Artifact, CharRNN, ModelConfig, load_artifact  # noqa: E402
from tangshi_pipeline.pipelines.generate.nodes import poem_report, training_clauses  # noqa: E402
from tangshi_pipeline.prosody import FORMS, Prosody, shape_of  # noqa: E402
from tangshi_pipeline.vocab import PAD_ID, Vocab  # noqa: E402

DATA = Path("data")
MODELS = DATA / "06_models/poet"
BEGINS = list("日红山夜湖君月")


def train_standin(vocab: Vocab, vectors: pd.DataFrame, minutes: float, seed: int = 0,
                  start: Artifact | None = None) -> Artifact:
    """A classic-size LSTM trained on the training split for ``minutes`` (Adam, batches of 64 poems
    of similar length, the next-character cross-entropy), from scratch or from ``start``.
    Not the training pipeline: a stand-in."""
    torch.manual_seed(seed)
    model = start.model if start is not None else CharRNN(ModelConfig(len(vocab)))
    before = start.meta.get("training", {}) if start is not None else {}
    train = vectors[vectors["split"] == "train"].reset_index(drop=True)  # sorted by length
    batches = [train["ids"].iloc[i:i + 64].tolist() for i in range(0, len(train), 64)]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_ID)
    gen = torch.Generator().manual_seed(seed)
    deadline, steps, tokens, loss = time.time() + 60 * minutes, 0, 0, float("nan")
    model.train()
    while time.time() < deadline:
        for b in torch.randperm(len(batches), generator=gen).tolist():
            rows = batches[b]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
            for r, seq in enumerate(rows):
                ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            logits, _ = model(ids[:, :-1])
            step_loss = loss_fn(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            optimiser.zero_grad()
            step_loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            steps, tokens, loss = steps + 1, tokens + int((ids[:, 1:] != PAD_ID).sum()), step_loss.item()
            if steps % 50 == 0:
                print(f"  stand-in training: step {steps}, loss {loss:.3f}, {tokens:,} tokens", flush=True)
            if time.time() >= deadline:
                break
    meta = {"vocab_fingerprint": vocab.fingerprint,
            "training": {"stand_in": True, "minutes": minutes + before.get("minutes", 0),
                         "steps": steps + before.get("steps", 0), "tokens": tokens + before.get("tokens", 0),
                         "optimiser": "Adam 3e-3, batch 64 poems", "note": "benchmarks/quality_generate.py"},
            "metrics": {"last_train_loss": loss}}
    return Artifact(model.eval(), meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--poems", type=int, default=210, help="poems per form and strategy (default 210)")
    ap.add_argument("--model", type=Path, help="a model version folder (default: the latest)")
    ap.add_argument("--train-standin", type=float, metavar="MINUTES", help="train a stand-in model first")
    ap.add_argument("--resume", action="store_true", help="--train-standin continues the latest model")
    ap.add_argument("--quick", action="store_true", help="28 poems per form, for a smoke run")
    args = ap.parse_args()
    poems = 28 if args.quick else args.poems

    vocab = Vocab.from_json(json.loads((DATA / "05_model_input/vocab.json").read_text("utf-8")))
    vectors = pd.read_parquet(DATA / "05_model_input/vectors.parquet")
    prosody = Prosody.from_json(json.loads((DATA / "05_model_input/tone_lexicon.json").read_text("utf-8")),
                                json.loads((DATA / "05_model_input/rhyme_table.json").read_text("utf-8")))
    if args.train_standin:
        latest = ModelArtifact(str(MODELS), Version(None, None)).load() if args.resume else None
        trained = train_standin(vocab, vectors, args.train_standin, start=latest)
        ModelArtifact(str(MODELS), version=Version(None, None)).save(trained)
    artifact = load_artifact(args.model) if args.model else ModelArtifact(str(MODELS), Version(None, None)).load()
    if artifact.vocab_fingerprint != vocab.fingerprint:
        raise SystemExit("the model was not trained on data/05_model_input/vocab.json")
    reference = training_clauses(vectors, vocab)
    decoder = Decoder(artifact.model, vocab, prosody)
    begins = [BEGINS[i % len(BEGINS)] for i in range(poems)]

    results: dict = {"model": artifact.meta.get("training", {}), "poems_per_run": poems, "generated": {},
                     "corpus": {}}
    table = []
    keys = ("format_accuracy", "tonal_conformance", "tonal_position_mean", "rhyme_accuracy",
            "distinct_1", "distinct_2", "copy_rate")
    for form in FORMS:
        for strategy in ("greedy", "sample"):
            s = Settings(form=form, strategy=strategy, temperature=0.8, top_p=0.9, strict_tones=True,
                         rhyme=True, seed=42)
            run = begins if strategy == "sample" else BEGINS  # greedy: one poem per begin character
            start = time.perf_counter()
            out = decoder.generate(run, [None] * len(run), s)
            wall = time.perf_counter() - start
            report = poem_report(out.texts, form, prosody, reference)
            report.update(fallback_steps=sum(out.fallbacks), poems_per_s=round(len(run) / wall, 1),
                          examples=out.texts[:3])
            results["generated"][f"{form}/{strategy}"] = report
            table.append((f"{form} {strategy} (strict+rhyme, {len(run)} poems)",
                          " · ".join(f"{k.replace('_', ' ')} {report[k]:.3f}" for k in keys)))
            print(f"{form:6s} {strategy:6s}", {k: round(report[k], 3) for k in keys}, flush=True)
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
