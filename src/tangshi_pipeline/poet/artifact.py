"""A trained model on disk: ``weights.safetensors`` plus ``config.json``; loading never unpickles.

``config.json`` records the sha256 of the weights file; loading checks, before any model is built,
that the architecture is of a sane size (:meth:`ModelConfig.from_json`), that it matches the tensors
in the file (names and shapes) and that the file's hash is the recorded one. A model written before
hashes were recorded loads with a warning that it cannot be verified. :func:`vocabulary_mismatch` is
the one check that a model fits a vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from tangshi_pipeline.poet.model import CharRNN, ModelConfig, parameter_shapes
from tangshi_pipeline.poet.vocab import Vocab

log = logging.getLogger(__name__)

WEIGHTS, CONFIG = "weights.safetensors", "config.json"
SHA256 = "weights_sha256"  # the key in config.json


class ArtifactError(ValueError):
    """A model artifact is missing, truncated, corrupted or inconsistent; the message names it."""


@dataclass
class Artifact:
    """A trained model and what it was trained with.

    ``meta`` holds ``vocab_fingerprint`` (the vocabulary it was trained on), ``training`` (the
    training parameters), ``metrics`` and ``themes`` (how it learnt theme keywords; absent or null:
    a model without themes); ``model.config`` is the architecture. ``version``: the version it was
    loaded from, if any (not saved).
    """

    model: CharRNN
    meta: dict[str, Any] = field(default_factory=dict)
    version: str | None = None

    @property
    def themed(self) -> bool:
        """Whether it was trained to read theme keywords before the start token."""
        return bool(self.meta.get("themes"))

    @property
    def vocab_fingerprint(self) -> str | None:
        return self.meta.get("vocab_fingerprint")


def vocabulary_mismatch(artifact: Artifact, vocab: Vocab) -> str | None:
    """Why the model cannot be used with the vocabulary (the dataset ``vocab``), or None: the one
    check of every stage that loads both. The caller adds what to do about it."""
    if artifact.vocab_fingerprint != vocab.fingerprint:
        return (f"the model was trained on vocabulary {str(artifact.vocab_fingerprint)[:12]}… but the "
                f"dataset `vocab` is {vocab.fingerprint[:12]}… (the data was re-processed since)")
    if artifact.model.config.vocab_size != len(vocab):
        return (f"the model has {artifact.model.config.vocab_size} output tokens but the vocabulary "
                f"(the dataset `vocab`) has {len(vocab)}")
    return None


def save_artifact(folder: Path, artifact: Artifact) -> None:
    """Write weights and config (with the weights' sha256) into ``folder`` (the caller makes the
    folder's publication atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in artifact.model.state_dict().items()}
    data = save_tensors(state, metadata={"format": "pt"})
    (folder / WEIGHTS).write_bytes(data)
    config = {"architecture": asdict(artifact.model.config), **artifact.meta,
              SHA256: hashlib.sha256(data).hexdigest()}
    (folder / CONFIG).write_text(json.dumps(config, indent=1, ensure_ascii=False), encoding="utf-8")


def read_config(folder: Path) -> dict[str, Any]:
    """The config.json of a model folder as a dict; anything else is an :class:`ArtifactError`."""
    path = folder / CONFIG
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder} is a file, not a model folder ({WEIGHTS} + {CONFIG}).")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: the model folder is incomplete.") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a valid model config ({exc}).") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{path} is not a JSON object (it holds a {type(config).__name__}).")
    return config


def read_artifact(folder: Path | str) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Read and check a model folder without building the model: the architecture, the tensors
    (whose names and shapes match it) and the rest of config.json (with the recorded sha256, if
    any). Every problem is an :class:`ArtifactError` naming the file."""
    folder = Path(folder)
    meta = read_config(folder)
    try:
        arch = ModelConfig.from_json(meta.pop("architecture", None))
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{folder / CONFIG}: {exc}.") from None
    try:
        data = (folder / WEIGHTS).read_bytes()
        state = load_tensors(data)
    except FileNotFoundError:
        raise ArtifactError(f"{folder / WEIGHTS} is missing: the model folder is incomplete.") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{folder / WEIGHTS} is truncated or corrupted ({exc}).") from None
    _check_shapes(folder, arch, state)
    recorded = meta.get(SHA256)
    if recorded is not None and recorded != hashlib.sha256(data).hexdigest():
        raise ArtifactError(
            f"{folder / WEIGHTS} has changed since it was written: its sha256 is not the one recorded "
            f"in {CONFIG} (the file is corrupted or was modified)."
        )
    return arch, state, meta


def _check_shapes(folder: Path, arch: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    expected, found = parameter_shapes(arch), {k: tuple(v.shape) for k, v in state.items()}
    if found == expected:
        return
    wrong = sorted(set(expected) ^ set(found)) or [k for k in expected if expected[k] != found[k]]
    name = wrong[0]
    raise ArtifactError(
        f"{folder / WEIGHTS} does not match the architecture in {CONFIG} ({folder / CONFIG}): tensor "
        f"{name!r} is {list(found[name]) if name in found else 'absent'} in the weights but "
        f"{list(expected[name]) if name in expected else 'unknown'} for {asdict(arch)}."
    )


def load_artifact(folder: Path | str) -> Artifact:
    """Read an artifact written by :func:`save_artifact`, on the CPU, in eval mode."""
    arch, state, meta = read_artifact(folder)
    if meta.pop(SHA256, None) is None:
        log.warning("%s cannot be verified: %s records no sha256 (a model saved before hashes were "
                    "recorded); retrain to get a verifiable model.", Path(folder) / WEIGHTS, CONFIG)
    model = CharRNN(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # names and shapes match (checked above): only odd dtypes get here
        first_line = str(exc).splitlines()[0]
        raise ArtifactError(f"{Path(folder) / WEIGHTS} cannot be loaded: {first_line}") from None
    return Artifact(model.eval(), meta)
