"""Hostile input to the data_processing pipeline: a clear message naming the file, row or
parameter, a non-zero exit where the run cannot go on, and nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.fixtures.poems import REAL


def kedro(project, *args: str) -> subprocess.CompletedProcess:
    """`kedro run …` as a user runs it, in the throw-away project."""
    kedro_bin = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}
    return subprocess.run([str(kedro_bin), "run", *args], cwd=project.path, env=env,
                          capture_output=True, text=True, timeout=300)


def outputs(project) -> list[str]:
    data = project.path / "data"
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.is_file() and not {"01_raw", ".cache"} & set(p.parts) and p.name != ".gitkeep")


def raw(project) -> Path:
    return project.path / "data/01_raw/tang"


def test_partition_that_is_not_json_fails_the_run_naming_it(project):
    (raw(project) / "poems/poet.tang.1000.json").write_text('[{"id": "x", "author"', "utf-8")
    result = kedro(project, "--pipeline=data_processing")
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "poems/poet.tang.1000.json" in log and "skip_bad_partitions" in log
    assert outputs(project) == []


@pytest.mark.parametrize("record, problem", [
    ({"id": "x", "author": "a", "title": "t"}, "'paragraphs' must be a list of strings"),
    ({"id": "x", "author": "a", "title": "t", "paragraphs": ["山", None]}, "'paragraphs' must be a list of strings"),
    ({"id": "x", "author": "a", "title": None, "paragraphs": ["山"]}, "field 'title' must be a string"),
])
def test_partition_with_the_wrong_schema(project, record, problem):
    (raw(project) / "poems/poet.tang.1000.json").write_text(json.dumps([record]), "utf-8")
    with pytest.raises(Exception) as err:
        project.run("data_processing")
    assert "poems/poet.tang.1000.json" in str(err.value) and problem in str(err.value)
    assert outputs(project) == []


def test_bad_partitions_can_be_skipped_and_are_counted(project):
    (raw(project) / "poems/poet.tang.1000.json").write_text("not json", "utf-8")
    project.run("data_processing", params={"data_processing.skip_bad_partitions": True})
    report = json.loads((project.path / "data/03_primary/cleaning_report.json").read_text("utf-8"))
    assert report["ingest"]["skipped_partitions"][0]["partition"] == "poems/poet.tang.1000.json"


def test_empty_raw_folder(project):
    for path in sorted(raw(project).rglob("*.json")):
        path.unlink()
    with pytest.raises(Exception, match="data/01_raw/tang"):
        project.run("data_processing")
    assert outputs(project) == []


def test_every_poem_filtered_out(project):
    with pytest.raises(Exception, match="every one of the 14 poems was filtered out"):
        project.run("data_processing", params={"data_processing.min_length": 79})
    assert "03_primary/clean_poems.parquet" not in outputs(project)


def test_duplicate_poem_ids_are_dropped_and_counted(project):
    twin = {k: v for k, v in REAL[1].items() if k != "strains"} | {"id": REAL[0]["id"]}
    (raw(project) / "poems/poet.tang.9000.json").write_text(json.dumps([twin], ensure_ascii=False), "utf-8")
    project.run("data_processing")
    report = json.loads((project.path / "data/03_primary/cleaning_report.json").read_text("utf-8"))
    assert report["dropped"]["duplicate_id"]["count"] == 1
    ids = pq.read_table(project.path / "data/03_primary/clean_poems.parquet").column("id").to_pylist()
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("override, message", [
    ("data_processing.min_length=-3", "data_processing.min_length = -3"),
    ("data_processing.split.train=1.5", "data_processing.split.train = 1.5"),
    ("data_processing.start_token=GG", "data_processing.start_token = 'GG'"),
    ("data_processing.min_count=0", "data_processing.min_count = 0"),
])
def test_bad_parameters_stop_the_run_before_any_work(project, override, message):
    result = kedro(project, "--pipeline=data_processing", f"--params={override}")
    assert result.returncode != 0
    assert message in " ".join((result.stdout + result.stderr).split())
    assert outputs(project) == []


def test_classic_file_with_a_huge_line_and_several_colons(project):
    huge = "长诗:" + "山高月小，水落石出。" * 10_000
    poems_txt = project.path / "data/01_raw/poems.txt"
    poems_txt.write_text(poems_txt.read_text("utf-8") + "\r\n" + huge + "\r\n甲:乙:丙:白日依山尽，黄河入海流。", "utf-8")
    project.run("data_processing", env="classic")
    report = json.loads((project.path / "data/classic/03_primary/cleaning_report.json").read_text("utf-8"))
    assert report["dropped"]["too_long"]["count"] == 1
    clean = pq.read_table(project.path / "data/classic/03_primary/clean_poems.parquet").to_pandas()
    assert dict(zip(clean["title"], clean["text"]))["甲:乙:丙"] == "白日依山尽，黄河入海流。"
    assert len(clean) == 5


def test_classic_file_that_is_not_utf8(project):
    (project.path / "data/01_raw/poems.txt").write_bytes("春晓:春眠不觉晓，处处闻啼鸟。".encode("gb18030"))
    result = kedro(project, "--pipeline=data_processing", "--env=classic")
    assert result.returncode != 0
    log = " ".join((result.stdout + result.stderr).split())
    assert "poems.txt is not UTF-8" in log and "at offset 0 (line 1)" in log
    assert outputs(project) == []
