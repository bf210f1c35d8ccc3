"""Project datasets: explicit schemas, previews and atomic publication."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kedro.io import DatasetError

from tangshi_pipeline.plumbing import datasets
from tangshi_pipeline.plumbing.datasets import AtomicJSONDataset, ParquetTable


def vectors_frame() -> pd.DataFrame:
    return pd.DataFrame({"id": ["a", "b"], "split": ["train", "val"], "length": [3, 4],
                         "ids": [np.array([2, 9, 3], np.int32), np.array([2, 9, 9, 3], np.int32)]})


def test_parquet_table_writes_the_declared_schema(tmp_path):
    table = ParquetTable(str(tmp_path / "v.parquet"), schema="vectors")
    table.save(vectors_frame())
    assert pq.read_schema(tmp_path / "v.parquet").field("ids").type == pa.list_(pa.int32())
    loaded = table.load()
    assert loaded["ids"].iloc[1].tolist() == [2, 9, 9, 3]
    preview = table.preview(nrows=1)
    assert preview["columns"] == ["id", "split", "length", "ids"]
    assert preview["data"] == [["a", "train", 3, "[2, 9, 3]"]]


def test_parquet_table_rejects_data_that_does_not_fit(tmp_path):
    table = ParquetTable(str(tmp_path / "v.parquet"), schema="vectors")
    with pytest.raises(DatasetError, match="does not fit schema 'vectors'"):
        table.save(vectors_frame().drop(columns="split"))
    with pytest.raises(DatasetError, match="unknown schema"):
        ParquetTable(str(tmp_path / "x.parquet"), schema="nope")


@pytest.mark.parametrize("make, data", [
    (lambda p: ParquetTable(str(p), schema="vectors"), vectors_frame()),
    (lambda p: AtomicJSONDataset(filepath=str(p)), {"a": 1}),
])
def test_failed_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch, make, data):
    path = tmp_path / "out"
    dataset = make(path)
    dataset.save(data)
    before = path.read_bytes()

    def broken(target, write):  # the disk fills up half way through the write
        def half(tmp):
            tmp.write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return original(target, half)

    original = datasets.write_file
    monkeypatch.setattr(datasets, "write_file", broken)
    with pytest.raises((OSError, DatasetError)):
        dataset.save(data)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_json_keeps_kedro_options(tmp_path):
    dataset = AtomicJSONDataset(filepath=str(tmp_path / "r.json"), save_args={"ensure_ascii": False, "indent": 1})
    dataset.save({"诗": "静夜思"})
    assert "静夜思" in (tmp_path / "r.json").read_text("utf-8")
    assert json.loads(dataset.preview()) == {"诗": "静夜思"}
