"""Length buckets and the masked loss: every poem once per epoch, deterministic order, and padding
that never reaches the loss or the gradients."""

import numpy as np
import pytest
import torch

from tangshi_pipeline.poet.batching import Buckets
from tangshi_pipeline.poet.model import CharRNN, ModelConfig, head_nll, nll
from tangshi_pipeline.poet.vocab import END_ID, PAD_ID, START_ID

V = 40


def poems(n=37, seed=0):
    rng = np.random.default_rng(seed)
    return [np.array([START_ID, *rng.integers(4, V, size=k), END_ID], dtype=np.int32)
            for k in rng.choice([3, 5, 5, 7, 7, 7, 12], size=n)]


def test_each_poem_once_per_epoch_with_shifted_targets_and_padding():
    seqs = poems()
    buckets = Buckets(seqs, batch_size=4)
    seen = []
    for batch in buckets.epoch(seed=1, epoch=0):
        assert batch.ids.dtype == torch.int64 and batch.ids.shape[0] <= 4
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        assert batch.tokens == int((batch.targets != PAD_ID).sum())
        for row in batch.ids.tolist():
            n = len(row) - row[::-1].index(END_ID)  # up to the end token; the rest is padding
            assert set(row[n:]) <= {PAD_ID}
            seen.append(tuple(row[:n]))
    assert sorted(seen) == sorted(tuple(s.tolist()) for s in seqs)
    assert buckets.tokens == sum(len(s) - 1 for s in seqs)
    assert len(buckets) == len(list(buckets.epoch(1, 0)))


def test_buckets_do_not_split_a_length_and_hold_at_least_a_batch():
    buckets = Buckets(poems(200), batch_size=16)
    widths = [int(n.max()) for n in buckets.lengths]
    assert widths == sorted(set(widths))  # each length lives in exactly one bucket
    assert all(len(n) >= 16 for n in buckets.lengths[:-1])


def test_epoch_order_is_deterministic_and_resumable():
    buckets = Buckets(poems(), batch_size=4)
    a = [b.ids.tolist() for b in buckets.epoch(seed=7, epoch=3)]
    assert a == [b.ids.tolist() for b in buckets.epoch(seed=7, epoch=3)]
    assert a != [b.ids.tolist() for b in buckets.epoch(seed=7, epoch=4)]
    assert a[5:] == [b.ids.tolist() for b in buckets.epoch(seed=7, epoch=3, skip=5)]


def test_ordered_covers_everything_once():
    seqs = poems()
    tokens = sum(b.tokens for b in Buckets(seqs, batch_size=5).ordered())
    assert tokens == sum(len(s) - 1 for s in seqs)


@pytest.mark.parametrize("fused", [False, True])
def test_padding_never_contributes_to_loss_or_gradients(fused):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, V)
    targets = torch.tensor([[5, 6, END_ID, PAD_ID, PAD_ID], [7, 8, 9, 10, END_ID]])
    hidden = torch.randn(2, 5, 8)

    def run(h):
        h = h.clone().requires_grad_()
        head.zero_grad()
        loss = head_nll(h, head, targets, fused)
        loss.backward()
        return loss.detach(), h.grad, head.weight.grad.clone(), head.bias.grad.clone()

    base = run(hidden)
    garbage = hidden.clone()
    garbage[0, 3:] = 1e3 * torch.randn(2, 8)  # whatever sits at padding positions
    changed = run(garbage)
    assert torch.allclose(base[0], changed[0])
    assert torch.equal(changed[1][0, 3:], torch.zeros(2, 8))
    for a, b in zip(base[2:], changed[2:]):
        assert torch.allclose(a, b, atol=1e-6)
    # and the loss is the sum over real targets only
    logp = torch.log_softmax(head(hidden), -1)
    real = targets != PAD_ID
    expected = -logp.gather(-1, targets[..., None]).squeeze(-1)[real].sum()
    assert torch.allclose(base[0], expected, atol=1e-5)


def test_fused_head_matches_unfused():
    torch.manual_seed(1)
    head = torch.nn.Linear(16, V)
    hidden = torch.randn(3, 300, 16)  # more rows than one chunk
    targets = torch.randint(0, V, (3, 300))
    out = []
    for fused in (False, True):
        h = hidden.clone().requires_grad_()
        head.zero_grad()
        loss = head_nll(h, head, targets, fused)
        loss.backward()
        out.append((loss.detach(), h.grad, head.weight.grad.clone(), head.bias.grad.clone()))
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_padded_batch_equals_sequences_one_by_one():
    """Through the model: a padded batch gives the summed loss and gradients of each poem alone."""
    torch.manual_seed(2)
    model = CharRNN(ModelConfig(V, embedding_dim=8, hidden_dim=12))
    seqs = [s for s in poems(6)]
    batch = next(Buckets(seqs, batch_size=6).ordered())
    assert (batch.ids == PAD_ID).any()

    def loss_and_grads(ids):
        model.zero_grad()
        logits, _ = model(ids[:, :-1])
        loss = nll(logits, ids[:, 1:])
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    batched = loss_and_grads(batch.ids)
    singles = [loss_and_grads(torch.as_tensor(s, dtype=torch.int64)[None]) for s in seqs]
    assert torch.allclose(batched[0], sum(s[0] for s in singles), rtol=1e-5)
    for i, g in enumerate(batched[1]):
        assert torch.allclose(g, sum(s[1][i] for s in singles), atol=1e-5)
