"""Int8 that does not saturate on x86 CPUs without VNNI (quant/overflow.py, quant/pair_sums.py).

The saturation is caught on every host: `pair_sums.SaturatingModel` computes what an AVX2-only
CPU's u8 x s8 kernels compute (int16 pair sums), and OpenVINO's CPU plugin can be capped to those
kernels on a VNNI host (`ONEDNN_MAX_CPU_ISA=AVX2`); a test checks that the two agree.
"""
from __future__ import annotations

import importlib.util
import platform

import numpy as np
import pytest
import torch

from mnv4_deploy.quant.modules import is_depthwise
from mnv4_deploy.quant.overflow import calibrated_codes, channels_at_risk, channels_to_fix, pair_sum_extremes
from mnv4_deploy.quant.pair_sums import SaturatingModel, gemm_layers

from target_checks import export_digits

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest: small tensors, shared VM

X86 = platform.machine().lower() in ("x86_64", "amd64")
OPENVINO = all(importlib.util.find_spec(m) is not None for m in ("openvino", "onnx", "onnxsim"))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_pair_sums_are_bounded_over_the_neighbours_a_kernel_pairs():
    w = torch.tensor([[127, 2, -1, 0],       # 255 * (127 + 2) = 32,895: leaves int16
                      [127, 1, 1, -128],     # 255 * 128 = 32,640 above; 255 * -128 = -32,640 below: fits
                      [-100, -40, 90, 0],    # 255 * -140 = -35,700: leaves int16 below
                      [63, 63, -63, -63],    # 7-bit: 255 * 126 = 32,130, fits whatever the pairing
                      [127, 0, 0, 127]],     # the two large weights are not neighbours: fits
                     dtype=torch.int8)
    high, low = pair_sum_extremes(w, 255)
    assert high.tolist() == [32895, 32640, 22950, 32130, 32385]
    assert low.tolist() == [-255, -32640, -35700, -32130, 0]
    assert channels_at_risk(w, 255).tolist() == [True, False, True, False, False]
    assert not channels_at_risk(w, 127).any()  # 7-bit activation codes cannot saturate either
    # per-channel codes: with input channel 1 never above code 10, channels 0 and 2 cannot clip either
    assert channels_at_risk(w, torch.tensor([255, 10, 255, 255])).tolist() == [False] * 5
    # auto widens calibrated maxima by CODE_MARGIN: 200 -> 250; 127*250 + 2*255 fits, -100*250 - 40*255 does not
    assert channels_to_fix("auto", w, torch.tensor([200, 255, 255, 255]), 255).tolist() == [False, False, True,
                                                                                             False, False]
    assert channels_to_fix("all", w, None, 255).all() and not channels_to_fix("off", w, None, 255).any()


def test_a_conv_is_checked_in_the_reduction_orders_the_kernels_use():
    """Channels side by side at one tap; with an odd channel count also across taps (onnxruntime's flat NHWC)."""
    w = torch.zeros(1, 3, 1, 2, dtype=torch.int8)
    w[0, 2, 0, 0] = 127  # channel 2, tap 0 ...
    w[0, 0, 0, 1] = 127  # ... and channel 0, tap 1: neighbours only in the flat (tap, channel) order
    assert channels_at_risk(w, 255).tolist() == [True]
    w = torch.zeros(1, 2, 1, 2, dtype=torch.int8)
    w[0, 0, 0, 0] = w[0, 0, 0, 1] = 127  # one channel's two taps: never neighbours channels-last
    assert channels_at_risk(w, 255).tolist() == [False]


