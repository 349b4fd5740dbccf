"""ExecuTorch targets: `executorch` (fp32) and `executorch-int8`, XNNPACK-delegated, run in executorch.runtime.

The int8 target expresses the run's one plan: judged against the canonical model (parity.int8),
against the plan's fake-quant emulation (parity.emulation) and, on the trained digits network,
against the same accuracy bound as `onnx-int8`. Every report carries the delegation table.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mnv4_deploy.cli import app
from mnv4_deploy.errors import DeployError, UsageError

from rounding_ties import assert_codes_equal_but_ties, assert_same_model_but_ties, point_inputs
from target_checks import check_digits_fp32_and_int8, check_missing_backend_names_the_extra, \
    check_rejudged_and_other_model_refused, digits_run_fixture, inspect_digits_artifact

pytestmark = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                reason="needs mnv4-deploy[executorch] (pip install 'mnv4-deploy[executorch]')")

cli = CliRunner()


# executorch and executorch-int8 of the trained digits net in one run (one plan, 594 held-out images).
digits_run = digits_run_fixture("executorch,executorch-int8")


def test_fp32_and_int8_pass_and_int8_keeps_the_onnx_int8_accuracy_bound(digits_run):
    report, out = digits_run
    fp32, int8 = check_digits_fp32_and_int8(report, "executorch", "executorch-int8")
    # XNNPACK's int8 kernels compute what the plan's fake-quant model computes
    assert int8.emulation_parity["cosine"] > 0.999 and int8.emulation_parity["sqnr_db"] > 30, int8.emulation_parity
    assert int8.size_bytes < 0.4 * fp32.size_bytes  # int8 weights
    assert "executorch" in int8.runtime and "XNNPACK" in int8.runtime


def test_every_compute_op_is_delegated_to_xnnpack(digits_run):
    report, _ = digits_run
    for name in ("executorch", "executorch-int8"):
        delegation = report.result(name).metadata["delegation"]
        assert delegation["delegated_subgraphs"] == 1 and delegation["portable_compute_ops"] == 0, delegation
        assert delegation["ops"]["aten_convolution_default"]["delegated"] >= 40
        assert {p["op"] for p in delegation["portable"]} <= {"getitem"}
    int8_ops = report.result("executorch-int8").metadata["delegation"]["ops"]
    assert int8_ops["quantized_decomposed_quantize_per_tensor_default"]["portable"] == 0
    assert int8_ops["quantized_decomposed_dequantize_per_channel_default"]["delegated"] >= 40  # int8 weights


def test_the_program_carries_contract_classes_and_plan_hash(digits_run, trained_digits):
    report, out = digits_run
    meta = inspect_digits_artifact(out / "digits.int8.pte", "executorch-int8", "executorch")
    assert meta["preprocess"]["mean"] == list(trained_digits.contract.mean)
    plan = report.result("executorch-int8").metadata["embedded"]["int8_plan_sha256"]
    assert meta["int8_plan_sha256"] == plan and len(plan) == 64
    assert "int8_plan_sha256" not in json.loads(cli.invoke(app, ["inspect", str(out / "digits.pte")]).stdout)["metadata"]


def test_validate_rejudges_the_program_and_names_another_model(digits_run, trained_digits):
    _, out = digits_run
    again = check_rejudged_and_other_model_refused(out / "digits.pte", "executorch", out / "digits.int8.pte",
                                                   trained_digits)
    assert again.results[0].parity["sqnr_db"] > 60


def test_corrupt_programs_are_refused_in_one_line(tmp_path):
    from mnv4_deploy.converters.executorch.lower import export_program

    model, x = _WithCumsum.build()
    whole = tmp_path / "whole.pte"
    export_program(model, x, whole, {"model": "m"})
    truncated = tmp_path / "cut.pte"
    truncated.write_bytes(whole.read_bytes()[:200])
    garbage = tmp_path / "garbage.int8.pte"
    garbage.write_bytes(b"this is not a flatbuffer" * 20)
    for path, message in ((truncated, "not a readable ExecuTorch program"), (garbage, "not an ExecuTorch program")):
        result = cli.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_missing_backend_names_the_extra(monkeypatch):
    from mnv4_deploy.converters.executorch import EXECUTORCH_INT8

    check_missing_backend_names_the_extra(monkeypatch, EXECUTORCH_INT8, "executorch", "executorch")


class _WithCumsum:
    """A conv net ending in cumsum, which XNNPACK has no kernel for."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)

            def forward(self, x):
                return torch.cumsum(torch.relu(self.conv(x)).mean((2, 3)), dim=1)

        torch.manual_seed(0)
        return Net().eval(), torch.randn(1, 3, 8, 8)


