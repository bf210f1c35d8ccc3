"""Hostile input to the data_processing pipeline: a clear message naming the file, row or
parameter, a non-zero exit where the run cannot go on, and nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tangshi_pipeline.plumbing.corpus import write_manifest
from tests.fixtures.poems import REAL
from tests.helpers import kedro, nest, one_line


def outputs(project) -> list[str]:
    data = project.path / "data"
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.is_file() and not {"01_raw", ".cache"} & set(p.parts) and p.name != ".gitkeep")


def raw(project) -> Path:
    return project.path / "data/01_raw/tang"


def run(project, pipeline: str = "data_processing", env: str | None = None, params: dict | None = None):
    """A run through the session class the `kedro` CLI uses (settings.SESSION_CLASS), in process."""
    from kedro.framework.project import settings

    with settings.SESSION_CLASS.create(project_path=project.path, env=env, runtime_params=nest(params)) as session:
        return session.run(pipeline_names=[pipeline])


def hand_made(project) -> None:
    """Declare data/01_raw/tang a hand-made folder (no manifest check), as a user would in conf/local."""
    (project.path / "conf/local/catalog.yml").write_text(
        "raw_corpus:\n"
        "  type: tangshi_pipeline.plumbing.datasets.VerifiedPartitionedDataset\n"
        "  path: data/01_raw/tang\n"
        "  dataset: json.JSONDataset\n"
        "  filename_suffix: .json\n"
        "  check_manifest: false\n", "utf-8")


def report(project, root: str = "data") -> dict:
    return json.loads((project.path / root / "03_primary/cleaning_report.json").read_text("utf-8"))


def test_partition_that_is_not_json_fails_the_run_naming_it(project):
    hand_made(project)
    (raw(project) / "poems/poet.tang.1000.json").write_text('[{"id": "x", "author"', "utf-8")
    result = kedro(project.path, "run", "--pipeline=data_processing")
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
    hand_made(project)
    (raw(project) / "poems/poet.tang.1000.json").write_text(json.dumps([record]), "utf-8")
    with pytest.raises(Exception) as err:
        project.run("data_processing")
    assert "poems/poet.tang.1000.json" in str(err.value) and problem in str(err.value)
    assert outputs(project) == []


def test_bad_partitions_can_be_skipped_and_are_counted(project):
    hand_made(project)
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
    write_manifest(raw(project), source="a corpus with a duplicate id")
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
    result = kedro(project.path, "run", "--pipeline=data_processing", f"--params={override}")
    assert result.returncode != 0
    assert message in one_line(result)
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
    result = kedro(project.path, "run", "--pipeline=data_processing", "--env=classic")
    assert result.returncode != 0
    log = one_line(result)
    assert "poems.txt is not UTF-8" in log and "at offset 0 (line 1)" in log
    assert outputs(project) == []


# ------------------------------------------------------------------ a damaged fetched corpus (15.5)


def same_size_edit(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data.replace("霜".encode(), "雪".encode(), 1))
    assert path.read_bytes() != data


def size_only_manifest(folder: Path) -> None:
    manifest = json.loads((folder / "MANIFEST.json").read_text("utf-8"))
    sizes = {name: entry["size"] for name, entry in manifest["files"].items()}
    (folder / "MANIFEST.json").write_text(json.dumps({"package": "chinese-poetry@2.0.1", "files": sizes}), "utf-8")


DAMAGE = {  # what is done to data/01_raw/tang → what the message must say
    "file deleted": (lambda t: (t / "poems/poet.tang.1000.json").unlink(),
                     "poems/poet.tang.1000.json is missing"),
    "file emptied": (lambda t: (t / "poems/poet.tang.1000.json").write_text("[]"),
                     "poems/poet.tang.1000.json changed"),
    "same size": (lambda t: same_size_edit(t / "poems/poet.tang.0.json"), "poems/poet.tang.0.json changed"),
    "tones emptied": (lambda t: (t / "strains/poet.tang.0.json").write_text("[]"),
                      "strains/poet.tang.0.json changed"),
    "file added": (lambda t: (t / "poems/poet.tang.9000.json").write_text("[]"),
                   "poems/poet.tang.9000.json is not in MANIFEST.json"),
    "manifest deleted": (lambda t: (t / "MANIFEST.json").unlink(), "(no MANIFEST.json)"),
    "manifest garbled": (lambda t: (t / "MANIFEST.json").write_text('{"files": {"poems/po'),
                         "MANIFEST.json is unreadable"),
    "manifest a list": (lambda t: (t / "MANIFEST.json").write_text("[]"), "MANIFEST.json is not a manifest"),
    "manifest of sizes": (size_only_manifest, "size-only manifest from an older `make data`"),
    "folder deleted": (shutil.rmtree, "no corpus in"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_corpus_stops_the_run_naming_the_file(project, case):
    damage, says = DAMAGE[case]
    damage(raw(project))
    with pytest.raises(Exception) as err:
        run(project)
    message = str(err.value)
    assert says in message and "data/01_raw/tang" in message and "make data" in message
    assert "AttributeError" not in message and "KeyError" not in message
    assert outputs(project) == []


def test_a_damaged_corpus_fails_the_kedro_command(project):
    (raw(project) / "poems/poet.tang.1000.json").write_text("[]", "utf-8")
    result = kedro(project.path, "run", "--pipeline=data_processing")
    assert result.returncode != 0
    log = one_line(result)
    assert "poems/poet.tang.1000.json changed" in log and "Run `make data`" in log
    assert outputs(project) == []


def test_skip_bad_partitions_does_not_skip_a_file_the_manifest_disowns(project):
    (raw(project) / "poems/poet.tang.1000.json").write_text("not json", "utf-8")
    with pytest.raises(Exception, match="poems/poet.tang.1000.json changed"):
        run(project, params={"data_processing.skip_bad_partitions": True})
    assert outputs(project) == []


def test_a_hand_made_folder_without_a_manifest_runs_when_declared(project):
    (raw(project) / "MANIFEST.json").unlink()
    hand_made(project)
    run(project)
    assert report(project)["kept_poems"] == 7


def test_the_fetched_corpus_loads_unchanged_when_intact(project):
    run(project)
    ingest = report(project)["ingest"]
    assert ingest["poem_partitions"] == ingest["strains_partitions"] == 4 and ingest["poems"] == 14


# ---------------------------------------------------------------- a lone surrogate in a poem (15.7)


def plant(project, kind: str, records: list[dict]) -> None:
    """Replace a partition with ``records`` (JSON escapes: "\\ud800" stays a lone surrogate) and
    re-seal the manifest, as if the package itself held them."""
    (raw(project) / f"{kind}/poet.tang.1000.json").write_text(json.dumps(records), "utf-8")
    write_manifest(raw(project), source="a corpus with a lone surrogate")


POEM = {"id": "x-1", "author": "佚名", "title": "月", "paragraphs": ["白日依山盡，", "黃河\ud800入海流。"]}
SURROGATES = {
    "poem line": ("poems", [REAL[0], POEM], "record 1 (id 'x-1'): field 'paragraphs' (line 2) holds a lone "
                                            "surrogate '\\ud800' at character 3"),
    "title": ("poems", [{**POEM, "paragraphs": ["山"], "title": "\udfff"}],
              "record 0 (id 'x-1'): field 'title' holds a lone surrogate '\\udfff' at character 1"),
    "tone pattern": ("strains", [{"id": "x-1", "strains": ["平平", "仄\udc80"]}],
                     "record 0 (id 'x-1'): field 'strains' (line 2) holds a lone surrogate '\\udc80'"),
}


@pytest.mark.parametrize("case", SURROGATES)
def test_a_lone_surrogate_names_the_partition_record_and_field(project, case):
    kind, records, says = SURROGATES[case]
    plant(project, kind, records)
    with pytest.raises(Exception) as err:
        run(project)
    message = str(err.value)
    assert f"raw corpus partition '{kind}/poet.tang.1000.json': {says}" in message
    assert "skip_bad_partitions" in message
    assert outputs(project) == []


def test_a_lone_surrogate_fails_the_kedro_command(project):
    plant(project, "poems", [POEM])
    result = kedro(project.path, "run", "--pipeline=data_processing")
    assert result.returncode != 0
    log = one_line(result)
    assert "poems/poet.tang.1000.json" in log and "field 'paragraphs' (line 2) holds a lone surrogate" in log
    assert "UnicodeEncodeError" not in log


@pytest.mark.parametrize("case", SURROGATES)
def test_a_partition_with_a_lone_surrogate_can_be_skipped(project, case):
    kind, records, says = SURROGATES[case]
    plant(project, kind, records)
    run(project, params={"data_processing.skip_bad_partitions": True})
    skipped = report(project)["ingest"]["skipped_partitions"]
    assert [s["partition"] for s in skipped] == [f"{kind}/poet.tang.1000.json"]
    assert says in skipped[0]["problem"]


# ------------------------------------------------ a form feed or U+2028 inside a poems.txt line (15.8)


def test_classic_lines_split_on_newlines_only_and_number_like_grep(project):
    text = ("甲:白日依山尽，\x0c黄河入海流。\n"      # a form feed inside line 1
            "乙:床前明月光，\u2028疑是地上霜。\r\n"  # a line separator inside line 2 (CRLF file line)
            "丙:春眠不觉晓，\x85处处闻啼鸟。\x1c\n"   # NEL and a file separator inside line 3
            "没有冒号的一行\v还是一行\n")             # line 4: no colon (a vertical tab inside)
    (project.path / "data/01_raw/poems.txt").write_text(text, "utf-8", newline="")
    run(project, env="classic")
    ingest = report(project, "data/classic")["ingest"]
    assert ingest["lines"] == 4 and ingest["poems"] == 3  # what `wc -l` and `grep -c ''` count
    grep_line = text.encode().split(b"\n").index("没有冒号的一行\v还是一行".encode()) + 1
    assert ingest["unusable_lines"] == {"no_separator": {"count": 1, "example": {"line": grep_line,
                                                                                "text": "没有冒号的一行\v还是一行"}}}
    clean = pq.read_table(project.path / "data/classic/03_primary/clean_poems.parquet").to_pandas()
    assert dict(zip(clean["title"], clean["text"])) == {
        "甲": "白日依山尽，黄河入海流。", "乙": "床前明月光，疑是地上霜。", "丙": "春眠不觉晓，处处闻啼鸟。"}