def test_auto_gives_seven_bits_to_the_channels_that_could_saturate_on_calibrated_inputs(digits_plans):
    off, auto, every = (digits_plans.plan(overflow_fix=mode) for mode in ("off", "auto", "all"))
    assert off.saturating_layers and not auto.saturating_layers and not every.saturating_layers
    fixed = 0
    for name in off.layers:
        layer = auto.fake_quant_model().get_submodule(name)
        narrowed = (layer.weight_bits == 7).numpy()
        if is_depthwise(layer) or layer.input_qparams is None:  # direct kernels: left alone
            assert not narrowed.any() and np.array_equal(off.weight_ints(name), auto.weight_ints(name)), name
            continue
        grid = layer.input_qparams
        maxima = torch.from_numpy(auto.input_code_maxima(name))
        assert maxima.shape == (layer.weight_int.shape[1],) and 0 < int(maxima.max()) <= grid.qmax - grid.qmin
        at_risk = channels_at_risk(torch.from_numpy(off.weight_ints(name)), calibrated_codes(maxima, 255)).numpy()
        assert np.array_equal(narrowed, at_risk), name
        assert np.abs(auto.weight_ints(name)[narrowed]).max(initial=0) <= 63, name
        # channels not at risk keep the 8-bit grid of `off`
        assert np.array_equal(auto.weight_scales[name][~narrowed], off.weight_scales[name][~narrowed]), name
        fixed += int(narrowed.sum())
    report = auto.overflow
    assert 0 < fixed == report["seven_bit_channels"] < every.overflow["seven_bit_channels"] == report["channels"]
    assert report["mode"] == "auto" and "calibrated ranges" in report["verdict"]
    assert "for any input" in every.overflow["verdict"] and not every.overflow["layers_at_risk_any_input"]
    assert off.sha256 != auto.sha256 != every.sha256


def test_the_saturating_kernel_model_catches_saturation_and_the_fix_removes_it(digits_plans):
    """What an AVX2-only CPU computes, on any host: many clipped pair sums without the fix, none with it."""
    x = digits_plans.net.x_heldout[:64]
    off, auto = digits_plans.plan(overflow_fix="off"), digits_plans.plan(overflow_fix="auto")
    saturating = SaturatingModel(off)
    clipped = saturating(x)
    assert sum(saturating.counts.values()) > 100, saturating.counts
    assert set(saturating.counts) <= {m.unit for m in gemm_layers(off.fake_quant_model())}
    off_cosine = _cosine(clipped, off.emulation()(x))
    assert off_cosine.min() < 0.99, off_cosine.min()  # the plan's own emulation misses it entirely

    fixed = SaturatingModel(auto)
    one_by_one = np.concatenate([auto.emulation()(x[i:i + 1]) for i in range(len(x))])  # as the model runs
    np.testing.assert_array_equal(fixed(x), one_by_one)  # nothing clips, so nothing is subtracted: same path
    assert sum(fixed.counts.values()) == 0


@pytest.fixture(scope="module")
def digits_without_fix(trained_digits, digit_folders, tmp_path_factory):
    """openvino-int8 and onnx-int8 of the digits net with --overflow-fix off (8-bit weights everywhere)."""
    from mnv4_deploy.registry import ExportOptions

    out = tmp_path_factory.mktemp("digits-no-fix") / "out"
    report = export_digits(trained_digits, digit_folders, "openvino-int8,onnx-int8", out,
                           options=ExportOptions(overflow_fix="off"))
    return report, out


@pytest.mark.skipif(not (X86 and OPENVINO), reason="needs an x86 CPU and mnv4-deploy[openvino]")
def test_openvino_capped_to_avx2_computes_what_the_saturating_model_says(digits_plans, tmp_path):
    """The torch model of the pair sums against a real runtime's no-VNNI kernels, on any x86 host."""
    from mnv4_deploy.converters.openvino.ir import capped_ir_runner, onnx_to_ir
    from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx

    plan = digits_plans.plan(overflow_fix="off")
    x = digits_plans.net.x_heldout[:16]
    onnx_path = export_qdq_onnx(plan, tmp_path / "digits.int8.onnx", torch.from_numpy(x[:1]), weight_dtype="int8")
    onnx_to_ir(onnx_path, tmp_path / "ir", "digits", {}, fp16_weights=False, input_shape=[1, *x.shape[1:]])
    capped = capped_ir_runner(tmp_path / "ir").run(x)
    predicted = _cosine(capped, SaturatingModel(plan)(x))
    # as close as OpenVINO's own rounding lets it be (its VNNI kernels against the emulation: 0.9990-0.9999)
    assert predicted.min() > 0.998 and predicted.mean() > 0.9995, predicted
    assert _cosine(capped, plan.emulation()(x)).min() < 0.99  # it does saturate, and the model says how


