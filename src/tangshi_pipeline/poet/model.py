"""The character-level poet: embedding → RNN / LSTM / GRU → linear head over the vocabulary.

Everything about running the network is here: the forward pass over whole sequences (training),
the single-step form that decoding carries a recurrent state through (:meth:`CharRNN.step`, and
:class:`LSTMStep`, its fast LSTM version), and the loss (:func:`nll`, :func:`head_nll`: the head
and the loss fused, chunk by chunk, so the logits are never kept).

The defaults reproduce the classic exercise's model size (embedding 100, 2 × LSTM 128) so results
compare. One deliberate difference: the classic code applies ReLU to the logits before the
softmax. That is a bug — it clamps every negative logit to 0, so the model cannot make a
character less likely than "neutral" and the softmax is flattened — and it is not reproduced
here (the classic baseline in ``benchmarks/`` keeps it, to be faithful).

A trained model on disk (weights and config, checked on load) is :mod:`tangshi_pipeline.poet.artifact`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tangshi_pipeline.poet.vocab import PAD_ID

log = logging.getLogger(__name__)

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # rows of each recurrent weight, in units of hidden_dim
MAX_SIZE = 1 << 20  # vocabulary, embedding or hidden size
MAX_LAYERS = 64
MAX_PARAMETERS = 1 << 30  # 4 GiB as float32; the classic-size model has 1.6 M


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    cell: str = "lstm"
    embedding_dim: int = 100
    hidden_dim: int = 128
    num_layers: int = 2
    dropout: float = 0.0
    head: str = "full"  # "full": one linear layer over the vocabulary; "adaptive": see AdaptiveHead
    adaptive_cutoffs: tuple[int, ...] = ()  # adaptive head: ids where its clusters start

    @classmethod
    def from_json(cls, data: Any) -> ModelConfig:
        """The ``architecture`` of a config.json, checked before anything is allocated; a bad
        value raises ValueError naming ``architecture.<key>``."""
        if data is None:
            raise ValueError("architecture is missing")
        if not isinstance(data, dict):
            raise ValueError(f"architecture must be an object, not {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"architecture: unknown keys {unknown}")
        if "vocab_size" not in data:
            raise ValueError("architecture.vocab_size is missing")
        config = cls(**{**data, "adaptive_cutoffs": tuple(data.get("adaptive_cutoffs", ()))})
        for key in ("vocab_size", "embedding_dim", "hidden_dim", "num_layers"):
            value, top = getattr(config, key), MAX_LAYERS if key == "num_layers" else MAX_SIZE
            if type(value) is not int or not 1 <= value <= top:
                raise ValueError(f"architecture.{key} = {value!r}: expected a whole number, 1 to {top}")
        if type(config.dropout) not in (int, float) or not 0 <= config.dropout < 1:
            raise ValueError(f"architecture.dropout = {config.dropout!r}: expected a number in [0, 1)")
        if config.cell not in CELLS:
            raise ValueError(f"architecture.cell = {config.cell!r}: expected one of {sorted(CELLS)}")
        if problem := head_problem(config.head, config.adaptive_cutoffs, config.vocab_size):
            raise ValueError(f"architecture.{problem}")
        count = sum(math.prod(shape) for shape in parameter_shapes(config).values())
        if count > MAX_PARAMETERS:
            raise ValueError(
                f"architecture {asdict(config)} has {count:,} parameters, over the limit of "
                f"{MAX_PARAMETERS:,} (4 GiB as float32)"
            )
        return config


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a :class:`CharRNN`'s state dict, without building it."""
    v, e, h = config.vocab_size, config.embedding_dim, config.hidden_dim
    rows = GATES[config.cell] * h
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (v, e)}
    for layer in range(config.num_layers):
        shapes |= {f"rnn.weight_ih_l{layer}": (rows, e if layer == 0 else h),
                   f"rnn.weight_hh_l{layer}": (rows, h),
                   f"rnn.bias_ih_l{layer}": (rows,), f"rnn.bias_hh_l{layer}": (rows,)}
    if config.head == "full":
        return shapes | {"head.weight": (v, h), "head.bias": (v,)}
    cut = [*config.adaptive_cutoffs, v]
    shapes |= {"head.head.weight": (cut[0] + len(cut) - 1, h), "head.head.bias": (cut[0] + len(cut) - 1,)}
    for i in range(len(cut) - 1):
        width = adaptive_width(h, i)
        shapes |= {f"head.tail.{i}.0.weight": (width, h), f"head.tail.{i}.1.weight": (cut[i + 1] - cut[i], width)}
    return shapes


