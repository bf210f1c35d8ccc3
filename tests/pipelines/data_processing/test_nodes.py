"""Unit tests of each data_processing node on tiny fixtures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tangshi_pipeline.poet.params import ParameterError, validate_all
from tangshi_pipeline.pipelines.data_processing.nodes import (
    CorpusFormatError,
    build_prosody,
    build_vocab,
    clean_poems,
    flatten_corpus,
    frame_poems,
    vectorize,
)
from tangshi_pipeline.poet.vocab import END_ID, PAD, START_ID, UNK, Vocab
from tests.fixtures.poems import CLASSIC_POEMS_TXT, FILTERED, REAL, SPACED, partitions
from tests.helpers_models import pingshui_table


# ---------------------------------------------------------------------------------------- flatten

def test_flatten_joins_paragraphs_and_aligns_tones():
    poems, report = flatten_corpus(partitions(REAL), skip_bad_partitions=False)
    assert len(poems) == len(REAL) == report["poems"]
    row = poems.set_index("id").loc["ca2c489a-e433-4c0f-8248-77d354f0665e"]
    assert row["text"] == "牀前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。"
    assert row["tones"] == "平平仄仄平，平仄仄仄平。仄平仄平仄，平平仄仄平。"
    assert (poems["text"].str.len() == poems["tones"].str.len()).all()
    assert report["with_tones"] == len(REAL) and report["tones_misaligned"] == 0


def test_flatten_reads_partitions_in_numeric_order():
    poems, _ = flatten_corpus(partitions(REAL, per_file=1), skip_bad_partitions=False)
    assert poems["id"].tolist() == [p["id"] for p in REAL]  # poet.tang.10000 after poet.tang.2000


def test_flatten_tones_missing_or_misaligned_become_null():
    no_strains = {k: v for k, v in REAL[0].items() if k != "strains"}
    misaligned = {**REAL[1], "strains": ["平平仄"]}
    poems, report = flatten_corpus(partitions([no_strains, misaligned]), skip_bad_partitions=False)
    assert poems["tones"].isna().all()
    assert report["tones_misaligned"] == 1 and report["with_tones"] == 0


@pytest.mark.parametrize("bad, problem", [
    ("{not json", "poet.tang.9000"),
    ('[{"id": "x", "author": "a", "title": "t"}]', "'paragraphs' must be a list of strings"),
    ('[{"id": "x", "author": "a", "title": "t", "paragraphs": ["ok", 3]}]', "'paragraphs' must be a list"),
    ('[{"id": "x", "author": "a", "title": null, "paragraphs": []}]', "field 'title' must be a string"),
    ('{"id": "x"}', "expected a JSON list of poems"),
])
def test_flatten_bad_partition_names_the_partition(bad, problem):
    parts = partitions(REAL, raw={"poems/poet.tang.9000": bad})
    with pytest.raises(CorpusFormatError) as err:
        flatten_corpus(parts, skip_bad_partitions=False)
    assert "poems/poet.tang.9000.json" in str(err.value)
    assert problem in str(err.value)
    assert "skip_bad_partitions" in str(err.value)


def test_flatten_can_skip_and_count_bad_partitions():
    parts = partitions(REAL, raw={"poems/poet.tang.9000": "{not json", "strains/poet.tang.9000": "[1]"})
    poems, report = flatten_corpus(parts, skip_bad_partitions=True)
    assert len(poems) == len(REAL)
    assert [s["partition"] for s in report["skipped_partitions"]] == [
        "poems/poet.tang.9000.json", "strains/poet.tang.9000.json"]


def test_flatten_without_any_poem_partition_is_an_error():
    with pytest.raises(CorpusFormatError, match="no readable poem partitions"):
        flatten_corpus({}, skip_bad_partitions=False)


def test_flatten_classic_text():
    poems, report = flatten_corpus(CLASSIC_POEMS_TXT, skip_bad_partitions=False)
    assert poems["title"].tolist() == ["静夜思", "登鹳雀楼", "杂诗:其二", "春晓"]
    assert poems["text"].iloc[2] == "君自故乡来，应知故乡事。来日绮窗前，寒梅著花未。"
    assert poems["tones"].isna().all()
    assert report["lines"] == 8
    assert report["unusable_lines"]["no_separator"] == {"count": 1, "example": {"line": 4, "text": "这一行没有冒号"}}
    assert report["unusable_lines"]["empty_content"]["example"]["line"] == 7
    assert report["unusable_lines"]["blank_line"]["count"] == 2
    assert poems["id"].is_unique


@pytest.mark.parametrize("inside", ["\x0c", "\u2028", "\u2029", "\x85", "\v", "\x1c", "\x1d", "\x1e", "\r"])
def test_classic_lines_break_only_at_newlines(inside):
    text = f"甲:白日依山尽，{inside}黄河入海流。\r\n没有冒号\n乙:床前明月光。\n"
    poems, report = flatten_corpus(text, skip_bad_partitions=False)
    assert poems["title"].tolist() == ["甲", "乙"]
    assert poems["text"].iloc[0] == f"白日依山尽，{inside}黄河入海流。"  # clean removes the whitespace
    assert report["lines"] == 3  # as `wc -l` counts them
    assert report["unusable_lines"]["no_separator"]["example"]["line"] == 2  # as `grep -n` numbers it
    assert poems["source"].tolist() == ["poems.txt:1", "poems.txt:3"]


def test_flatten_lone_surrogate_names_the_partition_record_and_field():
    bad = '[{"id": "x", "author": "a", "title": "t", "paragraphs": ["ok", "\\ud800"]}]'
    with pytest.raises(CorpusFormatError) as err:
        flatten_corpus(partitions(REAL, raw={"poems/poet.tang.9000": bad}), skip_bad_partitions=False)
    assert ("raw corpus partition 'poems/poet.tang.9000.json': record 0 (id 'x'): field 'paragraphs' (line 2) "
            "holds a lone surrogate '\\ud800' at character 1") in str(err.value)
    poems, report = flatten_corpus(partitions(REAL, raw={"poems/poet.tang.9000": bad}), skip_bad_partitions=True)
    assert len(poems) == len(REAL) and report["skipped_partitions"][0]["partition"] == "poems/poet.tang.9000.json"


def test_classic_ids_do_not_depend_on_line_numbers():
    a, _ = flatten_corpus("甲:山高月小，水落石出。\n乙:白日依山尽，黄河入海流。", skip_bad_partitions=False)
    b, _ = flatten_corpus("\n\n乙:白日依山尽，黄河入海流。\n甲:山高月小，水落石出。", skip_bad_partitions=False)
    assert dict(zip(a["title"], a["id"])) == dict(zip(b["title"], b["id"]))


# ------------------------------------------------------------------------------------------ clean

def _clean(poems_list, params, **overrides):
    """``clean_poems`` on the flattened poems, with the section's values as the pipeline wires them."""
    p = {**params, **overrides}
    poems, ingest = flatten_corpus(partitions(poems_list), skip_bad_partitions=False)
    return clean_poems(poems, ingest, opencc_config=p["opencc_config"], drop_if_contains=p["drop_if_contains"],
                       min_length=p["min_length"], max_length=p["max_length"], dedupe=p["dedupe"],
                       start_token=p["start_token"], end_token=p["end_token"])


