"""The README and the documentation site stay true to the code: the configuration reference
is the one ``components/config_reference.py`` generates from ``components/config.py``, the
README stays a front door whose links resolve, and ``mkdocs build --strict`` passes (a broken
link, a missing page or a page left out of the nav fails it). No Ray, no MLflow: seconds."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from components import config
from components.config_reference import markdown

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference" / "configuration.md"
README_MAX_LINES = 300


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree that holds a value (not a section)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_the_committed_configuration_reference_is_the_generated_one():
    assert PAGE.read_text() == markdown(), (
        f"{PAGE.relative_to(ROOT)} differs from components/config.py: run `make docs` to "
        "regenerate it, and commit it with the config change")


def test_the_configuration_reference_lists_every_key():
    page = PAGE.read_text()
    keys = _leaf_keys(config.RunConfig)
    assert len(keys) > 60  # the walk sees the real tree
    missing = [k for k in keys if f"| `{k}` |" not in page]
    assert missing == [], f"keys of RunConfig missing from {PAGE.relative_to(ROOT)}: {missing}"


def test_a_literal_key_lists_its_allowed_values():
    """``loss.type`` is checked against this list when the config loads; the page says it."""
    row = next(ln for ln in markdown().splitlines() if ln.startswith("| `loss.type` |"))
    for value in config.LOSS_TYPES:
        assert f"`{value}`" in row, (value, row)


def test_the_readme_is_a_front_door_whose_docs_links_resolve():
    text = (ROOT / "README.md").read_text()
    lines = len(text.splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move reference "
        "material to docs/")
    for command in ("make demo", "make test"):
        assert command in text, f"README.md no longer shows `{command}`"
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)\s]*)?\)", text)
    assert len(links) >= 10, links
    broken = sorted({link for link in links if not (ROOT / link).is_file()})
    assert broken == [], f"README.md links to missing docs pages: {broken}"


def test_the_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the test extra: pip install -e '.[test]')")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
         "--config-file", str(ROOT / "mkdocs.yml")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stderr[-4000:]}"
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").is_file()
