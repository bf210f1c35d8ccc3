"""The data_processing pipeline on an in-memory catalog (what it computes, and that each node gets
the parameters it is wired to), then through a KedroSession (what the project's catalog writes)."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from tangshi_pipeline.pipelines.data_processing import create_pipeline
from tangshi_pipeline.poet.vocab import END_ID, START_ID
from tests.fixtures.poems import CORPUS, partitions
from tests.helpers import memory_catalog, shipped_params
from tests.helpers_models import pingshui_table


def run_in_memory(**overrides) -> DataCatalog:
    """The pipeline on the fixture corpus, with the shipped parameters and ``overrides``."""
    params = {"data_processing": {**shipped_params("data_processing"), **overrides}}
    catalog = memory_catalog({"raw_corpus": partitions(CORPUS, per_file=4), "pingshui_table": pingshui_table()}, params)
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def test_fixture_corpus_in_memory():
    catalog = run_in_memory()
    report = catalog.load("cleaning_report")
    assert report["input_poems"] == 14
    assert report["kept_poems"] == 7  # 6 real poems + the one with whitespace
    assert {k: v["count"] for k, v in report["dropped"].items()} == {
        "forbidden_character": 2, "too_short": 1, "too_long": 1,
        "contains_start_or_end_token": 1, "empty": 1, "duplicate_text": 1,
    }
    vectors = catalog.load("vectors")
    assert len(vectors) == 7 and vectors["length"].is_monotonic_increasing
    assert all(ids[0] == START_ID and ids[-1] == END_ID and len(ids) == n
               for ids, n in zip(vectors["ids"], vectors["length"]))
    assert set(vectors["split"]) <= {"train", "val", "test"}
    summary = catalog.load("vectorize_report")
    assert sum(summary[s]["tokens"] for s in ("train", "val", "test")) == vectors["length"].sum()
    assert summary["unknown_tokens"] == 0
    assert catalog.load("tone_lexicon")["tones"]["流"] == "平"  # 黃河入海流: the tones follow t2s
    assert "东" in catalog.load("rhyme_table")["groups"]["上平一东"]


def test_each_node_reads_the_parameters_it_is_wired_to():
    catalog = run_in_memory(drop_if_contains=[], dedupe=False, max_length=24, start_token="月", end_token="T",
                            min_count=2, split={"train": 0.0, "val": 1.0, "test": 0.0})
    dropped = {k: v["count"] for k, v in catalog.load("cleaning_report")["dropped"].items()}
    assert dropped == {  # drop_if_contains=[] and dedupe=false: no forbidden_character, no duplicate_text
        "empty": 1, "too_short": 1,
        "too_long": 2,  # max_length=24: 黃鶴樓 too
        "contains_start_or_end_token": 3,  # start_token=月: the three poems with 月; the one with G stays
    }
    assert catalog.load("cleaning_report")["kept_poems"] == 7  # both 登鸛雀樓 texts: dedupe=false
    vectors = catalog.load("vectors")
    assert all(ids[0] == START_ID and ids[-1] == END_ID for ids in vectors["ids"])  # the tokens → frame, vocab
    assert set(vectors["split"]) == {"val"}  # split → vectorize
    assert catalog.load("vectorize_report")["unknown_tokens"] > 0  # min_count → build_vocab


def test_data_processing_writes_each_output_through_the_catalog(project):
    project.run("data_processing")
    data = project.path / "data"
    written = sorted(str(p.relative_to(data)) for p in data.glob("0[2-5]_*/*") if p.name != ".gitkeep")
    assert written == [
        "02_intermediate/ingest_report.json", "02_intermediate/poems.parquet",
        "03_primary/clean_poems.parquet", "03_primary/cleaning_report.json",
        "05_model_input/framed_poems.parquet", "05_model_input/keywords_report.json",
        "05_model_input/poem_keywords.parquet", "05_model_input/rhyme_table.json",
        "05_model_input/tone_lexicon.json", "05_model_input/vectorize_report.json",
        "05_model_input/vectors.parquet", "05_model_input/vocab.json",
    ]
    vectors = pq.read_table(data / "05_model_input/vectors.parquet")
    assert vectors.schema.field("ids").type == pa.list_(pa.int32()) and vectors.num_rows == 7
    assert project.catalog().load("vocab")["specials"]["start"] == "G"


def test_classic_environment_reads_messy_poems_txt(project):
    project.run("data_processing", env="classic")
    data = project.path / "data/classic"  # the classic environment's outputs (conf/classic/globals.yml)
    clean = pq.read_table(data / "03_primary/clean_poems.parquet").to_pandas()
    report = pd.read_json(data / "03_primary/cleaning_report.json", typ="series")
    ingest = report["ingest"]
    assert ingest["source"] == "classic poems.txt"
    assert {k: v["count"] for k, v in ingest["unusable_lines"].items()} == {
        "blank_line": 2, "no_separator": 1, "empty_content": 1,
    }
    assert ingest["unusable_lines"]["no_separator"]["example"]["line"] == 4
    # The title with a colon keeps its colon; the content is what follows the last one.
    assert dict(zip(clean["title"], clean["text"]))["杂诗:其二"] == "君自故乡来，应知故乡事。来日绮窗前，寒梅著花未。"
    assert sorted(clean["title"]) == sorted(["静夜思", "登鹳雀楼", "杂诗:其二", "春晓"])
    assert not any(t.startswith("\ufeff") for t in clean["title"])