def test_clean_converts_to_simplified_and_keeps_tones_aligned(data_params):
    clean, report = _clean([*REAL, SPACED], data_params)
    by_id = clean.set_index("id")
    assert by_id.loc["63950163-6a10-4e74-af8a-09886e4ef2a8", "text"] == "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
    assert by_id.loc["63950163-6a10-4e74-af8a-09886e4ef2a8", "title"] == "登鹳雀楼"
    assert by_id.loc["s-space", "text"] == "春风又绿江南岸，明月何时照我还。"
    tones = clean.dropna(subset=["tones"])
    assert (tones["text"].str.len() == tones["tones"].str.len()).all()
    assert report["kept_poems"] == len(REAL) + 1 and report["dropped_poems"] == 0


def test_clean_drops_each_reason_once_with_an_example(data_params):
    clean, report = _clean([*REAL, *FILTERED], data_params)
    assert len(clean) == len(REAL)
    dropped = report["dropped"]
    assert {k: v["count"] for k, v in dropped.items()} == {
        "forbidden_character": 2, "too_short": 1, "too_long": 1,
        "contains_start_or_end_token": 1, "empty": 1, "duplicate_text": 1,
    }
    assert dropped["forbidden_character"]["by_character"] == {"（": 1, "《": 1}
    assert dropped["duplicate_text"]["example"]["id"] == "f-dup-text"  # the first copy is kept
    assert dropped["too_short"]["example"]["text"] == "大虫来。"
    assert report["input_poems"] == report["kept_poems"] + report["dropped_poems"]