@pytest.mark.skipif(not (X86 and OPENVINO), reason="needs an x86 CPU and mnv4-deploy[openvino]")
def test_without_the_fix_the_report_says_it_may_saturate_and_a_no_vnni_runtime_shows_it(digits_without_fix):
    """Host-independent: on a VNNI host the AVX2-capped cross-check leaves the plan; on an AVX2 host (or
    under ONEDNN_MAX_CPU_ISA=AVX2, which OpenVINO honours and onnxruntime does not) the judged OpenVINO
    runtime itself does. Either way the report names the risk."""
    from mnv4_deploy.converters.openvino.ir import can_cap_to_no_vnni
    from mnv4_deploy.host import has_vnni

    report, _ = digits_without_fix
    for target in ("openvino-int8", "onnx-int8"):
        result = report.result(target)
        assert result.metadata["overflow_fix"] == "off" and "may saturate" in result.metadata["x86_without_vnni"]
        assert any("may saturate on x86 CPUs without VNNI" in note for note in result.metadata["notes"])
    openvino = report.result("openvino-int8")
    if can_cap_to_no_vnni():
        capped = next(c for c in openvino.metadata["cross_checks"] if "capped at AVX2" in c["runtime"])
        assert capped["vs_emulation"]["cosine"] < 0.99 and capped["vs_emulation_failures"], capped
        assert any(note.startswith("cross-check off the plan") for note in openvino.metadata["notes"])
    else:
        assert openvino.emulation_parity["cosine"] < 0.99
    # onnxruntime dispatches on CPUID alone: uint8 weights (exact u8 x u8 kernels) only on a CPU without VNNI
    assert report.result("onnx-int8").metadata["weight_dtype"] == ("int8" if has_vnni() else "uint8")


def test_overflow_fix_is_refused_where_no_plan_is_made_and_checked_for_its_values():
    from typer.testing import CliRunner

    from mnv4_deploy.cli import export_app

    cli = CliRunner()
    unused = cli.invoke(export_app, ["--model", "conv_small", "--to", "onnx", "--overflow-fix", "off"])
    assert unused.exit_code == 2 and "--overflow-fix is not used by target(s) onnx" in unused.stderr
    wrong = cli.invoke(export_app, ["--model", "conv_small", "--to", "onnx-int8", "--overflow-fix", "sometimes"])
    assert wrong.exit_code == 2 and "sometimes" in wrong.stderr


def test_the_fix_is_on_by_default_only_for_targets_running_x86_int8_kernels():
    from types import SimpleNamespace

    from mnv4_deploy.quantize import overflow_fix_mode

    def target(x86: bool, plan: bool = True):
        return SimpleNamespace(info=SimpleNamespace(x86_int8_kernels=x86, needs_calibration=plan, shared_plan=plan))

    assert overflow_fix_mode(None, [target(False), target(True)]) == "auto"
    assert overflow_fix_mode(None, [target(False)]) == "off"
    assert overflow_fix_mode("all", [target(False)]) == "all" and overflow_fix_mode("off", [target(True)]) == "off"


def test_the_report_states_the_plans_x86_verdict_only_where_it_applies(digits_without_fix):
    """A run with an x86 int8 target says whether its plan can saturate there; a run without one is quiet."""
    import copy

    report, _ = digits_without_fix
    lines = [line for line in report.summary_lines() if line.startswith("int8 plan, overflow fix off")]
    assert len(lines) == 1 and "layers may saturate int16 pair sums on x86 CPUs without VNNI" in lines[0]
    assert "judged on:" in report.to_markdown() and report.to_dict()["host"]["int8_class"]
    other = copy.deepcopy(report)  # the same plan judged only by targets that widen before multiplying
    for result in other.results:
        result.metadata.pop("x86_without_vnni", None)
    assert not [line for line in other.summary_lines() if line.startswith("int8 plan")]
