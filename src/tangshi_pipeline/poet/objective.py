"""What training optimises: the model it starts from, the loss of a batch, the optimizer, and the
validation loss.

The loss is the summed negative log-likelihood of every predicted token (``batching.nll``; padding
never counts); the training loop divides it by the step's token count over all ranks.
"""

from __future__ import annotations

import torch

from tangshi_pipeline.poet.batching import Buckets
from tangshi_pipeline.poet.devices import autocast
from tangshi_pipeline.poet.model import CharRNN, ModelConfig, head_nll, nll
from tangshi_pipeline.poet.params import TrainingParams


def initial_model(config: ModelConfig, train: Buckets, device: torch.device) -> CharRNN:
    """A fresh model whose head starts from the unigram distribution (bias = log frequency of each
    training target): the first minutes no longer go into learning character frequencies (loss
    ln V ≈ 8.9 → ≈ 6.5 at step 0)."""
    model = CharRNN(config)
    counts = train.target_counts(config.vocab_size).double() + 1
    model.head.bias.data = (counts / counts.sum()).log().float()
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
        return head_nll(hidden, self.model.head, targets, self.fused)


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
