"""What training optimises: the model it starts from, the loss of a batch, the optimizer, and the
validation loss.

The loss is the summed negative log-likelihood of every predicted token (``batching.nll``; padding
never counts); the training loop divides it by the step's token count over all ranks.
"""

from __future__ import annotations

import logging

import torch

from tangshi_pipeline.poet.batching import Buckets
from tangshi_pipeline.poet.devices import autocast
from tangshi_pipeline.poet.model import AdaptiveHead, CharRNN, ModelConfig, head_problem, nll
from tangshi_pipeline.poet.params import TrainingParams

log = logging.getLogger(__name__)


def model_config(p: TrainingParams, vocab_size: int) -> ModelConfig:
    """The architecture that ``p`` asks for; bad head settings raise ValueError naming the parameter.
    Adaptive cutoffs beyond a small vocabulary are dropped; with none left the head is the full one
    (an adaptive softmax without clusters is the full softmax)."""
    cutoffs = tuple(c for c in p.adaptive_cutoffs if c < vocab_size - 1) if p.head == "adaptive" else ()
    head = p.head if cutoffs or p.head == "full" or not p.adaptive_cutoffs else "full"
    if head != p.head or (p.head == "adaptive" and len(cutoffs) < len(p.adaptive_cutoffs)):
        log.info("training.adaptive_cutoffs %s: the vocabulary has %d tokens; the head is %s%s", p.adaptive_cutoffs,
                 vocab_size, head, f" with cutoffs {list(cutoffs)}" if cutoffs else "")
    if problem := head_problem(head, cutoffs, vocab_size):
        raise ValueError(f"invalid parameter training.{problem} (set it in conf/base/parameters_training.yml "
                         f"or with --params)")
    return ModelConfig(vocab_size, p.cell, p.embedding_dim, p.hidden_dim, p.num_layers, p.dropout, head, cutoffs)


def initial_model(config: ModelConfig, train: Buckets, device: torch.device) -> CharRNN:
    """A fresh model whose head starts from the unigram distribution (bias = log frequency of each
    training target): the first minutes no longer go into learning character frequencies (loss
    ln V ≈ 8.9 → ≈ 6.5 at step 0)."""
    model = CharRNN(config)
    counts = train.target_counts(config.vocab_size).double() + 1
    log_p = (counts / counts.sum()).log()
    if isinstance(model.head, AdaptiveHead):
        model.head.unigram_init(log_p)
    else:
        model.head.bias.data = log_p.float()
    return model.to(device).train()


def make_optimizer(model: torch.nn.Module, p: TrainingParams, device: torch.device) -> torch.optim.Optimizer:
    if p.optimizer == "rmsprop":  # the classic exercise's choice
        return torch.optim.RMSprop(model.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay,
                             fused=device.type == "cuda")


class StepLoss(torch.nn.Module):
    """The summed training NLL of a batch as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: CharRNN, fused: bool):
        super().__init__()
        self.model, self.fused = model, fused

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.model.features(inputs)
        return self.model.nll(hidden, targets, self.fused)


@torch.no_grad()
def evaluate(model: CharRNN, buckets: Buckets, device: torch.device, precision: str = "fp32") -> float | None:
    """Mean negative log-likelihood (nats) per predicted token, or None for an empty split."""
    if buckets.tokens == 0:
        return None
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for batch in buckets.ordered():
        with autocast(device, precision):
            logits, _ = model(batch.inputs)
        total += nll(logits, batch.targets)
    model.train(was_training)
    return total.item() / buckets.tokens
