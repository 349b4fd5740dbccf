"""`mnv4-deploy validate` and `inspect` on existing artifacts."""
from __future__ import annotations

import json

import onnx
import pytest
from typer.testing import CliRunner

from mnv4_deploy import export
from mnv4_deploy.cli import app

from conftest import SMALL

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    export("conv_small", "onnx,onnx-fp16", out, img_size=SMALL, golden_count=3, log=lambda _: None)
    return out


def test_validate_rejudges_an_artifact_and_finds_its_target(exported, tmp_path):
    result = runner.invoke(app, ["validate", str(exported / "conv_small.fp16.onnx"), "-m", "conv_small",
                                 "--img-size", str(SMALL), "--golden-count", "3", "--output", "json", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["results"][0]
    assert row["target"] == "onnx-fp16" and row["status"] == "passed"
    assert json.loads((tmp_path / "report.json").read_text())["results"][0]["precision"] == "fp16"


def test_validate_catches_a_tampered_artifact(exported, tmp_path):
    """A vendor tool that changed the weights is caught, with exit code 3."""
    proto = onnx.load(str(exported / "conv_small.onnx"))
    weight = next(i for i in proto.graph.initializer if len(i.dims) == 4)
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr *= -1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))
    result = runner.invoke(app, ["validate", str(tampered), "--img-size", str(SMALL), "--golden-count", "3"])
    assert result.exit_code == 3 and "validation failed" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--img-size", "96"], "input shape [1, 3, 64, 64] does not match the model's [1, 3, 96, 96]"),
    (["--img-size", str(SMALL), "--num-classes", "10"], "outputs 1000 classes, the model 10"),
])
def test_validate_names_what_differs(exported, args, message):
    result = runner.invoke(app, ["validate", str(exported / "conv_small.onnx"), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_validate_and_inspect_refuse_unknown_files(tmp_path):
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"1234")
    for cmd in (["validate", str(odd)], ["inspect", str(odd)]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 2 and "no target produces files named like this" in result.stderr
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not protobuf at all")
    result = runner.invoke(app, ["inspect", str(broken)])
    assert result.exit_code == 2 and "not a readable ONNX model" in result.stderr
    assert runner.invoke(app, ["inspect", str(tmp_path / "absent.onnx")]).exit_code == 2


def test_inspect_shows_io_ops_and_producer(exported):
    result = runner.invoke(app, ["inspect", str(exported / "conv_small.onnx")])
    info = json.loads(result.stdout)
    assert info["target"] == "onnx" and info["inputs"][0] == {"name": "input", "shape": [1, 3, SMALL, SMALL], "dtype": "float"}
    assert info["outputs"][0]["shape"] == [1, 1000] and info["op_histogram"]["Conv"] > 30
    assert "BatchNormalization" not in info["op_histogram"] and info["producer"].startswith("mnv4-deploy")
