"""The README's parameter tables match the shipped parameters: every key documented, no stale row,
and each scalar default as shipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = sorted(p.stem.removeprefix("parameters_") for p in (ROOT / "conf/base").glob("parameters_*.yml"))


def _shipped(section: str) -> dict:
    return yaml.safe_load((ROOT / f"conf/base/parameters_{section}.yml").read_text("utf-8"))[section]


def _documented(section: str) -> dict[str, str]:
    """``key → default cell`` from README table rows naming ``section.key`` (a row may name several
    keys, ``a`` / ``b``, with their defaults in the same order)."""
    rows = {}
    for line in (ROOT / "README.md").read_text("utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or not cells[0].startswith(f"`{section}."):
            continue
        keys = [k.strip().strip("`").removeprefix(f"{section}.") for k in cells[0].split(" / ")]
        defaults = cells[1].split(" / ") if len(keys) > 1 else [cells[1]]
        rows.update(zip(keys, defaults))
    return rows


def _literal(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("section", SECTIONS)
def test_readme_documents_every_parameter_with_its_default(section):
    shipped, documented = _shipped(section), _documented(section)
    assert set(documented) == set(shipped), (
        f"README rows for {section}: missing {sorted(set(shipped) - set(documented))}, "
        f"stale {sorted(set(documented) - set(shipped))}")
    for key, value in shipped.items():
        if isinstance(value, (dict, list)):
            continue
        cell = re.sub(r"^`(.*)`$", r"\1", documented[key].strip())
        assert cell == _literal(value), f"{section}.{key}: README says {documented[key]}, shipped {value!r}"
