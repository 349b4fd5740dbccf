"""The documentation site and the README's size: `mkdocs build --strict` over docs/ (a broken link
or anchor, or a page missing from mkdocs.yml's nav, fails), and the README stays a five-minute read
whose first two commands are the start commands."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]' (scripts/setup.sh does)")
pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[docs]' (scripts/setup.sh does)")


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_docs_site_builds_strictly(tmp_path):
    result = _build(REPO, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "targets" / "index.html").exists()


def test_a_broken_link_or_a_page_left_out_of_nav_fails_the_build(tmp_path):
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n\nSee [usage](usage.md#no-such-section).\n")
    result = _build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert "orphan.md" in result.stderr and "not included in the \"nav\"" in result.stderr
    assert "does not contain an anchor '#no-such-section'" in result.stderr


def test_the_readme_is_short_and_starts_with_the_two_start_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["bash scripts/quickstart.sh", ".venv/bin/python -m pytest -q"]
