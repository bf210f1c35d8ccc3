"""Nodes of the training pipeline: train → evaluate, and the training curve."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from tangshi_pipeline.poet.batching import Buckets, split_sequences
from tangshi_pipeline.poet.checkpoints import CheckpointStore
from tangshi_pipeline.poet.model import Artifact, ModelConfig, vocabulary_mismatch
from tangshi_pipeline.poet.params import TrainingParams, parse
from tangshi_pipeline.poet.training import evaluate, fit, ranks, resolve_device, set_threads
from tangshi_pipeline.poet.vocab import Vocab



def _eval_batch(device: torch.device) -> int:
    """Poems per evaluation batch: the logits of 64 poems of 80 characters are ~150 MB on the CPU."""
    return 64 if device.type == "cpu" else 512


def _device(p: TrainingParams) -> torch.device:
    device = resolve_device(p.device)
    if device.type == "cpu":
        set_threads(p.threads)
    elif device.type == "cuda" and ranks()[1] > 1:  # under torchrun: this rank's GPU
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def train(vectors: pd.DataFrame, vocab: dict, params: dict, checkpoints: CheckpointStore
          ) -> tuple[Artifact, pd.DataFrame]:
    """Train (or continue training) the poet on the train split; validation loss after each epoch.
    ``training.world_size > 1`` trains data-parallel on that many ranks started here (``distributed.py``)."""
    p = parse(TrainingParams, "training", params)
    vocab_ = Vocab.from_json(vocab)
    device = _device(p)
    train_seqs = split_sequences(vectors, "train")
    if not train_seqs:
        raise ValueError("the vectors table has no 'train' rows: check data_processing.split")
    val_seqs = split_sequences(vectors, "val")
    config = ModelConfig(len(vocab_), p.cell, p.embedding_dim, p.hidden_dim, p.num_layers, p.dropout)
    if p.world_size > 1 and ranks()[1] == 1:
        from tangshi_pipeline.poet.distributed import spawn_fit

        threads = max(1, torch.get_num_threads() // p.world_size)  # the idle cores, shared
        result = spawn_fit(config, vocab_.fingerprint, train_seqs, val_seqs, p, checkpoints, threads,
                           _eval_batch(device))
    else:
        train_set = Buckets(train_seqs, p.batch_size, device)
        val_set = Buckets(val_seqs, _eval_batch(device), device) if val_seqs else None
        result = fit(config, vocab_.fingerprint, train_set, val_set, p, checkpoints, device)
    pos, last = result.position, _last_epoch_row(result.position.history)
    meta = {
        "vocab_fingerprint": vocab_.fingerprint,
        "vocab": {"size": len(vocab_), "specials": vocab["specials"]},
        "training": {**p.model_dump(), "device": str(device), "epochs_done": last.get("epoch", pos.epoch),
                     "steps": pos.global_step, "tokens": pos.tokens, "elapsed_s": round(pos.elapsed_s, 1),
                     "stopped": result.stopped, "resumed_from": result.resumed_from},
        "metrics": {k: last.get(k) for k in ("train_loss", "val_loss", "val_perplexity")},
    }
    history = pd.DataFrame(pos.history, columns=["epoch", "step", "tokens", "elapsed_s", "train_loss",
                                                 "val_loss", "val_perplexity", "tokens_per_s", "kind"])
    return Artifact(result.model.cpu().eval(), meta), history


def _last_epoch_row(history: list[dict]) -> dict:
    """The newest per-epoch row (train and validation loss); rows of kind "step" hold the train loss only."""
    return next((row for row in reversed(history) if row.get("kind") != "step"), {})


def evaluate_model(model: Artifact, vectors: pd.DataFrame, vocab: dict, params: dict) -> dict[str, Any]:
    """Perplexity and bits per character of the held-out splits (per predicted token, end token included)."""
    p = parse(TrainingParams, "training", params)
    if problem := vocabulary_mismatch(model, Vocab.from_json(vocab)):
        raise ValueError(f"{problem}; retrain it (kedro run --pipelines=training)")
    device = _device(p)
    net = model.model.to(device)
    metrics: dict[str, Any] = {"architecture": {k: v for k, v in vars(net.config).items()},
                               "epochs_done": model.meta.get("training", {}).get("epochs_done")}
    for split in ("val", "test"):
        seqs = split_sequences(vectors, split)
        buckets = Buckets(seqs, _eval_batch(device), device)
        loss = evaluate(net, buckets, device, p.precision)
        metrics[split] = {
            "poems": len(seqs), "tokens": buckets.tokens, "loss": loss,
            "perplexity": math.exp(loss) if loss is not None else None,
            "bits_per_char": loss / math.log(2) if loss is not None else None,
        }
    net.cpu()
    return metrics


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
