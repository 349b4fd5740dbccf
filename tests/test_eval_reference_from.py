"""`--eval-reference-from`: a run reuses another run's reference records when the strict key matches.

conv_small at 32 px, onnx only, over a 36-image labeled set made here (two chunks of 32).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import make_images
from typer.testing import CliRunner

from mnv4_deploy.evaluation import EVAL_DIR

runner = CliRunner()
IMAGES = 36
FAST = ["--model", "conv_small", "--img-size", "32", "--golden-count", "3", "--to", "onnx", "--eval-workers", "0"]


def _export(eval_dir: Path, out: Path, *extra: str):
    from mnv4_deploy.cli import app

    return runner.invoke(app, ["export", *FAST, "--eval-data", str(eval_dir), "--out", str(out), *extra])


def _meta(out: Path) -> dict:
    return json.loads((out / EVAL_DIR / "meta.json").read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labeled")
    for c in range(3):
        make_images(root / str(c), IMAGES // 3, seed=20 + c)
    return root


@pytest.fixture(scope="module")
def first(labeled, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("first")
    result = _export(labeled, out)
    assert result.exit_code == 0, result.output
    assert _meta(out)["reference_reused"] == 0 and _meta(out)["count"] == IMAGES
    return out


@pytest.mark.parametrize("given", ["out", "out/eval"])
def test_a_second_export_reuses_the_first_runs_reference_records(labeled, first, tmp_path, given):
    source = first if given == "out" else first / EVAL_DIR
    second = tmp_path / "second"
    result = _export(labeled, second, "--eval-reference-from", str(source))
    assert result.exit_code == 0, result.output
    assert f"reference records of {IMAGES} image(s) reused from {first / EVAL_DIR}" in result.output
    assert _meta(second)["reference_reused"] == IMAGES
    assert _sha(second / EVAL_DIR / "reference.npz") == _sha(first / EVAL_DIR / "reference.npz")
    report = json.loads((second / "report.json").read_text())
    assert report["evaluation"]["count"] == IMAGES


def test_another_sample_recomputes_and_names_the_differing_field(labeled, first, tmp_path):
    third = tmp_path / "third"
    result = _export(labeled, third, "--eval-size", "20", "--eval-reference-from", str(first))
    assert result.exit_code == 0, result.output
    assert f"reference records in {first / EVAL_DIR} not reused: eval_images differs (recorded {IMAGES}, now 20)" \
        in result.output
    assert _meta(third)["reference_reused"] == 0 and _meta(third)["count"] == 20


def test_validate_reuses_the_reference_records_too(labeled, first, tmp_path):
    from mnv4_deploy.cli import app

    artifact = next(first.glob("*.onnx"))
    out = tmp_path / "validated"
    result = runner.invoke(app, ["validate", str(artifact), "--model", "conv_small", "--img-size", "32",
                                 "--golden-count", "3", "--eval-data", str(labeled), "--eval-workers", "0",
                                 "--eval-reference-from", str(first), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _meta(out)["reference_reused"] == IMAGES
    assert _sha(out / EVAL_DIR / "reference.npz") == _sha(first / EVAL_DIR / "reference.npz")


@pytest.mark.parametrize("case, message", [
    ("missing", "--eval-reference-from {src}: not a directory"),
    ("no records", "--eval-reference-from {src}: no finished evaluation records"),
    ("unfinished", "--eval-reference-from {src}: no finished evaluation records"),
    ("with resume", "--eval-reference-from with --resume: a resumed run continues its own records"),
    ("without eval-data", "--eval-reference-from needs labeled images"),
])
def test_bad_reference_folder_is_one_line_exit_2_before_any_work(labeled, first, tmp_path, case, message):
    from mnv4_deploy.cli import app

    src, extra = tmp_path / "src", []
    if case == "no records":
        make_images(src, 1)
    elif case == "unfinished":
        (src / EVAL_DIR).mkdir(parents=True)
        (src / EVAL_DIR / "meta.json").write_text(json.dumps({"complete": False}))
    elif case in ("with resume", "without eval-data"):
        src = first
        extra = ["--resume"] if case == "with resume" else []
    out = tmp_path / "out"
    args = ["export", *FAST, "--out", str(out), "--eval-reference-from", str(src), *extra]
    if case != "without eval-data":
        args += ["--eval-data", str(labeled)]
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(lines) == 1 and message.format(src=src) in lines[0], result.output
    assert not out.exists()  # refused before --out was created
