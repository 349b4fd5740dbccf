"""The example third-party target (examples/plugin/) installs beside mnv4-deploy and works like a built-in.

It is installed with the venv's pip into a temporary folder and used through PYTHONPATH, so
nothing in the repository's own metadata names it: its option appears in `export --help`
under its own panel, the core checks the option's declared choices and refuses it for targets
that do not declare it, and its artifact is judged against PyTorch like any other.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SMALL

PLUGIN = REPO / "examples" / "plugin"
NAMES = ("onnx-opt", "ort_opt_level", "ort-opt-level", "mnv4_onnx_opt")


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """The plugin installed with pip (no deps, no network) into a folder of its own."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN, root / "source")  # pip's build leaves files beside the sources
    target = root / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (target / "mnv4_onnx_opt.py").is_file()
    return target


def _cli(plugin: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)]), "COLUMNS": "160",
           "TERM": "dumb", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "mnv4_deploy.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=600)


def _panel(help_text: str, title: str) -> str:
    """The body of one `--help` panel (rich box titled `title`)."""
    match = re.search(rf"─ {re.escape(title)} ─+╮\n(.*?)╰", help_text, re.S)
    assert match, f"no {title!r} panel in:\n{help_text}"
    return match.group(1)


def test_its_option_is_listed_under_its_own_panel(plugin_path):
    proc = _cli(plugin_path, "export", "--help")
    assert proc.returncode == 0, proc.stderr
    panel = _panel(proc.stdout, "ONNX Runtime")
    assert "--ort-opt-level" in panel and "[default: extended]" in panel
    assert "--ort-opt-level" not in _panel(proc.stdout, "ONNX")  # not mixed into another target's panel
    targets = _cli(plugin_path, "targets", "--output", "json")
    rows = {r["target"]: r for r in json.loads(targets.stdout)}
    assert rows["onnx-opt"]["installed"] is True and rows["onnx-opt"]["source"] == "mnv4_onnx_opt:ONNX_OPT"


@pytest.mark.parametrize("args, message", [
    (["--to", "onnx-opt", "--ort-opt-level", "fastest"], "--ort-opt-level 'fastest' is not one of basic, extended, all"),
    (["--to", "onnx", "--ort-opt-level", "all"], "option --ort-opt-level is not used by target(s) onnx"),
])
def test_its_option_is_checked_by_the_core_before_any_work(plugin_path, tmp_path, args, message):
    proc = _cli(plugin_path, "export", *args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_its_artifact_is_exported_and_judged_like_any_target(plugin_path, tmp_path):
    out = tmp_path / "out"
    proc = _cli(plugin_path, "export", "--to", "onnx-opt", "--ort-opt-level", "basic", "--img-size", str(SMALL),
                "--golden-count", "3", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    [opt] = report["results"]
    assert opt["target"] == "onnx-opt"
    assert opt["status"] == "passed" and opt["exit_code"] == 0
    assert opt["parity"]["cosine"] > 0.99999 and opt["parity"]["max_abs"] < 1e-3
    assert opt["metadata"]["ort_opt_level"] == "basic"
    assert report["options"]["ort_opt_level"] == "basic"
    assert (out / opt["artifact"]).is_file() and opt["artifact"].endswith(".ort.onnx")
    assert opt["sha256"] in (out / "SHA256SUMS").read_text()


def test_the_core_does_not_name_the_plugin():
    sources = [*(REPO / "mnv4_deploy").rglob("*.py"), *(REPO / "converters").rglob("*.py"), REPO / "pyproject.toml"]
    naming = [str(p.relative_to(REPO)) for p in sources if any(n in p.read_text() for n in NAMES)]
    assert naming == []
