"""A faithful re-implementation of the classic exercise's training loop — the baseline.

What the classic code does, and this file keeps (bugs included, on purpose):
- the model: embedding (uniform −1…1 init) → 2-layer LSTM → linear (Glorot-uniform init, zero
  bias) → **ReLU on the logits** → log-softmax. The ReLU is a bug (every negative logit becomes 0,
  so no character can be made less likely than "neutral"); the project's model leaves it out;
- poems sorted by length and cut into batches of 100 in that order, never shuffled;
- one sequence per forward pass (batch size 1), targets = the input shifted by one with the last
  token repeated (so it also learns end → end);
- the NLL (mean over the poem's positions) of the 100 poems of a batch summed into one loss, one
  backward, gradient norm clipped to 1, RMSprop with lr 0.01.

``ClassicPoet.forward`` returns the ReLU'd logits, so the project's ``training.evaluate`` (which
applies log-softmax through the cross-entropy) scores it exactly as the classic model predicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ClassicPoet(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int = 100, hidden_dim: int = 128, seed: int = 42):
        super().__init__()
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.embedding.weight.data.copy_(torch.from_numpy(rng.uniform(-1, 1, (vocab_size, embedding_dim))))
        self.rnn = nn.LSTM(embedding_dim, hidden_dim, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden_dim, vocab_size)
        bound = np.sqrt(6.0 / (hidden_dim + vocab_size))
        self.fc.weight.data.uniform_(-bound, bound)
        self.fc.bias.data.fill_(0)

    def forward(self, ids: torch.Tensor, state=None):
        out, state = self.rnn(self.embedding(ids), state)
        return F.relu(self.fc(out)), state  # the classic ReLU on the logits (a bug, kept here)


def classic_batches(sequences: Sequence[np.ndarray], batch_size: int = 100):
    """The classic generate_batch: length-sorted poems, consecutive chunks, y = x[1:] + x[-1:]."""
    poems = sorted(sequences, key=len)
    for i in range(len(poems) // batch_size):
        chunk = poems[i * batch_size:(i + 1) * batch_size]
        yield [(np.asarray(x, dtype=np.int64), np.append(np.asarray(x[1:], dtype=np.int64), x[-1])) for x in chunk]


def train_classic(model: ClassicPoet, sequences: Sequence[np.ndarray], seconds: float,
                  on_step: Callable[[float, int], None] | None = None, batch_size: int = 100) -> dict:
    """Train for ``seconds`` of wall time (epochs repeat the same order); ``on_step(elapsed, tokens)``
    is called after every optimizer step. Tokens counted: every position the loss covers."""
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01)
    model.train()
    tokens, steps, start = 0, 0, time.perf_counter()
    while True:
        for batch in classic_batches(sequences, batch_size):
            loss = 0
            for x, y in batch:
                logits, _ = model(torch.from_numpy(x).unsqueeze(0))
                loss = loss + F.nll_loss(F.log_softmax(logits[0], dim=-1), torch.from_numpy(y))
                tokens += len(y)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1)
            optimizer.step()
            steps += 1
            elapsed = time.perf_counter() - start
            if on_step is not None:
                on_step(elapsed, tokens)
            if elapsed > seconds:
                return {"seconds": elapsed, "tokens": tokens, "steps": steps, "tokens_per_s": tokens / elapsed}
