"""EdgeTPU static checker (converters/edgetpu/) and the edgetpu_compiler log parser.

The log fixture tests/fixtures/edgetpu_compiler.log is the real `edgetpu_compiler -s` output
(compiler 15.0.340273435, yolov3-tiny) published in
https://github.com/tetutaro/yolo_various_framework/blob/7a90ba341d9d4d03fa94cc90cf87d7108b03d38f/weights/README.md
copied verbatim from its first line ("Edge TPU Compiler version ...") to the end of its op table.

The model tests build tiny Keras nets and convert them with TensorFlow's own converter; they
skip when TensorFlow is missing. The log, error and table tests need no TensorFlow.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnv4_deploy.converters import edgetpu as etc
from mnv4_deploy.converters.tflite import flatbuffer

FIXTURE_LOG = Path(__file__).parent / "fixtures" / "edgetpu_compiler.log"
CONV_NET_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "AVERAGE_POOL_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"}


# ------------------------------------------------------------------ tiny models, built once
def _conv_net(tf, groups: int = 1, matmul: bool = False):
    """Conv2D+ReLU, [grouped conv | act x act matmul], DepthwiseConv2D, Add, AvgPool, Mean, Dense, Softmax."""
    layers = tf.keras.layers
    inp = tf.keras.Input(shape=(16, 16, 3), batch_size=1)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    if groups > 1:
        x = layers.Conv2D(8, 3, padding="same", groups=groups, activation="relu")(x)
    if matmul:
        a = layers.Reshape((64, 8))(x)
        b = layers.Reshape((64, 8))(layers.Conv2D(8, 1)(x))
        scores = layers.Lambda(lambda t: tf.linalg.matmul(t[0], t[1], transpose_b=True))([a, b])
        x = layers.Conv2D(8, 1, activation="relu")(layers.Reshape((8, 8, 64))(scores))
    y = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = layers.Add()([x, layers.Conv2D(8, 1)(y)])
    x = layers.GlobalAveragePooling2D()(layers.AveragePooling2D(2)(x))
    return tf.keras.Model(inp, layers.Softmax()(layers.Dense(10)(x)))


def _convert(tf, model, io_dtype=None) -> bytes:
    """Float conversion when io_dtype is None, else full-integer with that I/O type."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if io_dtype is not None:
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.random((1, 16, 16, 3), dtype=np.float32)] for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_dtype
        converter.inference_output_type = io_dtype
    return converter.convert()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tf = pytest.importorskip("tensorflow")
    tf.keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("edgetpu_models")
    variants = {
        "int8": (_conv_net(tf), tf.int8),
        "uint8": (_conv_net(tf), tf.uint8),
        "float": (_conv_net(tf), None),
        "float_io": (_conv_net(tf), tf.float32),
        "matmul": (_conv_net(tf, matmul=True), tf.int8),
        "grouped": (_conv_net(tf, groups=2), tf.int8),
    }
    paths = {}
    for name, (model, io_dtype) in variants.items():
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(_convert(tf, model, io_dtype))
    return paths


# ------------------------------------------------------------------ static check on real models
@pytest.mark.parametrize("variant", ["int8", "uint8"])
def test_full_integer_conv_net_maps_fully(models, variant):
    report = etc.check_tflite(models[variant])
    assert report.fully_mapped, report.format_table()
    assert report.first_unmapped_index is None
    assert CONV_NET_OPS <= {r.op for r in report.rows}
    assert report.counts["on_cpu"] == 0 and report.counts["on_edgetpu"] == len(report.rows)
    assert "fully mapped" in report.format_table()
    json.dumps(report.to_dict())  # the report goes into report.json as is


def test_float_model_is_flagged_on_its_first_op_naming_the_float_tensor(models):
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    input_name = litert.Interpreter(model_path=str(models["float"])).get_input_details()[0]["name"]
    report = etc.check_tflite(models["float"])
    first = report.rows[0]
    assert report.first_unmapped_index == 0 and not report.fully_mapped
    assert not first.maps_to_edgetpu and first.status == "unsupported"
    assert any(input_name in r and "FLOAT32" in r for r in first.reasons), first.reasons
    assert all(etc.FALLS_BACK in r.reasons for r in report.rows[1:])


