"""Checks on the real corpus (chinese-poetry 2.0.1), when `make data` has fetched it.

The figures are what the data_processing nodes produce on that exact, hash-pinned package, so they
are asserted tightly: a change means the cleaning rules changed, and the README must follow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tangshi_pipeline.pipelines.data_processing.nodes import (
    build_vocab,
    clean_poems,
    flatten_corpus,
    frame_poems,
    vectorize,
)
from tests.conftest import shipped_params

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data/01_raw/tang"
pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not (RAW / "MANIFEST.json").is_file(), reason="corpus not fetched (make data)"),
]


@pytest.fixture(scope="module")
def processed():
    from kedro_datasets.partitions import PartitionedDataset

    params = shipped_params("data_processing")
    raw = PartitionedDataset(path=str(RAW), dataset="json.JSONDataset", filename_suffix=".json").load()
    poems, ingest = flatten_corpus(raw, params)
    clean, report = clean_poems(poems, ingest, params)
    framed = frame_poems(clean, params)
    vocab = build_vocab(framed, params)
    vectors, summary = vectorize(framed, vocab, params)
    return poems, ingest, clean, report, vocab, vectors, summary


def test_raw_corpus_has_every_tang_poem(processed):
    poems, ingest, *_ = processed
    assert len(poems) == 57_607 and poems["id"].is_unique
    assert ingest["poem_partitions"] == ingest["strains_partitions"] == 58
    # Every poem has a strains entry (the strains files hold 6 extra ids); 4,678 of them differ in
    # length from the text (punctuation missing or added in the strains) and are not used, leaving
    # 52,929 patterns aligned character by character.
    assert ingest["with_tones"] == 52_929
    assert ingest["tones_misaligned"] == 4_678


def test_cleaned_corpus_figures(processed):
    _, _, clean, report, vocab, vectors, summary = processed
    # t2s + the classic filters keep 45,505 poems (DESIGN.md's figure); exact-duplicate removal
    # then drops 831 more texts (the same poem filed under two titles or authors).
    assert report["kept_poems"] == 44_674
    assert report["dropped"]["duplicate_text"]["count"] == 831
    assert report["kept_poems"] + report["dropped"]["duplicate_text"]["count"] == 45_505
    # 2.04 M characters of text; with the G/E framing 2.13 M tokens (DESIGN.md's 2.16 M counts the
    # 831 duplicates too). 7,177 distinct characters + 4 specials = 7,181 vocabulary entries.
    assert report["characters"] == 2_042_278
    assert report["distinct_characters"] == 7_177
    assert vocab["size"] == 7_181
    assert sum(summary[s]["tokens"] for s in ("train", "val", "test")) == 2_042_278 + 2 * 44_674
    # 94/3/3 by id hash: within half a percentage point of the target fractions.
    for split, share in (("train", 0.94), ("val", 0.03), ("test", 0.03)):
        assert abs(summary[split]["poems"] / len(vectors) - share) < 0.005
    assert clean["text"].str.len().between(5, 80).all()
