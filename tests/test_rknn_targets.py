"""RKNN targets: built by Rockchip's rknn-toolkit2 (its own venv, a worker process), judged in its simulator.

The trained digits net goes through `rknn-int8` (the plan's QDQ, scales kept by the toolkit)
and `rknn` (fp16) in one run: parity against float and against the plan's emulation, and the
same accuracy bound as `onnx-int8`, all computed by Rockchip's x86 simulator. The simulator is
Rockchip's reference for what the NPU computes, not a board. Without the toolchain installed
(`mnv4-deploy toolchain install rknn`), the tests that need it are skipped, and the refusal is
tested instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mnv4_deploy.cli import app
from mnv4_deploy.errors import UsageError
from mnv4_deploy.registry import ExportOptions
from mnv4_deploy.toolchains import toolchain_usable

from target_checks import check_digits_fp32_and_int8, check_rejudged_and_other_model_refused, digits_run_fixture, \
    inspect_digits_artifact

cli = CliRunner()
needs_toolkit = pytest.mark.skipif(not toolchain_usable("rknn"),
                                   reason="needs the rknn toolchain (mnv4-deploy toolchain install rknn)")
FIXTURES = Path(__file__).parent / "fixtures" / "rknn"

# rknn-int8 and rknn of the trained digits net in one run (the plan without the x86 overflow fix; the run with
# it is test_a_plan_with_the_x86_overflow_fix_is_kept_exactly)
digits_run = digits_run_fixture("rknn-int8,rknn")


@needs_toolkit
def test_int8_and_fp16_pass_in_the_simulator_and_int8_keeps_the_onnx_int8_bound(digits_run):
    from test_int8_pipeline import INT8_BOUND

    report, out = digits_run
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    fp16, int8 = report.result("rknn"), report.result("rknn-int8")
    assert fp16.parity["cosine"] > 0.9999 and fp16.accuracy["drop_top1"] <= 0.5, (fp16.parity, fp16.accuracy)
    assert int8.accuracy["drop_top1"] <= INT8_BOUND, int8.accuracy
    # the simulator computes what the plan's fake-quant model computes (the toolkit kept the plan's numbers:
    # converters/rknn/spelling.py, optimization level 2)
    assert int8.emulation_parity["cosine"] > 0.9999, int8.emulation_parity
    assert "simulator (rk3588; the build that wrote the bundle's .rknn)" in int8.runtime
    meta = int8.metadata
    assert meta["platform"] == "rk3588" and meta["toolkit"] == "2.5.0"
    # every layer on the NPU, in int8 but the float logits' classifier; the CPU reshapes the output
    placed = meta["placement"]
    assert placed["dtypes"].get("INT8", 0) > 40 and placed["dtypes"].get("FLOAT16", 0) <= 2, placed["dtypes"]
    assert [layer["op"] for layer in placed["off_npu"]] == ["Reshape"], placed["off_npu"]
    section = (out / "report.md").read_text().split("\n## rknn-int8\n")[1]  # the placement table in report.md
    assert "Reshape" in section.split("\n## ")[0], section
    assert meta["reproducible"] is False and "heap addresses" in meta["reproducible_reason"]
    # the toolkit's per-layer report runs on fp16 in the simulator; for a QDQ model it wants a board
    assert report.result("rknn").metadata["accuracy_analysis"]["ran"]
    assert "simulator_error" in report.result("rknn").metadata["accuracy_analysis"]["report"]
    assert not meta["accuracy_analysis"]["ran"] and "need set 'target'" in meta["accuracy_analysis"]["reason"]


@needs_toolkit
def test_the_bundle_holds_the_rknn_its_onnx_manifest_readme_and_sums(digits_run, trained_digits):
    import hashlib

    _, out = digits_run
    bundle = out / "digits.int8.rknn-bundle"
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["README.md", "SHA256SUMS", "digits.onnx", "digits.rknn", "manifest.json"]
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["mean_values"] == [127.5, 127.5, 127.5]  # the contract's mean = std = 0.5
    assert manifest["config"]["std_values"] == [127.5, 127.5, 127.5]
    assert manifest["onnx"]["plan_sha256"] and not manifest["full_integer"]
    readme = (bundle / "README.md").read_text()
    assert "rknnlite.api" in readme and "not a measurement on a board" in readme
    meta = inspect_digits_artifact(bundle, "rknn-int8", "rknn")
    assert meta["preprocess"]["std"] == list(trained_digits.contract.std) and meta["int8_plan_sha256"]


@needs_toolkit
def test_validate_rebuilds_from_the_bundle_onnx_and_names_another_model(digits_run, trained_digits):
    _, out = digits_run
    again = check_rejudged_and_other_model_refused(out / "digits.rknn-bundle", "rknn", out / "digits.int8.rknn-bundle",
                                                   trained_digits)
    assert "rebuilt from the bundle's ONNX" in again.results[0].runtime


@needs_toolkit
def test_rv1106_gets_the_full_integer_plan_and_fp16_is_refused(trained_digits, digit_folders, tmp_path):
    from target_checks import export_digits

    report = export_digits(trained_digits, digit_folders, "rknn-int8", tmp_path / "rv",
                           options=ExportOptions(rknn_platform="rv1106"), eval_size=60)
    result = report.result("rknn-int8")
    assert result.status == "passed", (result.reason, result.failures)
    assert result.metadata["full_integer"] and result.metadata["platform"] == "rv1106"
    assert "FLOAT16" not in result.metadata["placement"]["dtypes"], result.metadata["placement"]["dtypes"]
    assert result.emulation_parity["cosine"] > 0.99
    from mnv4_deploy.converters.rknn import RKNN_FP16

    with pytest.raises(UsageError, match="rv1106 has no float16 unit"):
        RKNN_FP16.check_options(ExportOptions(rknn_platform="rv1106"))


@needs_toolkit
def test_check_runs_the_toolkit_on_any_onnx_and_names_cpu_layers(digits_run, tmp_path):
    _, out = digits_run
    onnx_file = out / "digits.int8.rknn-bundle" / "digits.onnx"  # the plan's QDQ ONNX
    result = cli.invoke(app, ["check", str(onnx_file), "--target", "rknn-int8", "--platform", "rk3576",
                              "--output", "json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["platform"] == "rk3576" and facts["placement"]["layers"] > 40 and facts["fully_mapped"]
    on_3588 = cli.invoke(app, ["check", str(onnx_file), "--target", "rknn-int8"])  # the default platform
    assert on_3588.exit_code == 0 and "CPU: Reshape (FLOAT16)" in on_3588.stdout, on_3588.output  # as exported
    strict = cli.invoke(app, ["check", str(onnx_file), "--target", "rknn-int8", "--strict"])
    assert strict.exit_code == 3
    bad = cli.invoke(app, ["check", str(onnx_file), "--target", "rknn", "--platform", "rk9999"])
    assert bad.exit_code == 2 and "builds for rk3588, rk3576" in bad.stderr
    other = cli.invoke(app, ["check", str(onnx_file), "--target", "edgetpu", "--platform", "rk3588"])
    assert other.exit_code == 2 and "drop --platform" in other.stderr


@needs_toolkit
def test_a_board_is_reached_through_init_runtime_and_its_absence_is_one_line(digits_run, monkeypatch):
    """No board is connected here: the on-device path runs up to adb and says so in one line."""
    from mnv4_deploy.converters.rknn import DEVICE_ENV, RKNN_INT8
    from mnv4_deploy.errors import DeployError
    from mnv4_deploy.registry import Artifact

    _, out = digits_run
    monkeypatch.setenv(DEVICE_ENV, "no-such-board")
    with pytest.raises(DeployError) as caught:
        RKNN_INT8.runner(Artifact("rknn-int8", out / "digits.int8.rknn-bundle", "int8"))
    line = caught.value.one_line()
    assert "rknn-int8 (rknn-toolkit2 worker): open_runtime failed" in line and "\n" not in line
    assert "init_runtime(target='rk3588', device_id='no-such-board')" in line


def test_without_the_toolchain_the_targets_are_refused_naming_the_install(monkeypatch, tmp_path):
    from mnv4_deploy.pipeline import resolve_converters

    monkeypatch.setenv("MNV4_DEPLOY_TOOLCHAINS", str(tmp_path))
    monkeypatch.delenv("MNV4_DEPLOY_RKNN_PYTHON", raising=False)
    with pytest.raises(Exception) as caught:
        resolve_converters("rknn-int8", ExportOptions())
    assert caught.value.exit_code == 5
    assert "mnv4-deploy toolchain install rknn" in caught.value.one_line() and "--rknn-python" in caught.value.one_line()
    result = cli.invoke(app, ["export", "-m", "conv_small", "--to", "rknn", "--img-size", "32", "--out",
                              str(tmp_path / "out")])
    assert result.exit_code == 5 and "not installed" in result.stderr
    assert not (tmp_path / "out" / "conv_small.rknn-bundle").exists()


def test_the_layer_table_names_every_cpu_fallback():
    """The toolkit's table as it printed it for hybrid_medium in fp16: its attention runs as exSDPAttention
    on the NPU; the key/value head broadcast (Expand) falls back to the CPU."""
    from mnv4_deploy.converters.rknn.layers import placement, placement_table

    rows = (FIXTURES / "hybrid_medium_fp16_layers.txt").read_text().splitlines()
    facts = placement(rows)
    assert facts["by_op"]["exSDPAttention"] == {"NPU": 8}
    assert facts["by_op"]["Expand"] == {"CPU": 16} and len(facts["off_npu"]) == 16
    assert not facts["fully_on_npu"] and facts["layers"] == facts["on_npu"] + 16
    table = placement_table(facts, "hybrid_medium")
    assert table.splitlines()[1].startswith("  CPU: Expand (FLOAT16) Expand:/blocks/blocks.2/blocks.2.4/attn/")


def test_the_toolkit_config_undoes_the_contract_normalization():
    """mean_values/std_values in pixel units: the model's first step is the contract's normalization."""
    from mnv4_deploy.converters.rknn.run import to_pixels, toolkit_config
    from mnv4_deploy.preprocess import Preprocess

    contract = Preprocess(crop_size=(8, 8), resize_short=8)  # ImageNet mean and std
    config = toolkit_config(contract, "rk3588", True)
    assert config["optimization_level"] == 2 and toolkit_config(contract, "rk3588", False)["optimization_level"] == 3
    assert config["mean"] == [123.675, 116.28, 103.53] and config["std"] == [58.395, 57.12, 57.375]
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(to_pixels(contract.normalize(pixels), config["mean"], config["std"]), pixels,
                               atol=1e-3)


@needs_toolkit
def test_a_plan_with_the_x86_overflow_fix_is_kept_exactly(trained_digits, digit_folders, tmp_path):
    """A run with onnx-int8 or openvino-int8 gives the shared plan 7-bit weights in some channels (--overflow-fix
    auto). rknn-toolkit2 used to compute those channels with a scale 128/127 too large (cosine 0.971-0.997 against
    the emulation); spelled with weight zero point -1, the simulator follows the plan."""
    from target_checks import export_digits

    report = export_digits(trained_digits, digit_folders, "rknn-int8", tmp_path / "auto",
                           options=ExportOptions(overflow_fix="auto"), eval_size=60)
    overflow = report.quantization["plan"]["overflow"]
    assert overflow["mode"] == "auto" and overflow["seven_bit_channels"] > 1000, overflow["seven_bit_channels"]
    result = report.result("rknn-int8")
    assert result.status == "passed", (result.reason, result.failures)
    assert result.emulation_parity["cosine"] >= 0.999, result.emulation_parity
    spelling = result.metadata["onnx"]["toolkit_spelling"]
    assert spelling["weight_tensors_zero_point_minus_1"] >= 40 and spelling["weight_tensors_kept"] == 0, spelling


def _one_conv(tmp_path, weights, scales, weight_zero_point: int, input_zero_point: int):
    """A QDQ convolution (int8 in and out) with the given per-channel weights, as ONNX; (path, its arithmetic)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    s_in, s_out, zp_out = 0.05, 1.2, 5
    channels = weights.shape[0]
    tensors = {"s_in": np.float32(s_in), "zp_in": np.int8(input_zero_point), "s_out": np.float32(s_out),
               "zp_out": np.int8(zp_out), "wq": (weights + weight_zero_point).astype(np.int8),
               "ws": scales.astype(np.float32), "wzp": np.full(channels, weight_zero_point, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["input", "s_in", "zp_in"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_in", "zp_in"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], axis=0),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["y", "s_out", "zp_out"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s_out", "zp_out"], ["out"])]
    shape = [1, weights.shape[1], 12, 12]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, channels, 12, 12])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"conv_wzp{weight_zero_point}_izp{input_zero_point}.onnx"
    onnx.save(model, str(path))

    def integer_codes(x: np.ndarray) -> np.ndarray:
        """The convolution in exact integer arithmetic: output codes."""
        import torch

        codes = np.clip(np.round(x / s_in) + input_zero_point, -128, 127) - input_zero_point
        acc = torch.nn.functional.conv2d(torch.from_numpy(codes).double(), torch.from_numpy(weights).double(),
                                         padding=1).numpy()[0]
        return np.clip(np.round(acc * (s_in * scales.reshape(-1, 1, 1)) / s_out) + zp_out, -128, 127)

    return path, shape, s_out, zp_out, integer_codes


