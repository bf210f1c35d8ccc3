"""Helpers for the generate tests: tiny models, a vocabulary and prosody that need no corpus."""

from __future__ import annotations

import json
from pathlib import Path

import opencc
import torch

from tangshi_pipeline.poet.model import Artifact, CharRNN, ModelConfig
import yaml

from tangshi_pipeline.plumbing.datasets import PackageJSONDataset
from tangshi_pipeline.poet.prosody import EITHER, PING, ZE, Prosody, build_rhyme_table
from tangshi_pipeline.poet.vocab import Vocab

_T2S = opencc.OpenCC("t2s")
_CATALOG = Path(__file__).resolve().parents[1] / "conf/base/catalog.yml"


def pingshui_table() -> dict:
    """The 平水韵 table (``{"data", "source"}``) as the catalog's ``pingshui_table`` dataset loads it."""
    entry = yaml.safe_load(_CATALOG.read_text("utf-8"))["pingshui_table"]
    return PackageJSONDataset(package=entry["package"], file=entry["file"]).load()


def tiny_model(vocab_size: int, cell: str = "lstm", seed: int = 0, **kw) -> CharRNN:
    torch.manual_seed(seed)
    config = dict(embedding_dim=16, hidden_dim=32, num_layers=2, **kw)
    return CharRNN(ModelConfig(vocab_size, cell=cell, **config)).eval()


def pingshui_prosody() -> tuple[Vocab, Prosody, dict, dict]:
    """A vocabulary of every character of the 平水韵 table (Simplified), with a tone lexicon taken
    from the table itself: level groups → 平, oblique → 仄, both → either."""
    loaded = pingshui_table()
    table = loaded["data"]
    rhyme = build_rhyme_table(table, _T2S.convert, loaded["source"])
    ping = set("".join(rhyme["groups"].values()))
    ze = {_T2S.convert(c) for section in table["ze"].values() for s in section.values() for c in "".join(s)}
    chars = sorted((ping | ze) - set("，。GE"))
    tones = {c: EITHER if c in ping and c in ze else PING if c in ping else ZE for c in chars}
    lexicon = {"tones": tones, "threshold": 0.9}
    counts = [1000 - i % 997 for i in range(len(chars))]
    vocab = Vocab(("<pad>", "<unk>", "G", "E", "，", "。", *chars), (0, 0, 10, 10, 500, 500, *counts))
    return vocab, Prosody.from_json(lexicon, rhyme), lexicon, rhyme


def save_model(project_path: Path, seed: int = 0, fingerprint: str | None = None) -> Artifact:
    """Save a tiny untrained model for the project's vocabulary as a new version of `model`."""
    from kedro.io import Version

    from tangshi_pipeline.plumbing.datasets import ModelArtifact

    vocab = Vocab.from_json(json.loads((project_path / "data/05_model_input/vocab.json").read_text("utf-8")))
    artifact = Artifact(tiny_model(len(vocab), seed=seed),
                        {"vocab_fingerprint": fingerprint or vocab.fingerprint, "training": {"tiny": True}})
    ModelArtifact(str(project_path / "data/06_models/poet"), version=Version(None, None)).save(artifact)
    return artifact
