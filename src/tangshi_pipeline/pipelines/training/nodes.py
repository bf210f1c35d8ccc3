"""Nodes of the training pipeline: train → evaluate, and the training curve."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from tangshi_pipeline.poet.artifact import Artifact, vocabulary_mismatch
from tangshi_pipeline.poet.batching import Buckets, split_sequences, themed_sequences
from tangshi_pipeline.poet.checkpoints import CheckpointStore
from tangshi_pipeline.poet.devices import eval_batch, resolve_device, torch_settings
from tangshi_pipeline.poet.objective import evaluate
from tangshi_pipeline.poet.params import TrainingParams, parse
from tangshi_pipeline.poet.training import train_poet
from tangshi_pipeline.poet.vocab import Vocab


def train(vectors: pd.DataFrame, vocab: dict, params: dict, checkpoints: CheckpointStore,
          poem_keywords: pd.DataFrame | None = None) -> tuple[Artifact, pd.DataFrame]:
    """Train (or continue training) the poet on the train split; validation loss after each epoch.
    ``training.world_size > 1`` trains data-parallel on that many ranks started here. With
    ``poem_keywords`` and ``training.keyword_dropout`` < 1 it learns themes (a keyword prefix)."""
    return train_poet(vectors, Vocab.from_json(vocab), parse(TrainingParams, "training", params), checkpoints,
                      keywords=poem_keywords)


def evaluate_model(model: Artifact, vectors: pd.DataFrame, vocab: dict, device: str, threads: int,
                   precision: str, poem_keywords: pd.DataFrame | None = None) -> dict[str, Any]:
    """Perplexity and bits per character of the held-out splits (per predicted token, end token included),
    on ``device`` (``training.device``; on the CPU with ``training.threads``) in ``precision``.

    The poems are read without keywords (comparable with any model); for a model trained with
    themes, ``<split>.with_keywords`` gives the same figures with each poem's keywords read first
    (the prefix unscored: the same tokens are predicted)."""
    if problem := vocabulary_mismatch(model, Vocab.from_json(vocab)):
        raise ValueError(f"{problem}; retrain it (kedro run --pipelines=training)")
    target = resolve_device(device)
    net = model.model.to(target)
    metrics: dict[str, Any] = {"architecture": {k: v for k, v in vars(net.config).items()},
                               "epochs_done": model.meta.get("training", {}).get("epochs_done"),
                               "themes": model.meta.get("themes")}
    with torch_settings(target, threads):
        for split in ("val", "test"):
            seqs = split_sequences(vectors, split)
            buckets = Buckets(seqs, eval_batch(target), target)
            metrics[split] = {"poems": len(seqs), "tokens": buckets.tokens,
                              **_figures(evaluate(net, buckets, target, precision))}
            if model.meta.get("themes") and poem_keywords is not None:
                themed, skips = themed_sequences(vectors, split, poem_keywords)
                buckets = Buckets(themed, eval_batch(target), target, skips)
                metrics[split]["with_keywords"] = _figures(evaluate(net, buckets, target, precision))
    net.cpu()
    return metrics


def _figures(loss: float | None) -> dict[str, float | None]:
    return {"loss": loss, "perplexity": math.exp(loss) if loss is not None else None,
            "bits_per_char": loss / math.log(2) if loss is not None else None}


def training_curve(history: pd.DataFrame) -> Figure:
    """Train loss (every few hundred steps, and per epoch), validation loss per epoch, training speed."""
    steps = history["kind"].eq("step") if "kind" in history else pd.Series(False, index=history.index)
    epochs = history[~steps]
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    loss_ax, speed_ax = fig.subplots(1, 2)
    if steps.any():
        loss_ax.plot(history.loc[steps, "epoch"], history.loc[steps, "train_loss"], "-", color="tab:blue",
                     alpha=0.6, label="train (steps since the previous point)")
    loss_ax.plot(epochs["epoch"], epochs["train_loss"], "o", color="tab:blue", label="train (epoch mean)")
    if epochs["val_loss"].notna().any():
        loss_ax.plot(epochs["epoch"], epochs["val_loss"], "s-", color="tab:orange", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss (nats per character)", title="loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    speed_ax.plot(epochs["epoch"], epochs["tokens_per_s"] / 1000, "o-", color="tab:green")
    speed_ax.set(xlabel="epoch", ylabel="thousand tokens / s", title="training speed", ylim=(0, None))
    speed_ax.grid(alpha=0.3)
    return fig