@needs_toolkit
def test_the_toolkit_re_rounds_a_zero_point_0_tensor_and_keeps_the_respelled_one(tmp_path):
    """The rule converters/rknn/spelling.py works around, measured on one convolution in the simulator: a tensor
    with zero point 0 (weights here, and the input) is re-rounded onto a grid 128/127 coarser, so the output
    leaves exact integer arithmetic (7-bit channels too); weights at zero point -1 and an input at another zero
    point reproduce it exactly."""
    from mnv4_deploy.converters.rknn.run import session_log
    from mnv4_deploy.converters.rknn.toolchain import open_session

    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (16, 8, 3, 3))
    peak = np.where(np.arange(16) % 2 == 1, 63, 127)  # odd channels as the overflow fix writes them
    scales = np.abs(w).reshape(16, -1).max(1) / peak
    weights = np.round(w / scales.reshape(-1, 1, 1, 1))
    x = rng.normal(0, 2, (3, 1, 8, 12, 12)).astype(np.float32)
    mismatch = {}
    with open_session("rknn-int8", session_log("rknn-int8")) as session:
        for weight_zp, input_zp in ((0, -10), (-1, 0), (-1, -10)):
            path, shape, s_out, zp_out, integer_codes = _one_conv(tmp_path, weights, scales, weight_zp, input_zp)
            session.call("build", {"onnx": str(path), "input_name": "input", "input_shape": shape, "mean": [0.0] * 8,
                                   "std": [1.0] * 8, "platform": "rk3588", "optimization_level": 2})
            session.call("open_runtime", {})
            codes = [np.round(session.call("infer", arrays={"x": image})[1]["logits"].reshape(16, 12, 12) / s_out)
                     + zp_out for image in x]
            mismatch[(weight_zp, input_zp)] = np.mean([np.mean(c != integer_codes(image)) for c, image in zip(codes, x)])
    assert mismatch[(0, -10)] > 0.05 and mismatch[(-1, 0)] > 0.05, mismatch  # weights, then the input, re-rounded
    assert mismatch[(-1, -10)] == 0.0, mismatch


