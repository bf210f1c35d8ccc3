"""The data_processing pipeline end to end, through a KedroSession, on the fixture corpus."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def test_data_processing_on_fixture_corpus(project):
    project.run("data_processing")
    data = project.path / "data"
    report = pd.read_json(data / "03_primary/cleaning_report.json", typ="series")
    assert report["input_poems"] == 14
    assert report["kept_poems"] == 7  # 6 real poems + the one with whitespace
    assert {k: v["count"] for k, v in report["dropped"].items()} == {
        "forbidden_character": 2, "too_short": 1, "too_long": 1,
        "contains_start_or_end_token": 1, "empty": 1, "duplicate_text": 1,
    }
    vectors = pq.read_table(data / "05_model_input/vectors.parquet")
    assert vectors.schema.field("ids").type == pa.list_(pa.int32())
    assert vectors.num_rows == 7
    lengths = vectors.column("length").to_pylist()
    assert lengths == sorted(lengths)
    assert set(vectors.column("split").to_pylist()) <= {"train", "val", "test"}


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
