"""`coreml-int8` (W8A8): the run's int8 plan written into an ML Program, judged on Linux.

The NumPy ML Program executor runs the saved package; each artifact is judged against the
float model (`parity.int8`) and against the plan's fake-quant model (`parity.emulation`).
With fp32 compute the program must be the plan itself (to float rounding); the target's fp16
compute (what the Neural Engine runs) is held to the emulation bound.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from mnv4_deploy.converters.coreml_mil import import_coremltools

import_coremltools()  # the one safe import: hides TensorFlow (TF before triton segfaults)
ct = pytest.importorskip("coremltools")

from mnv4_deploy.converters.coreml import COREML_INT8, NOTES_KEY, describe_mlpackage  # noqa: E402
from mnv4_deploy.converters.coreml import compute_units  # noqa: E402
from mnv4_deploy.converters.coreml.w8a8 import convert_plan, verify_plan_weights  # noqa: E402
from mnv4_deploy.converters.coreml_mil import OP_TABLE, MilExecutor  # noqa: E402
from mnv4_deploy import export  # noqa: E402
from mnv4_deploy.errors import DeployError, UsageError  # noqa: E402
from mnv4_deploy.recipes import load_recipe  # noqa: E402
from mnv4_deploy.registry import Artifact, ConvertJob, ExportOptions, NotRunnable  # noqa: E402
from mnv4_deploy.validate import compare  # noqa: E402

from conftest import SMALL, make_images  # noqa: E402

QUIET = dict(log=lambda _: None)
INT8_BOUND = 1.0  # points of top-1, the same bound as onnx-int8 (tests/test_int8_pipeline.py)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib") / "images"
    make_images(folder, 8, size=(96, 80))
    return folder


def _export_int8(name, calib_dir, out, **options):
    return export(name, "coreml-int8", out, img_size=SMALL, golden_count=3, calib_data=calib_dir, calib_size=8,
                  options=ExportOptions(**options), **QUIET)


@pytest.fixture(scope="module")
def exported(calib_dir, tmp_path_factory):
    """One coreml-int8 export per model, shared by this module's tests."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            cache[name] = (_export_int8(name, calib_dir, out), out)
        return cache[name]

    return get


def _check_w8a8_package(result, path, report) -> None:
    """What every coreml-int8 artifact must carry: the plan's weights and grids, iOS17, notes."""
    meta = result.metadata
    assert meta["plan_weights_exact"] is True and meta["quantized_layers"] > 20
    assert meta["weight_ops"] == {"constexpr_affine_dequantize": meta["quantized_layers"]}  # iOS17: affine
    # one quantize per plan point; coremltools drops a dequantize->quantize pair on the same grid
    # (conv nets: at most 2; hybrids: also around the shape-only reshape/transpose of attention,
    # measured 249 of 282 on hybrid_medium). Parity against the plan is what proves the grids.
    points = meta["activation_quantization"]["plan_points"]
    slack = 2 if "softmax" not in result.metadata.get("op_histogram", {}) else points // 6
    assert points - slack <= meta["quantize_ops"] <= points
    assert 0 < meta["weight_scale_max_rel_rounding"] <= 2.0 ** -11  # fp16 scales: the only change
    assert meta["spec_version"] == 8 and meta["min_target"] == "iOS17" and meta["compute_precision"] == "fp16"
    assert report.quantization["plan"]["counts"]["layers"] == meta["quantized_layers"]
    described = describe_mlpackage(path)
    assert described["op_histogram"]["quantize"] == meta["quantize_ops"]
    notes = described["metadata"][NOTES_KEY]
    assert any(n.startswith("W8A8") for n in notes) and notes == meta["neural_engine_notes"]
    if sys.platform != "darwin":
        assert meta["compute_units"] == {"available": False, "reason": compute_units.UNAVAILABLE_OFF_MAC}


@pytest.mark.parametrize("name", ["conv_small", pytest.param("hybrid_medium", marks=pytest.mark.slow)])
def test_w8a8_converts_and_passes_parity_against_float_and_its_plan(name, exported, record_property):
    report, out = exported(name)
    result = report.result("coreml-int8")
    record_property("parity", {"float": result.parity, "emulation": result.emulation_parity})
    assert result.status == "passed", (result.failures, result.reason)
    assert result.runtime.startswith("coremltools") if sys.platform == "darwin" else "numpy executor" in result.runtime
    # fp16 compute re-rounds near-tie quantize inputs, so the plan is judged by `parity.emulation_fp16`
    recipe = load_recipe("default")
    assert result.emulation_thresholds == recipe.thresholds("emulation_fp16").to_dict()
    assert result.thresholds == recipe.thresholds("int8").to_dict()
    assert result.emulation_parity["cosine"] >= result.emulation_thresholds["min_cosine"]
    path = out / result.artifact
    _check_w8a8_package(result, path, report)
    if name.startswith("hybrid"):  # attention stays in the program, and the note says what that means
        assert {"matmul", "softmax"} <= set(result.metadata["op_histogram"])
        assert any(n.startswith("attention") for n in result.metadata["neural_engine_notes"])