def test_the_spelling_keeps_every_weight_value_and_moves_only_zero_point_0_scales(tmp_path):
    """Toolkit-free: the respelled ONNX holds the same dequantized weights; activation scales change only where
    the zero point is 0 (int8) or 128 (uint8), by 127/128."""
    import onnx
    import torch
    from onnx import numpy_helper

    from mnv4_deploy.converters.rknn.spelling import TOOLKIT_RESCALE, write_toolkit_onnx
    from mnv4_deploy.quant import build_plan
    from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    calib = np.random.default_rng(0).uniform(-1, 1, (8, 3, 8, 8)).astype(np.float32)
    calib[0, 0, 0, :2] = (-1.0, 1.0)  # a symmetric input range: zero point 128
    plan = build_plan(model, calib, log=lambda _: None, overflow_fix="all")
    plain, spelled = tmp_path / "plan.onnx", tmp_path / "rknn.onnx"
    export_qdq_onnx(plan, plain, torch.from_numpy(calib[:1]), weight_dtype="int8")
    facts = write_toolkit_onnx(plain, spelled)

    def read(path):
        """(dequantized int8 constants, their zero points, (scale, zero point) of every QuantizeLinear)."""
        m = onnx.load(str(path))
        values = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node
                       if n.op_type == "Constant"})
        weights, zero_points = [], []
        for n in m.graph.node:
            ints = values.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
            if ints is not None and ints.dtype == np.int8:
                shape = (-1,) + (1,) * (ints.ndim - 1)
                zero_points.append(values[n.input[2]])
                weights.append((ints.astype(np.int32) - zero_points[-1].reshape(shape)) * values[n.input[1]].reshape(shape))
        quant = [(values[n.input[1]], values[n.input[2]]) for n in m.graph.node if n.op_type == "QuantizeLinear"]
        return weights, quant, zero_points

    weights, quant, _ = read(plain)
    weights2, quant2, zero_points2 = read(spelled)
    assert len(weights) == len(weights2) == 2 and facts["weight_tensors_zero_point_minus_1"] == 2
    for a, b in zip(weights, weights2):
        np.testing.assert_array_equal(a, b)
    assert all((z == -1).all() for z in zero_points2)
    moved = [(s, s2) for (s, z), (s2, _) in zip(quant, quant2) if s != s2]
    assert len(moved) == facts["activation_scales_times_127_128"] >= 1
    assert all(int(z) in (0, 128) for (s, z), (s2, _) in zip(quant, quant2) if s != s2)
    for s, s2 in moved:
        assert abs(float(s2) * TOOLKIT_RESCALE / float(s) - 1) < 1e-6