def test_a_portable_op_is_reported_and_refused_for_int8(tmp_path):
    from mnv4_deploy.converters.executorch import refuse_portable_compute
    from mnv4_deploy.converters.executorch.lower import export_program
    from mnv4_deploy.converters.executorch.runtime import pte_runner

    model, x = _WithCumsum.build()
    facts = export_program(model, x, tmp_path / "cumsum.pte", {"model": "cumsum"})
    delegation = facts["delegation"]
    portable = {p["op"]: p["reason"] for p in delegation["portable"] if p["op"] != "getitem"}
    assert "aten.cumsum" in portable and all(portable.values()), portable
    assert delegation["portable_compute_ops"] == len(portable)
    assert delegation["ops"]["aten_convolution_default"] == {"delegated": 1, "portable": 0}
    import torch

    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(pte_runner(tmp_path / "cumsum.pte").run(x.numpy()), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(DeployError, match=r"XNNPACK did not take \d op\(s\) of the int8 plan \(.*aten.cumsum"):
        refuse_portable_compute(delegation, "executorch-int8")


class _HardSigmoidExcite:
    """MobileNet-V3's squeeze-excite: mean -> 1x1 conv -> hard-sigmoid gate -> broadcast multiply."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1)
                self.reduce = nn.Conv2d(8, 4, 1)
                self.expand = nn.Conv2d(4, 8, 1)
                self.gate = nn.Hardsigmoid()

            def forward(self, x):
                y = nn.functional.hardswish(self.conv(x))
                s = self.gate(self.expand(torch.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
                return (y * s).mean((2, 3), keepdim=True).flatten(1)  # XNNPACK's mean keeps dims

        torch.manual_seed(0)
        return Net().eval(), 3 * torch.randn(1, 3, 8, 8)


def test_hardsigmoid_is_spelled_with_float_constants_bit_identically():
    """PyTorch's decomposition casts int64 constants XNNPACK refuses; the float spelling is the same function."""
    import torch

    from mnv4_deploy.converters.executorch.hardsigmoid import spell_hardsigmoid_with_float_constants

    model, x = _HardSigmoidExcite.build()
    exported = torch.export.export(model, (x,), strict=False)
    assert spell_hardsigmoid_with_float_constants(exported.graph_module) == 1
    assert "hardsigmoid" not in str(exported.graph_module.code)
    edges = torch.tensor([-1e6, -3.0, -2.9999998, 0.0, 2.9999998, 3.0, 1e6, float("inf"), -float("inf")])
    probe = torch.cat([edges, torch.linspace(-5, 5, 4001)])
    gate = torch.export.export(torch.nn.Hardsigmoid(), (probe,), strict=False)
    assert spell_hardsigmoid_with_float_constants(gate.graph_module) == 1
    torch.testing.assert_close(gate.module()(probe), torch.nn.functional.hardsigmoid(probe), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=0)


def test_hardsigmoid_squeeze_excite_is_fully_delegated(tmp_path):
    """Without the float spelling, each gate left two int64 -> float dim_order copies in the portable kernels."""
    import torch

    from mnv4_deploy.converters.executorch import refuse_portable_compute
    from mnv4_deploy.converters.executorch.lower import export_program
    from mnv4_deploy.converters.executorch.runtime import pte_runner

    model, x = _HardSigmoidExcite.build()
    facts = export_program(model, x, tmp_path / "se.pte", {"model": "se"})
    delegation = facts["delegation"]
    assert facts["hardsigmoid_float_constants"] == 1
    assert delegation["portable_compute_ops"] == 0 and delegation["delegated_subgraphs"] == 1, delegation
    assert not any("dim_order" in op for op in delegation["ops"]), delegation["ops"]
    refuse_portable_compute(delegation, "executorch-int8")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(pte_runner(tmp_path / "se.pte").run(x.numpy()), expected, rtol=1e-5, atol=1e-5)


def test_program_bytes_are_reproducible(tmp_path):
    from mnv4_deploy.converters.executorch.lower import export_program

    model, x = _WithCumsum.build()
    export_program(model, x, tmp_path / "a.pte", {"model": "m"})
    export_program(model, x, tmp_path / "b.pte", {"model": "m"})
    assert (tmp_path / "a.pte").read_bytes() == (tmp_path / "b.pte").read_bytes()


def test_plan_module_computes_the_plan_but_rounding_ties(digits_plans, one_torch_thread):
    """The quantized_decomposed spelling keeps the plan's integers: codes equal at every quantizer except
    at rounding ties, the model the same up to them (tests/rounding_ties.py: two kernel paths)."""
    import torch

    from mnv4_deploy.converters.executorch.plan_module import plan_module
    from mnv4_deploy.quant.decomposed import DecomposedQDQOps
    from mnv4_deploy.quant.modules import QuantOps

    plan = digits_plans.plan().with_quantized_output()
    x = torch.from_numpy(digits_plans.net.x_heldout[:16])
    with torch.no_grad():
        assert_same_model_but_ties(plan_module(plan)(x).numpy(), plan.fake_quant_model()(x).numpy())
    points = point_inputs(plan.fake_quant_model(), x)
    assert len(points) > 5
    assert_codes_equal_but_ties(points, QuantOps().fake_quant, DecomposedQDQOps(int8_container=True).fake_quant)


def test_int8_without_calibration_or_with_float_layers_is_refused(digits_plans):
    from types import SimpleNamespace

    from mnv4_deploy.converters.executorch import _full_integer_plan

    with pytest.raises(UsageError, match="needs calibration images"):
        _full_integer_plan(SimpleNamespace(plan=None), "executorch-int8")
    plan = digits_plans.plan()
    partial = plan.with_float([plan.layers[0]], recorrect=False)
    with pytest.raises(UsageError, match="keeps 1 unit"):
        _full_integer_plan(SimpleNamespace(plan=partial), "executorch-int8")


class _MultiQueryAttention:
    """MobileNet-V4 hybrid's mobile MQA in miniature: one key/value head broadcast over four query heads."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.q, self.k, self.v = nn.Conv2d(8, 16, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
                self.out, self.drop = nn.Conv2d(16, 8, 1), nn.Dropout(0.1)

            def forward(self, x):
                b, _, h, w = x.shape
                q = self.q(x).reshape(b, 4, 4, h * w).transpose(-1, -2)
                k = self.k(x).reshape(b, 4, h * w).transpose(1, 2).unsqueeze(1)
                v = self.v(x).reshape(b, 4, h * w).transpose(1, 2).unsqueeze(1)
                attn = self.drop((q @ k.transpose(-1, -2)).softmax(-1))
                o = (attn @ v).transpose(1, 2).reshape(b, h, w, 16).permute(0, 3, 1, 2).contiguous()
                return self.out(o)

        torch.manual_seed(0)
        return Net().eval(), torch.randn(1, 8, 4, 4)


def test_multi_query_attention_is_rewritten_to_the_same_function_and_fully_delegated(tmp_path):
    """Without the rewrite its middle-dim unsqueezes and broadcast matmuls' expands stayed portable."""
    import torch

    from mnv4_deploy.converters.executorch.attention_ops import rewrite_attention_ops
    from mnv4_deploy.converters.executorch.lower import export_program
    from mnv4_deploy.converters.executorch.runtime import pte_runner

    model, x = _MultiQueryAttention.build()
    exported = torch.export.export(model, (x,), strict=False)
    counts = rewrite_attention_ops(exported.graph_module)
    assert counts == {"dropout_dropped": 1, "contiguous_moved": 0, "unsqueeze_as_reshape": 2, "matmul_as_bmm": 2}
    code = str(exported.graph_module.code)
    assert "unsqueeze" not in code and "matmul" not in code and "dropout" not in code
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(exported.module()(x), expected, rtol=0, atol=1e-6)
    facts = export_program(model, x, tmp_path / "mqa.pte", {"model": "mqa"})
    delegation = facts["delegation"]
    assert delegation["portable_compute_ops"] == 0 and delegation["delegated_subgraphs"] == 1, delegation["portable"]
    np.testing.assert_allclose(pte_runner(tmp_path / "mqa.pte").run(x.numpy()), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_contiguous_after_a_quantize_pair_no_longer_hides_an_int8_conv(tmp_path):
    """`permute -> q -> dq -> contiguous -> conv` (the MQA output projection): the conv and its per-channel
    weight dequantize were left portable, and to_executorch failed ('Missing out variants')."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mnv4_deploy.converters.executorch import refuse_portable_compute
    from mnv4_deploy.converters.executorch.lower import export_program
    from mnv4_deploy.converters.executorch.runtime import pte_runner
    from mnv4_deploy.quant.decomposed import register_quantized_decomposed

    register_quantized_decomposed()
    qd = torch.ops.quantized_decomposed

    def on_grid(t, scale):
        return qd.dequantize_per_tensor(qd.quantize_per_tensor(t, scale, 0, -128, 127, torch.int8),
                                        scale, 0, -128, 127, torch.int8)

    class OutputProjection(nn.Module):
        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            self.register_buffer("w_int", torch.randint(-127, 128, (8, 16, 1, 1), generator=gen).to(torch.int8))
            self.register_buffer("w_scale", torch.full((8,), 0.002))
            self.register_buffer("w_zero", torch.zeros(8, dtype=torch.int64))
            self.register_buffer("bias", torch.linspace(-0.1, 0.1, 8))

        def forward(self, x):
            y = on_grid(on_grid(x, 0.02).permute(0, 3, 1, 2), 0.02).contiguous()
            w = qd.dequantize_per_channel(self.w_int, self.w_scale, self.w_zero, 0, -127, 127, torch.int8)
            return on_grid(F.conv2d(y, w, self.bias), 0.01)

    model, x = OutputProjection().eval(), torch.randn(1, 4, 4, 16)
    facts = export_program(model, x, tmp_path / "proj.pte", {"model": "proj"})
    assert facts["attention_rewrites"]["contiguous_moved"] == 1
    delegation = facts["delegation"]
    refuse_portable_compute(delegation, "executorch-int8")
    assert delegation["delegated_subgraphs"] == 1, delegation["portable"]
    with torch.no_grad():
        expected = model(x).numpy()
    # XNNPACK's int8 conv rounds once, like the emulation: at most one output step (0.01) apart
    np.testing.assert_allclose(pte_runner(tmp_path / "proj.pte").run(x.numpy()), expected, rtol=0, atol=0.0101)