def test_the_package_holds_only_core_ml_files(exported):
    """No executorch_debug_handle_mapping.json (coremltools 9 saves one for torch.export programs)."""
    report, out = exported("conv_small")
    package = out / report.result("coreml-int8").artifact
    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file())
    assert files == ["Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin",
                     "Manifest.json"]


def test_image_input_keeps_the_plan_weights_exact(calib_dir, tmp_path):
    """ImageNet std differs per channel: the remainder is a multiply in front, not folded into
    the first conv, so its integer weights stay the plan's."""
    report = _export_int8("conv_small", calib_dir, tmp_path, image_input=True)
    result = report.result("coreml-int8")
    assert result.status == "passed", (result.failures, result.reason)
    assert result.metadata["plan_weights_exact"] is True
    described = describe_mlpackage(tmp_path / result.artifact)
    assert described["inputs"][0]["type"] == "image RGB"
    assert result.emulation_parity["cosine"] >= result.emulation_thresholds["min_cosine"]


def test_executor_names_a_w8a8_op_it_does_not_know(exported, monkeypatch):
    report, out = exported("conv_small")
    path = out / report.result("coreml-int8").artifact
    monkeypatch.delitem(OP_TABLE, "quantize")
    monkeypatch.setattr(sys, "platform", "linux")
    runner = COREML_INT8.runner(Artifact("coreml-int8", path, "int8"))
    assert isinstance(runner, NotRunnable) and "unsupported MIL op 'quantize'" in runner.reason


@pytest.mark.slow
def test_fp32_program_is_the_plan(digits_plans, tmp_path):
    """With fp32 compute the program is the plan's fake-quant model: the converter adds nothing.

    Not bit-exact: the executor sums a convolution in another order than PyTorch, and a value
    that lands on the other side of a rounding boundary moves one step of its grid (50 dB
    measured here, against about 22 dB for the fp16 program).
    """
    import torch

    net, plan = digits_plans.net, digits_plans.plan()
    fake_quant = digits_plans.quant_logits(plan, net.x_heldout[:8])
    example = torch.from_numpy(net.x_calib[:1]).contiguous()
    mlmodel, facts = convert_plan(plan, example, net.contract, min_target="iOS18", image_input=False, fp16=False)
    path = tmp_path / "digits.mlpackage"
    mlmodel.save(str(path))
    weights = verify_plan_weights(path, plan)
    assert weights["weight_ops"] == {"constexpr_blockwise_shift_scale": len(plan.weight_scales)}  # iOS18 form
    assert weights["weight_scale_max_rel_rounding"] == 0.0  # fp32 scales: bit-exact
    executor = MilExecutor.from_mlpackage(path)
    got = np.concatenate([executor.run({"input": x[None]})["logits"] for x in net.x_heldout[:8]])
    metrics = compare(fake_quant, got)
    assert metrics.sqnr_db > 40.0 and metrics.top1_agreement == 1.0, metrics
    assert facts["activation_quantization"]["dtypes"] == ["uint8"]


def test_w8a8_meets_the_int8_accuracy_bound_on_the_trained_net(trained_digits, digit_folders, tmp_path,
                                                                record_property):
    calib, heldout = digit_folders
    report = export(trained_digits.model, "onnx-int8,coreml-int8", tmp_path, contract=trained_digits.contract,
                    name="digits", calib_data=calib, eval_data=heldout, eval_size=300, **QUIET)
    onnx, coreml = report.result("onnx-int8"), report.result("coreml-int8")
    record_property("digits", {t.target: {"parity": t.parity, "emulation": t.emulation_parity, "accuracy": t.accuracy}
                               for t in (onnx, coreml)})
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    assert coreml.accuracy["drop_top1"] <= INT8_BOUND
    assert abs(coreml.accuracy["drop_top1"] - onnx.accuracy["drop_top1"]) <= INT8_BOUND  # one plan, two formats
    assert coreml.parity["cosine"] > 0.98 and coreml.emulation_parity["cosine"] > 0.99
    assert coreml.metadata["plan_weights_exact"] is True