def test_clean_length_bounds_are_inclusive_and_configurable(data_params):
    clean, _ = _clean(REAL, data_params, min_length=24, max_length=24)
    assert set(clean["text"].str.len()) == {24}  # the five-character quatrains only
    assert len(clean) == 5


def test_clean_duplicate_ids_keep_the_first(data_params):
    twin = {**REAL[1], "id": REAL[0]["id"]}
    clean, report = _clean([REAL[0], twin], data_params)
    assert clean["id"].tolist() == [REAL[0]["id"]]
    assert report["dropped"]["duplicate_id"]["count"] == 1


def test_clean_dedupe_can_be_switched_off(data_params):
    clean, _ = _clean([REAL[1], FILTERED[-1]], data_params, dedupe=False)
    assert len(clean) == 2


def test_clean_with_no_forbidden_characters_drops_none_for_that_reason(data_params):
    clean, report = _clean(REAL, data_params, drop_if_contains=[])
    assert len(clean) == len(REAL) and "forbidden_character" not in report["dropped"]


def test_clean_everything_filtered_is_an_error(data_params):
    with pytest.raises(ValueError, match="every one of the 6 poems was filtered out"):
        _clean(REAL, data_params, min_length=79)


def test_bad_cleaning_parameters_are_rejected_by_validation(data_params):
    """Nodes take plain values; the ValidateParameters hook rejects a bad one before any node runs."""
    with pytest.raises(ParameterError, match="data_processing.min_length = 0"):
        validate_all({"data_processing": {**data_params, "min_length": 0}})
    with pytest.raises(ParameterError, match="min_length .* greater than max_length"):
        validate_all({"data_processing": {**data_params, "min_length": 50, "max_length": 10}})
    with pytest.raises(ParameterError, match="data_processing.max_lenght"):
        validate_all({"data_processing": {**data_params, "max_lenght": 10}})


# ---------------------------------------------------------------------------------------- prosody

def test_prosody_learns_tones_of_the_simplified_text_and_converts_the_rhyme_groups(data_params):
    clean, _ = _clean(REAL, data_params)
    lexicon, rhyme = build_prosody(clean, pingshui_table(), data_params["opencc_config"])
    assert lexicon["tones"]["乡"] == "平" and lexicon["tones"]["月"] == "仄"  # 低頭思故鄉, 舉頭望山月
    assert "鄉" not in lexicon["tones"] and "，" not in lexicon["tones"]
    assert {"东", "東"} <= set(rhyme["groups"]["上平一东"])  # both spellings, under the Simplified name


# ---------------------------------------------------------------------- frame, vocab, vectorize

def _framed(params):
    clean, _ = _clean([*REAL, SPACED], params)
    return frame_poems(clean, params["start_token"], params["end_token"])


def _vocab(framed, params):
    return build_vocab(framed, params["start_token"], params["end_token"], params["min_count"])


def test_frame_adds_tokens_and_sorts_by_length(data_params):
    framed = _framed(data_params)
    assert framed["text"].str.startswith("G").all() and framed["text"].str.endswith("E").all()
    assert framed["length"].tolist() == sorted(framed["length"])
    assert framed["length"].tolist() == framed["text"].str.len().tolist()
    assert framed["length"].iloc[-1] == 8 * 8 + 2  # 黄鹤楼: eight lines of 7 characters + punctuation


def test_frame_uses_configured_tokens(data_params):
    framed = _framed({**data_params, "start_token": "^", "end_token": "$"})
    assert framed["text"].str.match(r"^\^.*\$$").all()


def test_vocab_puts_specials_first_then_frequency(data_params):
    vocab = Vocab.from_json(_vocab(_framed(data_params), data_params))
    assert vocab.tokens[:4] == (PAD, UNK, "G", "E")
    counts = vocab.counts[4:]
    assert list(counts) == sorted(counts, reverse=True)
    # The commonest: one "，" and one "。" per couplet; the tie is broken by code point (。 < ，).
    assert vocab.tokens[4:6] == ("。", "，")
    assert vocab.counts[START_ID] == vocab.counts[END_ID] == 7


