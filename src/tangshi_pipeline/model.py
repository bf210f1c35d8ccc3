"""The character-level poet: embedding → RNN / LSTM / GRU → linear head over the vocabulary.

The defaults reproduce the classic exercise's model size (embedding 100, 2 × LSTM 128) so results
compare. One deliberate difference: the classic code applies ReLU to the logits before the
softmax. That is a bug — it clamps every negative logit to 0, so the model cannot make a
character less likely than "neutral" and the softmax is flattened — and it is not reproduced
here (the classic baseline in ``benchmarks/`` keeps it, to be faithful).

A trained model is stored as ``weights.safetensors`` plus ``config.json``; loading never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
WEIGHTS, CONFIG = "weights.safetensors", "config.json"


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    cell: str = "lstm"
    embedding_dim: int = 100
    hidden_dim: int = 128
    num_layers: int = 2
    dropout: float = 0.0


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.rnn = CELLS[config.cell](
            config.embedding_dim, config.hidden_dim, config.num_layers,
            batch_first=True, dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden_dim, config.vocab_size)

    def forward(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """ids (B, T) → logits (B, T, V) and the recurrent state to continue from."""
        out, state = self.features(ids, state)
        return self.head(out), state

    def features(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """ids (B, T) → the last layer's outputs (B, T, H), before the head (training fuses the
        head with the loss, see ``batching.head_nll``)."""
        return self.rnn(self.embedding(ids), state)


class ArtifactError(ValueError):
    """A model artifact is missing, truncated, corrupted or inconsistent; the message names it."""


@dataclass
class Artifact:
    """A trained model and what it was trained with.

    ``meta`` holds ``vocab_fingerprint`` (the vocabulary it was trained on), ``training`` (the
    training parameters) and ``metrics``; ``model.config`` is the architecture.
    """

    model: CharRNN
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_fingerprint(self) -> str | None:
        return self.meta.get("vocab_fingerprint")


def save_artifact(folder: Path, artifact: Artifact) -> None:
    """Write weights and config into ``folder`` (the caller makes the folder's publication atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in artifact.model.state_dict().items()}
    save_file(state, folder / WEIGHTS, metadata={"format": "pt"})
    config = {"architecture": asdict(artifact.model.config), **artifact.meta}
    (folder / CONFIG).write_text(json.dumps(config, indent=1, ensure_ascii=False), encoding="utf-8")


def load_artifact(folder: Path | str) -> Artifact:
    """Read an artifact written by :func:`save_artifact`, on the CPU, in eval mode."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        arch = ModelConfig(**config.pop("architecture"))
    except FileNotFoundError:
        raise ArtifactError(f"{folder / CONFIG} is missing: the model folder is incomplete; retrain it.") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"{folder / CONFIG} is not a valid model config ({exc}); retrain the model.") from None
    if arch.cell not in CELLS:
        raise ArtifactError(f"{folder / CONFIG}: unknown cell {arch.cell!r} (one of {sorted(CELLS)}).")
    try:
        state = load_file(folder / WEIGHTS)
    except FileNotFoundError:
        raise ArtifactError(f"{folder / WEIGHTS} is missing: the model folder is incomplete; retrain it.") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{folder / WEIGHTS} is truncated or corrupted ({exc}); retrain the model.") from None
    model = CharRNN(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"{folder / WEIGHTS} does not match the architecture in {CONFIG}: {str(exc).splitlines()[0]}"
        ) from None
    return Artifact(model.eval(), config)