@pytest.mark.parametrize("min_target, message", [
    ("iOS16", "coreml-int8: --min-target iOS16 is too old for int8 activations (W8A8: quantize/dequantize ops "
              "on activations), which needs iOS17/macOS14/watchOS10/tvOS17 or newer"),
    ("macOS13", "pass --min-target iOS17 or newer"),
    ("iOS15", "too old for per-channel int8 weights"),
])
def test_too_old_a_deployment_target_is_refused_naming_the_feature(min_target, message, calib_dir, tmp_path):
    with pytest.raises(UsageError) as err:
        _export_int8("conv_small", calib_dir, tmp_path / "out", min_target=min_target)
    assert message in str(err.value) + " " + str(err.value.hint) and err.value.exit_code == 2
    assert not (tmp_path / "out").exists()
    COREML_INT8.check_options(ExportOptions(min_target="iOS17"))  # the minimum itself is fine


def test_missing_calibration_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="coreml-int8 needs calibration images") as err:
        export("conv_small", "coreml-int8", tmp_path, img_size=SMALL, **QUIET)
    assert "--calib-data" in str(err.value.hint)
    job = ConvertJob(model=None, contract=None, example=None, workdir=tmp_path, stem="m", options=ExportOptions(),
                     recipe=None, plan=None)
    with pytest.raises(UsageError, match="needs calibration images") as err:  # the converter alone, no pipeline
        COREML_INT8.convert(job)
    assert "--calib-data" in str(err.value.hint)


def test_lost_plan_weights_are_an_export_error(exported):
    """A program that does not hold the plan's integers is refused, naming the layer."""
    from types import SimpleNamespace

    report, out = exported("conv_small")
    path = out / report.result("coreml-int8").artifact
    ints = np.ones((8, 3, 3, 3), np.int8)  # no layer of the program holds these
    other_plan = SimpleNamespace(weight_scales={"conv_stem": np.ones(8, np.float32)}, weight_ints=lambda _: ints)
    with pytest.raises(DeployError, match=r"lost the plan's integer weights of 1 layer\(s\) \(conv_stem\)"):
        verify_plan_weights(path, other_plan)


# ---------------------------------------------------------------- compute units
class MLCPUComputeDevice:
    pass


class MLNeuralEngineComputeDevice:
    pass


def test_compute_plan_is_summarized_per_op_family():
    """The macOS branch's aggregation, on stand-ins for coremltools' MLComputePlan objects."""
    from types import SimpleNamespace as NS

    ops = [NS(operator_name=name) for name in ("ios17.conv", "ios17.conv", "ios17.quantize", "ios17.softmax", "const")]
    devices = {"ios17.conv": MLNeuralEngineComputeDevice(), "ios17.quantize": MLNeuralEngineComputeDevice(),
               "ios17.softmax": MLCPUComputeDevice()}
    costs = {"ios17.conv": 0.4, "ios17.quantize": 0.05, "ios17.softmax": 0.15}

    class Plan:
        model_structure = NS(program=NS(functions={"main": NS(block=NS(operations=ops))}))

        def get_compute_device_usage_for_mlprogram_operation(self, op):
            return NS(preferred_compute_device=devices[op.operator_name])

        def get_estimated_cost_for_mlprogram_operation(self, op):
            return NS(weight=costs[op.operator_name])

    summary = compute_units.compute_plan_summary(Plan())
    assert summary["per_op_family"] == {
        "conv": {"ops": 2, "preferred": {"NeuralEngine": 2}, "cost_share": 0.8},
        "quantize": {"ops": 1, "preferred": {"NeuralEngine": 1}, "cost_share": 0.05},
        "softmax": {"ops": 1, "preferred": {"CPU": 1}, "cost_share": 0.15}}
    assert summary["cost_share_by_device"] == {"CPU": 0.15, "NeuralEngine": 0.85}


def test_neural_engine_notes_follow_the_op_families():
    assert compute_units.neural_engine_notes({"conv": 3, "relu": 3}) == []
    notes = compute_units.neural_engine_notes({"matmul": 2, "softmax": 1, "gelu": 1, "quantize": 4})
    assert [n.split(":")[0].split(" ")[0] for n in notes] == ["attention", "GELU", "W8A8"]
    assert json.loads(json.dumps(notes)) == notes