def test_vocab_min_count_sends_rare_characters_to_unk(data_params):
    framed = _framed(data_params)
    full = Vocab.from_json(_vocab(framed, data_params))
    pruned = Vocab.from_json(_vocab(framed, {**data_params, "min_count": 2}))
    assert len(pruned) < len(full)
    assert all(n >= 2 for n in pruned.counts[4:])
    assert pruned.counts[1] == sum(n for n in full.counts[4:] if n < 2)


def test_vocab_json_round_trip_and_fingerprint(data_params):
    data = _vocab(_framed(data_params), data_params)
    vocab = Vocab.from_json(json.loads(json.dumps(data, ensure_ascii=False)))
    assert vocab.fingerprint == data["fingerprint"]
    with pytest.raises(ValueError, match="fingerprint"):
        Vocab.from_json({**data, "tokens": data["tokens"][:-1] + ["龘"]})


def test_vectorize_ids_decode_back_to_the_text(data_params):
    framed = _framed(data_params)
    vocab = _vocab(framed, data_params)
    vectors, report = vectorize(framed, vocab, data_params["split"], data_params["split_salt"])
    v = Vocab.from_json(vocab)
    for text, ids in zip(framed["text"], vectors["ids"]):
        assert ids.dtype == np.int32
        assert ids[0] == START_ID and ids[-1] == END_ID
        assert v.decode(ids) == text[1:-1]
    assert vectors["length"].tolist() == [len(t) for t in framed["text"]]
    assert report["unknown_tokens"] == 0
    assert sum(report[s]["poems"] for s in ("train", "val", "test")) == len(framed)


def test_vectorize_unknown_characters(data_params):
    framed = pd.DataFrame({"id": ["a", "b"], "text": ["G山水E", "G山月E"], "length": [4, 4]})
    vocab = _vocab(framed.iloc[:1], data_params)
    vectors, report = vectorize(framed, vocab, data_params["split"], data_params["split_salt"])
    assert vectors["ids"].iloc[1].tolist()[2] == 1 and report["unknown_tokens"] == 1


def test_split_depends_only_on_the_poem_id(data_params):
    ids = [f"poem-{i}" for i in range(3000)]
    framed = pd.DataFrame({"id": ids, "text": ["G山E"] * 3000, "length": [3] * 3000})
    vocab = _vocab(framed, data_params)
    full, report = vectorize(framed, vocab, data_params["split"], data_params["split_salt"])
    part, _ = vectorize(framed.iloc[::7], vocab, data_params["split"], data_params["split_salt"])
    assert dict(zip(part["id"], part["split"])) == {i: s for i, s in zip(full["id"], full["split"]) if i in set(part["id"])}
    assert 0.92 < report["train"]["poems"] / 3000 < 0.96  # 94 % ± sampling noise
    assert report["val"]["poems"] > 0 and report["test"]["poems"] > 0
    salted, _ = vectorize(framed, vocab, data_params["split"], "other")
    assert (salted["split"] != full["split"]).any()


def test_flatten_classic_bytes_with_bom():
    poems, _ = flatten_corpus(CLASSIC_POEMS_TXT.lstrip("\ufeff").encode("utf-8-sig"), skip_bad_partitions=False)
    assert poems["title"].iloc[0] == "静夜思"


def test_flatten_classic_not_utf8_names_the_byte_offset():
    data = "静夜思:床前明月光。\n春晓:".encode() + "春眠不觉晓。".encode("gbk")
    with pytest.raises(CorpusFormatError) as err:
        flatten_corpus(data, skip_bad_partitions=False)
    offset = len("静夜思:床前明月光。\n春晓:".encode())
    assert f"offset {offset} (line 2)" in str(err.value) and "not UTF-8" in str(err.value)


def test_build_prosody_takes_its_rhyme_table_from_the_catalog_input():
    clean = pd.DataFrame({"text": ["白日依山尽，黄河入海流。"], "tones": ["仄仄平平仄，平平仄仄平。"]})
    table = {"data": {"ping": {"上平聲": {"上平聲一東": ["東同"]}}, "ze": {}}, "source": "a test table"}
    lexicon, rhyme = build_prosody(clean, table, "t2s")
    assert rhyme == {"source": "a test table", "tone": "平", "groups": {"上平一东": "东東同"}}
    assert lexicon["tones"]["流"] == "平"
