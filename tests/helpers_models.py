"""Helpers for the poet's tests: tiny models, vocabularies, vectors and prosody that need no corpus,
and a tiny model saved into a throw-away project."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import opencc
import pandas as pd
import torch
import yaml

from tangshi_pipeline.plumbing.datasets import PackageJSONDataset
from tangshi_pipeline.poet.artifact import Artifact
from tangshi_pipeline.poet.model import CharRNN, ModelConfig
from tangshi_pipeline.poet.prosody import EITHER, PING, ZE, Prosody, build_rhyme_table
from tangshi_pipeline.poet.vocab import Vocab

_T2S = opencc.OpenCC("t2s")
_CATALOG = Path(__file__).resolve().parents[1] / "conf/base/catalog.yml"


def pingshui_table() -> dict:
    """The 平水韵 table (``{"data", "source"}``) as the catalog's ``pingshui_table`` dataset loads it."""
    entry = yaml.safe_load(_CATALOG.read_text("utf-8"))["pingshui_table"]
    return PackageJSONDataset(package=entry["package"], file=entry["file"]).load()

# Five quatrains (Simplified), for a vocabulary and a vectors table made by hand.
POEMS = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。",
         "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
         "松下问童子，言师采药去。只在此山中，云深不知处。",
         "红豆生南国，秋来发故枝。愿君多采撷，此物最相思。",
         "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。"]


def vocab_of(texts: list[str]) -> Vocab:
    """The vocabulary data_processing would build from ``texts`` (start and end tokens G and E)."""
    return Vocab.build([f"G{t}E" for t in texts], "G", "E")


def vectors_of(vocab: Vocab, texts: list[str], splits: list[str]) -> pd.DataFrame:
    """A vectors table as data_processing writes it (id, split, length, ids with the start and end
    tokens), one row per text, in the given splits; characters outside ``vocab`` are not allowed."""
    index = vocab.index
    ids = [np.array([index[c] for c in f"{vocab.start}{t}{vocab.end}"], np.int32) for t in texts]
    return pd.DataFrame({"id": [f"p{i}" for i in range(len(texts))], "split": splits,
                         "length": np.array([len(i) for i in ids], np.int32), "ids": ids})


def keywords_of(vocab: Vocab, words: list[list[str]]) -> pd.DataFrame:
    """A poem_keywords table as extract_keywords writes it, for the poems of :func:`vectors_of`
    (ids p0, p1, …): each poem's keywords and their token ids."""
    index = vocab.index
    return pd.DataFrame({"id": [f"p{i}" for i in range(len(words))], "keywords": words,
                         "keyword_ids": [np.array([index[c] for c in "".join(w)], np.int32) for w in words]})


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
    """Save a tiny untrained model for the project's vocabulary as a new version of `model`. Returns
    once the clock has passed that version's millisecond: a version saved next (by this or a Kedro
    session's run) gets a later name, never the same one (Kedro refuses to overwrite a version)."""
    from kedro.io import Version
    from kedro.io.core import generate_timestamp

    from tangshi_pipeline.plumbing.datasets import ModelArtifact

    vocab = Vocab.from_json(json.loads((project_path / "data/05_model_input/vocab.json").read_text("utf-8")))
    artifact = Artifact(tiny_model(len(vocab), seed=seed),
                        {"vocab_fingerprint": fingerprint or vocab.fingerprint, "training": {"tiny": True}})
    version = generate_timestamp()
    ModelArtifact(str(project_path / "data/06_models/poet"), version=Version(None, version)).save(artifact)
    while generate_timestamp() <= version:
        time.sleep(0.001)
    return artifact