def head_problem(head: str, cutoffs: tuple[int, ...], vocab_size: int) -> str | None:
    """Why a head's settings are invalid ("<key> = <value>: <rule>"), or None."""
    if head not in ("full", "adaptive"):
        return f"head = {head!r}: expected 'full' or 'adaptive'"
    if head == "full":
        return None if not cutoffs else f"adaptive_cutoffs = {list(cutoffs)}: only for head 'adaptive'"
    ok = cutoffs and all(type(c) is int for c in cutoffs) and list(cutoffs) == sorted(set(cutoffs))
    if not ok or not 4 < cutoffs[0] or not cutoffs[-1] < vocab_size:
        return (f"adaptive_cutoffs = {list(cutoffs)}: expected increasing token ids between 5 and the "
                f"vocabulary size - 1 ({vocab_size - 1})")
    return None


def adaptive_width(hidden_dim: int, cluster: int) -> int:
    """The projection width of an adaptive head's cluster, as torch sets it: hidden_dim // 4^(cluster + 1)."""
    return int(hidden_dim // 4.0 ** (cluster + 1))


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.rnn = CELLS[config.cell](
            config.embedding_dim, config.hidden_dim, config.num_layers,
            batch_first=True, dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head = (nn.Linear(config.hidden_dim, config.vocab_size) if config.head == "full" else
                     AdaptiveHead(config.hidden_dim, config.vocab_size, config.adaptive_cutoffs))

    def forward(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """ids (B, T) → logits (B, T, V) and the recurrent state to continue from."""
        out, state = self.features(ids, state)
        return self.logits(out), state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last layer's outputs (..., H) → logits (..., V) over the vocabulary (for the adaptive
        head: log-probabilities, which are logits too): the one way to read the head."""
        if isinstance(self.head, nn.Linear):
            return self.head(hidden)
        return self.head.log_prob(hidden.flatten(0, -2)).unflatten(0, hidden.shape[:-1])

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor, fused: bool) -> torch.Tensor:
        """Summed NLL of ``targets`` (B, T) given the last layer's outputs (B, T, H); padding never counts."""
        if isinstance(self.head, nn.Linear):
            return head_nll(hidden, self.head, targets, fused)
        keep = targets.flatten() != PAD_ID
        return -self.head(hidden.flatten(0, 1)[keep].float(), targets.flatten()[keep]).output.sum()

    def features(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """ids (B, T) → the last layer's outputs (B, T, H), before the head (training fuses the
        head with the loss, see :func:`head_nll`)."""
        return self.rnn(self.embedding(ids), state)

    def step(self, token: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """One token per sequence (B,) from the carried state → the last layer's output (B, H)
        and the new state: how decoding runs the network (:meth:`stepper` gives the fast form)."""
        out, state = self.rnn(self.embedding(token[:, None]), state)
        return out[:, -1], state

    def stepper(self):
        """:meth:`step` for decoding: for an LSTM an :class:`LSTMStep` made from the weights as they
        are now (make another after they change), for the other cells :meth:`step` itself."""
        return LSTMStep(self) if isinstance(self.rnn, nn.LSTM) else self.step


class AdaptiveHead(nn.AdaptiveLogSoftmaxWithLoss):
    """An adaptive softmax (Grave et al. 2017) over a frequency-ordered vocabulary: the ids below
    ``cutoffs[0]`` (the specials and the commonest characters: 87 % of the corpus's tokens below
    1,000) are scored by one small linear layer, which also scores one entry per cluster of rarer
    ids; a cluster's own characters are scored only for the tokens that fall in it, from a
    projection 4× (then 16×, …) narrower than the hidden state. Training reads only the target's
    cluster; :meth:`log_prob` gives the full distribution (evaluation and decoding)."""

    def __init__(self, hidden_dim: int, vocab_size: int, cutoffs: tuple[int, ...]):
        super().__init__(hidden_dim, vocab_size, list(cutoffs), div_value=4.0, head_bias=True)

    def unigram_init(self, log_p: torch.Tensor) -> None:
        """Start from the unigram distribution: the first layer's bias is the log frequency of each
        of its ids and of each cluster's total (a cluster's own ids have no bias)."""
        cut = [*self.cutoffs[:-1], len(log_p)]
        clusters = [torch.logsumexp(log_p[a:b], 0) for a, b in zip(cut, cut[1:])]
        self.head.bias.data = torch.cat([log_p[: cut[0]], torch.stack(clusters)]).float()


class LSTMStep:
    """:meth:`CharRNN.step` of an LSTM from fused weights: per layer one ``addmm`` for the recurrent
    part, and for the first layer a table of every token's input projection (embedding folded in).
    ``nn.LSTM`` called on one time step spends most of its time in set-up, not arithmetic.
    State: ``[h_0 … h_{L-1}, c_0 … c_{L-1}]``, each (B, H). Gate order as in PyTorch: i, f, g, o."""

    def __init__(self, model: CharRNN):
        rnn = model.rnn
        self.layers, self.hidden = rnn.num_layers, rnn.hidden_size
        w = lambda name: getattr(rnn, name).detach()  # noqa: E731
        self.bias = [w(f"bias_ih_l{k}") + w(f"bias_hh_l{k}") for k in range(self.layers)]
        self.table = torch.addmm(self.bias[0], model.embedding.weight.detach(), w("weight_ih_l0").t())
        self.w_ih = [None] + [w(f"weight_ih_l{k}").t().contiguous() for k in range(1, self.layers)]
        self.w_hh = [w(f"weight_hh_l{k}").t().contiguous() for k in range(self.layers)]

    def __call__(self, token: torch.Tensor, state: list | None) -> tuple[torch.Tensor, list]:
        L = self.layers
        if state is None:
            zero = torch.zeros(len(token), self.hidden, device=token.device, dtype=self.table.dtype)
            state = [zero] * (2 * L)
        x = self.table[token]
        new_h, new_c = [], []
        for k in range(L):
            gates = torch.addmm(x, state[k], self.w_hh[k])
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * state[L + k] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            new_h.append(h)
            new_c.append(c)
            if k + 1 < L:
                x = torch.addmm(self.bias[k + 1], h, self.w_ih[k + 1])
        return h, new_h + new_c


def select_state(state: Any, keep: torch.Tensor) -> Any:
    """Keep some sequences (batch rows) of a recurrent state: an :class:`LSTMStep` list of (B, H)
    tensors, or nn.RNN/GRU's (layers, B, H) tensor or nn.LSTM's (h, c) pair of them."""
    if isinstance(state, list):
        return [x[keep] for x in state]
    if isinstance(state, tuple):
        return tuple(x[:, keep] for x in state)
    return state[:, keep]


# ------------------------------------------------------------------------------------- loss


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of the targets; padding targets contribute nothing."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD_ID, reduction="sum")


def head_nll(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, fused: bool) -> torch.Tensor:
    """``nll(head(hidden), targets)``; ``fused`` computes it in row chunks without keeping the logits."""
    if not fused:
        return nll(head(hidden), targets)
    chunk = 256 if hidden.device.type == "cpu" else 16384  # rows: 256 × 7,181 × 4 B ≈ 7 MB of cache
    return _FusedHeadNLL.apply(hidden.flatten(0, 1), head.weight, head.bias, targets.flatten(), chunk)


class _FusedHeadNLL(torch.autograd.Function):
    """Linear head + softmax cross-entropy, chunk by chunk, gradients computed in the forward pass.

    The (tokens × vocabulary) logits are the biggest tensor of a step; the unfused path writes
    them, then log-softmax output, its gradient and a zero-filled NLL gradient — each a pass over
    memory. Here each chunk of rows stays in cache: logits → log-sum-exp → loss, then in place
    softmax − one-hot (zero on padding rows) → input, weight and bias gradients. Always fp32.
    About 1.5× faster than the unfused head + loss on the CPU; the gradients match it to rounding.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        with torch.autocast(hidden.device.type, enabled=False):
            hidden, weight, bias = hidden.float(), weight.float(), bias.float()
            grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
            g_hidden = torch.empty_like(hidden) if grads else None
            g_weight, g_bias = (torch.zeros_like(weight), torch.zeros_like(bias)) if grads else (None, None)
            total = hidden.new_zeros(())
            for i in range(0, hidden.shape[0], chunk):
                h, y = hidden[i:i + chunk], targets[i:i + chunk]
                keep = (y != PAD_ID).to(h.dtype)
                logits = torch.addmm(bias, h, weight.t())
                lse = torch.logsumexp(logits, dim=1)
                total += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * keep).sum()
                if grads:
                    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                    probs[torch.arange(len(y), device=y.device), y] -= 1
                    probs.mul_(keep[:, None])
                    torch.mm(probs, weight, out=g_hidden[i:i + chunk])
                    g_weight.addmm_(probs.t(), h)
                    g_bias += probs.sum(0)
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        return total

    @staticmethod
    def backward(ctx, grad):
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        return g_hidden * grad, g_weight * grad, g_bias * grad, None, None