def test_float_io_conversions_stay_on_cpu_without_cutting_the_partition(models):
    report = etc.check_tflite(models["float_io"])
    ends = [report.rows[0], report.rows[-1]]
    assert [r.op for r in ends] == ["QUANTIZE", "DEQUANTIZE"]
    assert all(r.status == "cpu_boundary" and not r.maps_to_edgetpu for r in ends)
    assert report.first_unmapped_index is None and not report.fully_mapped
    assert all(r.maps_to_edgetpu for r in report.rows[1:-1])


def test_batch_matmul_is_flagged_and_everything_after_falls_back(models):
    report = etc.check_tflite(models["matmul"])
    cut = report.first_unmapped_index
    assert cut is not None and report.rows[cut].op == "BATCH_MATMUL"
    assert any("BATCH_MATMUL" in r for r in report.rows[cut].reasons)
    assert all(r.maps_to_edgetpu for r in report.rows[:cut])
    after = report.rows[cut + 1:]
    assert after and all(not r.maps_to_edgetpu and r.status == "falls_back" for r in after)
    assert all(etc.FALLS_BACK in r.reasons for r in after)
    assert report.counts["on_edgetpu"] == cut and report.counts["falls_back"] == len(after)


def test_grouped_conv_2d_is_flagged(models):
    report = etc.check_tflite(models["grouped"])
    row = report.rows[report.first_unmapped_index]
    assert row.op == "CONV_2D" and row.options["groups"] == 2
    assert any("grouped CONV_2D" in r for r in row.reasons)


# ------------------------------------------------------------------ files that are not models
@pytest.mark.parametrize("content", [np.random.default_rng(1).bytes(4096), b"just some text\nnot a model\n"])
def test_non_flatbuffer_files_are_refused_with_one_line(tmp_path, content):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(etc.NotAFlatbufferError) as err:
        etc.check_tflite(path)
    assert isinstance(err.value, etc.EdgeTpuCheckError) and err.value.exit_code == 2
    assert isinstance(err.value, flatbuffer.NotAFlatbufferError)  # the TFLite reader's family, mapped
    assert str(path) in str(err.value) and "TFL3" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(etc.NotAFlatbufferError, match="no such file"):
        etc.check_tflite(tmp_path / "absent.tflite")


