"""Checks on the real corpus (chinese-poetry 2.0.1), when `make data` has fetched it.

The figures are what the data_processing nodes produce on that exact, hash-pinned package, so they
are asserted tightly: a change means the cleaning rules changed, and the README must follow.
"""

from __future__ import annotations


import pytest

from tangshi_pipeline.pipelines.data_processing.nodes import (
    build_prosody,
    build_vocab,
    clean_poems,
    flatten_corpus,
    frame_poems,
    vectorize,
)
from tangshi_pipeline.poet.prosody import EITHER, PING, ZE, Prosody, check
from tests.helpers import ROOT, shipped_params
from tests.helpers_models import pingshui_table

RAW = ROOT / "data/01_raw/tang"
pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not (RAW / "MANIFEST.json").is_file(), reason="corpus not fetched (make data)"),
]


def _clean(poems, ingest, p: dict):
    """``clean_poems`` with the section's values, as the pipeline wires them."""
    return clean_poems(poems, ingest, opencc_config=p["opencc_config"], drop_if_contains=p["drop_if_contains"],
                       min_length=p["min_length"], max_length=p["max_length"], dedupe=p["dedupe"],
                       start_token=p["start_token"], end_token=p["end_token"])


@pytest.fixture(scope="module")
def processed():
    from kedro_datasets.partitions import PartitionedDataset

    p = shipped_params("data_processing")
    raw = PartitionedDataset(path=str(RAW), dataset="json.JSONDataset", filename_suffix=".json").load()
    poems, ingest = flatten_corpus(raw, p["skip_bad_partitions"])
    clean, report = _clean(poems, ingest, p)
    framed = frame_poems(clean, p["start_token"], p["end_token"])
    vocab = build_vocab(framed, p["start_token"], p["end_token"], p["min_count"])
    vectors, summary = vectorize(framed, vocab, p["split"], p["split_salt"])
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
    # t2s + the filters (the classic ones and the lost-character marks) keep 45,319 poems;
    # exact-duplicate removal then drops 831 more texts (one poem filed under two titles or authors).
    assert report["kept_poems"] == 44_488
    assert report["dropped"]["duplicate_text"]["count"] == 831
    assert report["dropped"]["forbidden_character"]["by_character"] == {
        "（": 4_591, "《": 3_168, "[": 887, "□": 444, "囗": 28, "●": 17}
    # 2.03 M characters of text; with the G/E framing 2.12 M tokens (DESIGN.md's 2.16 M counts the
    # duplicates and the poems with lost characters too). 7,164 characters + 4 specials = 7,168.
    assert report["characters"] == 2_032_974
    assert report["distinct_characters"] == 7_164
    assert vocab["size"] == 7_168
    assert sum(summary[s]["tokens"] for s in ("train", "val", "test")) == 2_032_974 + 2 * 44_488
    assert not clean["text"].str.contains("□|囗|●").any()
    # 94/3/3 by id hash: within half a percentage point of the target fractions.
    for split, share in (("train", 0.94), ("val", 0.03), ("test", 0.03)):
        assert abs(summary[split]["poems"] / len(vectors) - share) < 0.005
    assert clean["text"].str.len().between(5, 80).all()


def test_classic_filters_keep_designs_figure(processed):
    """Only the classic exercise's filters, no duplicate removal: DESIGN.md's 45,505 poems."""
    poems, ingest, *_ = processed
    params = shipped_params("data_processing") | {"drop_if_contains": ["_", "(", "（", "《", "["], "dedupe": False}
    _, report = _clean(poems, ingest, params)
    assert report["kept_poems"] == 45_505


def test_corpus_tone_lexicon_judges_a_famous_poem(processed):
    _, _, clean, *_ = processed
    lexicon, rhyme_table = build_prosody(clean, pingshui_table(), shipped_params("data_processing")["opencc_config"])
    assert lexicon["summary"] == {PING: 2_731, ZE: 3_782, EITHER: 423}
    prosody = Prosody.from_json(lexicon, rhyme_table)
    assert prosody.tone("不") == ZE and prosody.tone("何") == PING and prosody.tone("中") == EITHER
    result = check("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", prosody)  # 登鹳雀楼
    assert result.conforms and result.rhymes and result.template == "仄起不入韵"
