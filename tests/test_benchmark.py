"""`mnv4-deploy benchmark`: the model x target matrix, its gates, files, HTML and progress output."""
from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mnv4_deploy import pipeline
from mnv4_deploy.benchmark import MatrixSpec, select_targets
from mnv4_deploy.cli import app
from mnv4_deploy.progress import PLAIN, Progress
from mnv4_deploy.registry import Converter, TargetInfo

from conftest import SMALL

runner = CliRunner()
MODELS = "conv_small,conv_small_050"
FAST = "onnx,onnx-fp16"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n
BASE = ["--models", MODELS, "--targets", FAST, "--img-size", str(SMALL), "--golden-count", "3",
        "--runs", "3", "--warmup", "1"]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Two models x the fast targets, with an fp16 cosine gate no fp16 artifact can meet."""
    out = tmp_path_factory.mktemp("matrix")
    result = runner.invoke(app, ["benchmark", *BASE, "--min-cosine", "onnx-fp16=0.9999999", "--out", str(out)])
    return out, result


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_failing_gate_sets_exit_code_and_status_but_never_stops_the_matrix(matrix):
    out, result = matrix
    assert result.exit_code == 3, result.output
    rows = {(r["model"], r["target"]): r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert set(rows) == {(m, t) for m in MODELS.split(",") for t in FAST.split(",")}
    for model in MODELS.split(","):
        assert rows[model, "onnx"]["status"] == "passed"
        assert rows[model, "onnx-fp16"]["status"] == "validation_failed"
        assert "min_cosine 0.9999999 (deploy gate)" in rows[model, "onnx-fp16"]["note"]
        assert rows[model, "onnx"]["latency_ms"] > 0 and rows[model, "onnx"]["fps"] > 0
    table = [line for line in result.stdout.splitlines() if line.startswith("conv_small ")]
    assert any("onnx-fp16" in line and "exported but validation failed" in line for line in table)
    assert any(re.search(r"\bonnx\s+passed\b", line) for line in table)


def test_manifest_lists_every_artifact_with_a_checksum_that_holds(matrix):
    out, _ = matrix
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "merged" and manifest["exit_code"] == 3 and not manifest["problems"]
    assert len(manifest["artifacts"]) == 4
    for art in manifest["artifacts"]:
        assert art["sha256"] == _sha256(out / art["file"]) and art["size_bytes"] == (out / art["file"]).stat().st_size
        assert art["latency"]["runtime"].startswith("onnxruntime") and art["reproducibility"]["reason"]
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 4
    for line in sums:
        digest, name = line.split("  ", 1)
        assert digest == _sha256(out / name)
    part = manifest["parts"][0]["manifest"]
    assert part["model"]["weights"] == "random init, seed 0" and part["contract"]["crop_size"] == [SMALL, SMALL]
    assert {"torch", "onnxruntime", "python"} <= set(part["versions"])
    assert part["artifacts"][0]["thresholds"]["min_cosine"] > 0.99


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.scripts += tag == "script" or any(k == "src" or (v or "").startswith("http") and k == "href"
                                               for k, v in attrs)


def test_html_report_parses_and_has_its_plots(matrix):
    out, _ = matrix
    parser = _Tags()
    parser.feed((out / "report.html").read_text())
    parser.close()
    assert parser.tags.count("svg") >= 1 and parser.tags.count("table") == 1
    assert parser.tags.count("tr") == 5  # header + 4 pairs
    markers = parser.tags.count("circle") + parser.tags.count("rect") + parser.tags.count("polygon")
    assert markers >= 4 + 2  # one marker per timed pair, plus the legend
    assert parser.scripts == 0  # self-contained: no scripts, no external resources
    assert "conv_small_050" in (out / "report.md").read_text()


def test_non_tty_progress_is_plain_lines(matrix):
    _, result = matrix
    err = result.stderr
    assert "[1/4]" in err and "[4/4]" in err and "target onnx-fp16 ..." in err
    assert not CONTROL.search(err.replace("\n", "")), repr(CONTROL.search(err.replace("\n", "")))
    assert "\x1b" not in result.stdout


def test_progress_strips_control_characters(capsys):
    import sys

    with Progress(total=1, mode=PLAIN, stream=sys.stderr) as progress:
        progress.log("\x1b[31mred\x1b[0m\rcarriage")
        progress.pair_done("done")
    err = capsys.readouterr().err
    assert "redcarriage" in err and "[1/1] done" in err and not CONTROL.search(err.replace("\n", ""))


def test_quiet_and_json(matrix, tmp_path):
    out, _ = matrix
    result = runner.invoke(app, ["merge-manifests", str(out), "--out", str(tmp_path), "--json"])
    data = json.loads(result.stdout)
    assert result.exit_code == 3 and len(data["rows"]) == 4 and result.stderr == ""


def test_interrupted_run_keeps_what_finished_and_exits_130(tmp_path, monkeypatch):
    real = pipeline.run_target

    def interrupt_at_fp16(conv, ctx):
        if conv.info.name == "onnx-fp16":
            raise KeyboardInterrupt
        return real(conv, ctx)

    monkeypatch.setattr(pipeline, "run_target", interrupt_at_fp16)
    result = runner.invoke(app, ["benchmark", *BASE, "--out", str(tmp_path), "-q"])
    assert result.exit_code == 130 and "interrupted" in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["interrupted"] and not report["passed"]
    status = {(r["model"], r["target"]): r["status"] for r in report["rows"]}
    assert status[("conv_small", "onnx")] == "passed"
    assert status[("conv_small", "onnx-fp16")] == "skipped"
    assert status[("conv_small_050", "onnx")] == "skipped"  # never started
    assert (tmp_path / "conv_small" / "conv_small.onnx").is_file()
    assert not (tmp_path / "conv_small" / "conv_small.fp16.onnx").exists()
    assert not list(tmp_path.rglob(".tmp-*"))  # nothing half-written


class _FakeConverter(Converter):
    def __init__(self, info):
        self.info = info

    def convert(self, job):  # pragma: no cover - never reached
        raise AssertionError

    def runner(self, artifact):  # pragma: no cover
        raise AssertionError


FAKE = _FakeConverter(TargetInfo(name="fake-npu", format="fake", precision="int8", suffix=".npu",
                                 description="test", backend_modules=("no_such_backend_xyz",), extra="npu"))


def test_missing_backend_is_a_row_not_a_crash(monkeypatch):
    import sys
    import types

    module = types.ModuleType("fake_npu_module")
    module.FAKE = FAKE
    monkeypatch.setitem(sys.modules, "fake_npu_module", module)
    ep = EntryPoint("fake-npu", "fake_npu_module:FAKE", "mnv4_deploy.converters")
    monkeypatch.setattr("mnv4_deploy.benchmark.find_targets", lambda: {"fake-npu": ep})
    spec = MatrixSpec(models=("conv_small",))
    for explicit, code in ((False, 0), (True, 5)):
        selection = select_targets(["fake-npu"], spec, explicit=explicit)
        row = selection.rows["fake-npu"]
        assert selection.runnable == [] and row.status == "backend_missing" and row.exit_code == code
        assert "no_such_backend_xyz" in row.reason and "mnv4-deploy[npu]" in row.reason


def test_html_plots_int8_sensitivity_and_escapes_text():
    from mnv4_deploy.html_report import render

    row = {"model": "m<1>", "target": "onnx-int8", "precision": "int8", "status": "passed", "status_text": "passed",
           "note": "", "exit_code": 0, "size_mb": 1.0, "cosine": 0.99, "max_abs": 0.1, "top1": 70.0, "top5": 90.0,
           "drop_top1": 0.5, "drop_top1_ci95": [0.1, 0.9], "latency_ms": 2.0, "fps": 500.0, "runtime": "ort",
           "artifact": "m/m.int8.onnx", "sha256": "0" * 64}
    sens = [{"unit": f"blocks.{i}.conv", "op": "Conv2d", "sqnr_db": 20.0 + i, "gain_db": 1.0 / (i + 1)}
            for i in range(20)]
    html = render({"rows": [row, {**row, "target": "onnx", "latency_ms": 3.0, "top1": 70.5}],
                   "reports": [{"model": {"name": "m<1>", "weights": "w"}, "quantization": {"sensitivity": sens}}],
                   "exit_code": 0, "wall_seconds": 1.0})
    parser = _Tags()
    parser.feed(html)
    assert parser.tags.count("svg") == 2 and "m&lt;1&gt;" in html and "m<1>" not in html
    assert html.count("blocks.") == 2 * 15  # top 15 layers: label and tooltip each