def test_tflite_float_op_reader_does_not_load_the_edgetpu_package(models):
    """tflite -> edgetpu -> tflite was a package cycle hidden in a function-level import: the reader
    now lives in mnv4_deploy.converters.tflite, so the full-integer check runs without mnv4_deploy.converters.edgetpu."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from mnv4_deploy.converters.tflite.full_integer import float_ops\n"
        "from mnv4_deploy.converters.tflite.flatbuffer import NotAFlatbufferError\n"
        "found = float_ops(Path(sys.argv[1]))\n"
        "try:\n"
        "    float_ops(Path(sys.argv[2]))\n"
        "    refused = None\n"
        "except NotAFlatbufferError as exc:\n"
        "    refused = [type(exc).__module__, exc.exit_code]\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('mnv4_deploy.converters.edgetpu'))\n"
        "print(json.dumps({'found': found, 'refused': refused, 'loaded': loaded}))\n"
    )
    bad = models["float"].parent / "not-a-model.tflite"
    bad.write_bytes(b"just some text\n")
    proc = subprocess.run([sys.executable, "-c", script, str(models["float"]), str(bad)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["found"] and result["found"][0].startswith("#0 CONV_2D"), result["found"]
    assert result["refused"] == ["mnv4_deploy.converters.tflite.flatbuffer", 2]
    assert result["loaded"] == []


# ------------------------------------------------------------------ the table is data, and its checks bite
def test_op_table_names_real_tflite_ops():
    pytest.importorskip("ai_edge_litert")
    builtin = set(flatbuffer._enum_names("BuiltinOperator").values())
    for name, rule in etc.OP_TABLE.items():
        assert name in builtin or name.startswith("CUSTOM:"), name
        assert all(callable(check) for check in rule.checks)


def _t(index, shape, dtype="INT8", constant=False, values=None, signature=None):
    raw = np.asarray(values, dtype=np.int32).tobytes() if values is not None else (b"\0" if constant else None)
    return etc.TensorInfo(index, f"t{index}", dtype, tuple(shape), tuple(signature or shape), constant, raw)


@pytest.mark.parametrize("op, expected", [
    (etc.OpInfo(0, "SOFTMAX", (_t(0, (1, 4, 16, 16)),), (_t(1, (1, 4, 16, 16)),), {}), "only 1-D"),
    (etc.OpInfo(0, "MEAN", (_t(0, (1, 4, 4, 6)), _t(1, (1,), "INT32", True, [3])), (_t(2, (1, 4, 4)),), {}),
     "multiple of 4"),
    (etc.OpInfo(0, "MEAN", (_t(0, (1, 4, 4, 8)), _t(1, (1,), "INT32", True, [0])), (_t(2, (4, 4, 8)),), {}),
     "batch dimension"),
    (etc.OpInfo(0, "ADD", (_t(0, (1, 8)), _t(1, (1, 8))), (_t(2, (1, 8)),), {"fused_activation": "TANH"}),
     "fused activation TANH"),
    (etc.OpInfo(0, "AVERAGE_POOL_2D", (_t(0, (1, 4, 4, 8)),), (_t(1, (1, 2, 2, 8)),), {"fused_activation": "RELU"}),
     "must have none"),
    (etc.OpInfo(0, "ADD", (_t(0, (2, 4, 4, 8)), _t(1, (2, 4, 4, 8))), (_t(2, (2, 4, 4, 8)),), {}), "batch 2"),
    (etc.OpInfo(0, "ADD", (_t(0, (1, 2, 4, 4, 8)),), (_t(1, (1, 2, 4, 4, 8)),), {}), "3 innermost"),
    (etc.OpInfo(0, "RELU", (_t(0, (1, 8), signature=(-1, 8)),), (_t(1, (1, 8)),), {}), "dynamic shape"),
    (etc.OpInfo(0, "RELU", (_t(0, (1, 8), "INT16"),), (_t(1, (1, 8), "INT16"),), {}), "INT16"),
    (etc.OpInfo(0, "STRIDED_SLICE",
                (_t(0, (1, 8, 8, 4)), _t(1, (4,), "INT32", True, [0] * 4),
                 _t(2, (4,), "INT32", True, [1, 8, 8, 4]), _t(3, (4,), "INT32", True, [1, 2, 2, 1])),
                (_t(4, (1, 4, 4, 4)),), {}), "unit strides"),
    (etc.OpInfo(0, "DEQUANTIZE", (_t(0, (1, 8)),), (_t(1, (1, 8), "FLOAT32"),), {}), "not in the EdgeTPU"),
])
def test_op_rules_flag_documented_limitations(op, expected):
    assert any(expected in r for r in etc.op_reasons(op)), etc.op_reasons(op)


# ------------------------------------------------------------------ the real compiler's log
def test_fixture_log_parses_into_rows_and_summary():
    log = etc.parse_compiler_log(FIXTURE_LOG.read_text())
    assert log.compiler_version == "15.0.340273435" and log.succeeded
    assert (log.ops_on_edgetpu, log.ops_on_cpu, log.total_operations) == (2, 34, 36)
    assert sum(r.count for r in log.rows) == 36 and sum(r.count for r in log.rows if r.mapped) == 2
    assert len(log.rows) == 9 and log.rows[0].op == "MAX_POOL_2D" and log.rows[0].count == 6
    statuses = {r.status for r in log.rows}
    assert "More than one subgraph is not supported" in statuses
    assert "Operation is otherwise supported, but not mapped due to some unspecified limitation" in statuses
    assert log.compile_time_ms == 577 and log.edgetpu_subgraphs == 1
    assert log.on_chip_memory_used == "3.00KiB" and log.memory_bytes() == 3072
    assert log.memory_bytes("off_chip_memory_used") == 0 and not log.fully_mapped
    assert "LEAKY_RELU" in log.format_table()
    json.dumps(log.to_dict())


def _fake_compiler(bin_dir: Path, script: str) -> None:
    exe = bin_dir / "edgetpu_compiler"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def _tiny_flatbuffer(tmp_path: Path) -> Path:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x18\x00\x00\x00TFL3" + bytes(24))  # header only: the runner checks no more
    return path


def test_missing_compiler_raises_with_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(etc.EdgeTpuCompilerMissing) as err:
        etc.run_edgetpu_compiler(_tiny_flatbuffer(tmp_path), tmp_path / "out")
    assert err.value.exit_code == 5 and "apt-get install edgetpu-compiler" in err.value.hint
    assert "x86-64" in err.value.one_line()


def test_compiler_run_keeps_model_and_parses_log(tmp_path, monkeypatch):
    # Stand-in compiler with the real one's CLI: -s -o OUT_DIR MODEL; prints the fixture log.
    _fake_compiler(tmp_path, f'cat "{FIXTURE_LOG}"\ntouch "$3/$(basename "$4" .tflite)_edgetpu.tflite"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    log = etc.run_edgetpu_compiler(_tiny_flatbuffer(tmp_path), tmp_path / "out")
    assert Path(log.edgetpu_model) == tmp_path / "out" / "model_edgetpu.tflite"
    assert (log.ops_on_edgetpu, log.ops_on_cpu) == (2, 34)


def test_compiler_failure_is_typed_and_carries_the_log(tmp_path, monkeypatch):
    _fake_compiler(tmp_path, 'echo "Edge TPU Compiler version 16.0.384591198"\n'
                             'echo "Compilation failed: Compilation failed due to large activation tensors in model."\n'
                             "exit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(etc.EdgeTpuCompilerFailed, match="large activation tensors") as err:
        etc.run_edgetpu_compiler(_tiny_flatbuffer(tmp_path), tmp_path / "out")
    assert err.value.log is not None and not err.value.log.succeeded


# ------------------------------------------------------------------ `mnv4-deploy check`: the checker for any .tflite
def _check_cli(*args: str):
    from typer.testing import CliRunner

    from mnv4_deploy.cli import app

    return CliRunner().invoke(app, ["check", *map(str, args)])


def test_check_command_passes_a_conv_net_and_strict_fails_a_matmul_naming_it(models):
    ok = _check_cli(models["int8"], "--strict")
    assert ok.exit_code == 0, ok.output
    assert "fully mapped" in ok.stdout and "DEPTHWISE_CONV_2D" in ok.stdout
    bad = _check_cli(models["matmul"], "--strict", "--output", "json")
    assert bad.exit_code == 3, bad.output  # validation failed: an op would leave the accelerator
    verdict = json.loads(bad.stdout)
    assert not verdict["fully_mapped"] and verdict["first_cpu_op"]["op"] == "BATCH_MATMUL"
    assert _check_cli(models["matmul"]).exit_code == 0  # without --strict it is a report, not a gate


def test_check_command_parses_a_compiler_log_and_refuses_non_models(models, tmp_path):
    both = _check_cli(models["int8"], "--compiler-log", FIXTURE_LOG, "--output", "json")
    assert both.exit_code == 0, both.output
    log = json.loads(both.stdout)["compiler_log"]
    assert log["ops_on_cpu"] == etc.parse_compiler_log(FIXTURE_LOG.read_text()).ops_on_cpu and log["rows"]
    text = tmp_path / "notes.tflite"
    text.write_text("not a model\n")
    refused = _check_cli(text)
    assert refused.exit_code == 2 and "TFL3" in refused.stderr and refused.stderr.count("\n") == 1
    assert _check_cli(models["int8"], "--target", "onnx").exit_code == 2
