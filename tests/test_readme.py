"""The README's parameter tables match the shipped parameters: every key documented, no stale row,
and each scalar default as shipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT


def sections(root: Path = ROOT) -> list[str]:
    return sorted(p.stem.removeprefix("parameters_") for p in (root / "conf/base").glob("parameters_*.yml"))


def _shipped(section: str, root: Path = ROOT) -> dict:
    """The section's parameters; none for a file with comments only (as `kedro pipeline create` writes)."""
    content = yaml.safe_load((root / f"conf/base/parameters_{section}.yml").read_text("utf-8")) or {}
    return content.get(section) or {}


def _documented(section: str, root: Path = ROOT) -> dict[str, str]:
    """``key → default cell`` from README table rows naming ``section.key`` (a row may name several
    keys, ``a`` / ``b``, with their defaults in the same order)."""
    rows = {}
    for line in (root / "README.md").read_text("utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or not cells[0].startswith(f"`{section}."):
            continue
        if "→" in cells[1]:  # a node table's row (`data_processing.clean` | inputs → outputs | …)
            continue
        keys = [k.strip().strip("`").removeprefix(f"{section}.") for k in cells[0].split(" / ")]
        defaults = cells[1].split(" / ") if len(keys) > 1 else [cells[1]]
        rows.update(zip(keys, defaults))
    return rows


def _literal(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("section", sections())
def test_readme_documents_every_parameter_with_its_default(section, root: Path = ROOT):
    shipped, documented = _shipped(section, root), _documented(section, root)
    assert set(documented) == set(shipped), (
        f"README rows for {section}: missing {sorted(set(shipped) - set(documented))}, "
        f"stale {sorted(set(documented) - set(shipped))}")
    for key, value in shipped.items():
        if isinstance(value, (dict, list)):
            continue
        cell = re.sub(r"^`(.*)`$", r"\1", documented[key].strip())
        assert cell == _literal(value), f"{section}.{key}: README says {documented[key]}, shipped {value!r}"