def _affine_beside_a_residual(tmp_path):
    """QDQ ONNX of the pattern in an MNv4 hybrid block whose pre-norm stays an affine (scale, shift): one
    DequantizeLinear read by the affine (Mul, Add; the toolkit folds it into an int8 BatchNormalization) and by
    the residual Add. Built by hand (int8 activations at non-zero zero points, int8 1x1 conv)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    channels = 8
    tensors = {"s_in": np.float32(0.05), "zp_in": np.int8(3), "s_n": np.float32(0.04), "zp_n": np.int8(-2),
               "s_c": np.float32(0.06), "zp_c": np.int8(1), "s_o": np.float32(0.08), "zp_o": np.int8(4),
               "scale": rng.uniform(0.5, 1.5, (1, channels, 1, 1)).astype(np.float32),
               "shift": rng.uniform(-0.3, 0.3, (1, channels, 1, 1)).astype(np.float32),
               "wq": rng.integers(-127, 128, (channels, channels, 1, 1)).astype(np.int8),
               "ws": np.full(channels, 0.01, np.float32), "wzp": np.zeros(channels, np.int8)}

    def qdq(x: str, s: str, z: str, y: str) -> list:
        return [helper.make_node("QuantizeLinear", [x, s, z], [y + "_q"]),
                helper.make_node("DequantizeLinear", [y + "_q", s, z], [y])]

    nodes = [*qdq("input", "s_in", "zp_in", "x"),
             helper.make_node("Mul", ["x", "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "shift"], ["norm"]),
             *qdq("norm", "s_n", "zp_n", "normed"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], axis=0),
             helper.make_node("Conv", ["normed", "w"], ["conv"]), *qdq("conv", "s_c", "zp_c", "branch"),
             helper.make_node("Add", ["branch", "x"], ["sum"]), *qdq("sum", "s_o", "zp_o", "out")]
    shape = [1, channels, 6, 6]
    graph = helper.make_graph(nodes, "affine_residual", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "affine_residual.onnx"
    onnx.save(model, str(path))
    return path, shape, float(tensors["s_o"])


@needs_toolkit
def test_a_dequantize_shared_by_an_affine_and_a_residual_gets_one_copy_per_reader(tmp_path):
    """The cause of the compiler's segfault on MNv4 hybrid int8 (converters/rknn/readers.py): as written, the
    toolkit folds the affine into a BatchNormalization, drops the DequantizeLinear the residual Add reads too,
    and segfaults; spelled with one DequantizeLinear per reader it builds, and the simulator follows
    onnxruntime on the plan's graph (the int8 BatchNormalization's fixed-point rounding: 1 LSB on <1% of codes)."""
    import onnxruntime as ort

    from mnv4_deploy.converters.rknn.run import session_log
    from mnv4_deploy.converters.rknn.spelling import write_toolkit_onnx
    from mnv4_deploy.converters.rknn.toolchain import open_session
    from mnv4_deploy.errors import DeployError

    plain, shape, s_out = _affine_beside_a_residual(tmp_path)
    spelled = tmp_path / "spelled.onnx"
    assert write_toolkit_onnx(plain, spelled)["dequantize_copies_one_per_reader"] == 1
    x = np.random.default_rng(1).normal(0, 2, (6, *shape[1:])).astype(np.float32)
    session = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"input": image[None]})[0] for image in x])
    args = {"input_name": "input", "input_shape": shape, "mean": [0.0] * shape[1], "std": [1.0] * shape[1],
            "platform": "rk3588", "optimization_level": 2}
    with open_session("rknn-int8", session_log("rknn-int8")) as worker:
        with pytest.raises(DeployError, match="SIGSEGV"):
            worker.call("build", {"onnx": str(plain), **args})
    with open_session("rknn-int8", session_log("rknn-int8")) as worker:
        worker.call("build", {"onnx": str(spelled), **args})
        worker.call("open_runtime", {})
        out = worker.call("infer", arrays={"x": x})[1]["logits"].reshape(expected.shape)
    steps = np.round((out - expected) / s_out)
    assert np.abs(steps).max() <= 1 and np.mean(steps != 0) < 0.01, (np.abs(steps).max(), np.mean(steps != 0))


@needs_toolkit
def test_a_user_attention_with_token_linears_and_learned_tokens_builds_and_follows_the_plan(tmp_path):
    """The spelling zoo's first bridge (tests/attention_zoo.py) through rknn-int8: its Linears on (B, T, C) tokens
    run as 2-D Gemms (as exported, the toolkit's build fails: no int8 weight behind the fused bias) and its learned
    tokens get an int8 grid (as a float16 island the compiler crashes); the simulator then follows the plan's
    emulation (the slow zoo covers every spelling, converters/rknn/linears.py, constant_operands.py)."""
    from test_attention_spellings import _prepare
    from test_family_matrix import Matrix, check_passed

    result = Matrix(tmp_path, prepare=_prepare).result("at-transposed@alone", "rknn-int8")
    check_passed(result, "rknn-int8")
    assert result.emulation_parity["cosine"] > 0.9999, result.emulation_parity
    spelling = result.metadata["onnx"]["toolkit_spelling"]
    assert spelling["linears_as_gemm"] == 3 and spelling["constant_operands_on_int8_grid"] == 1, spelling
    assert 0 < spelling["constant_operands_largest_move"] <= 1 / 127 / 2 + 1e-6  # half a step of the tokens' grid
