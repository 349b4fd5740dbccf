"""A user's own attention, however it is spelled, through every target (issue #23).

The spelling zoo (tests/attention_zoo.py: one block per spelling, alone on the image and inside
a small conv network) runs through every registered target the way the family matrix runs the
MobileNet family: one prepared model, calibration and int8 plan per zoo model, one artifact per
target, parity recomputed on it (and on the plan's emulation for int8). The default run takes
every spelling alone through onnx and onnx-int8 and the pairs that guard a fix; the rest is slow.

Around it, the pieces that make the spellings convertible: explicit einsum / attention /
softmax forms (mnv4_deploy/spellings.py), the TFLite reorder of a matmul of two transposed views
(converters/tflite/matmul_order.py), and refusals that name the layer.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attention_zoo as zoo
from mnv4_deploy.errors import UsageError
from mnv4_deploy.pipeline import prepare_model
from mnv4_deploy.preprocess import Preprocess
from mnv4_deploy.registry import find_targets
from mnv4_deploy.spellings import EINSUM, SDPA, SOFTMAX_AXIS, einsum_unsupported, explicit_einsum, make_explicit

from test_family_matrix import Matrix, check_passed

CONTRACT = Preprocess(crop_size=(32, 32), resize_short=32)
# (zoo model, target) pairs in the default run beyond onnx/onnx-int8 of every spelling alone: each guards a fix
FAST_PAIRS = {
    ("at-transposed@alone", "tflite"),  # A.mT @ B.mT: LiteRT's FULLY_CONNECTED lost a transpose
    ("at-flattened@alone", "tflite-int8"),  # softmax over axis 1: REDUCE_MAX/EXP stayed float
    ("einsum-map@alone", "bpu-x3"),  # einsum at ONNX opset 11
    ("sdpa@alone", "bpu-x3"),  # F.scaled_dot_product_attention at ONNX opset 11
    ("token-head@alone", "executorch-int8"),  # XNNPACK: mean without keepdim, tokens[:, 0], cat of two grids
}
FAST_TARGETS = {"onnx", "onnx-int8"}
# LiteRT folds hard-sigmoid's +3 and clamp into the coefficient Linear's FULLY_CONNECTED (its output is
# relu6(coef + 3)): a tensor the plan has no point for, on the quantizer's own grid (2 such tensors in
# the model; parity against the plan's emulation still holds)
FUSED_IN_TFLITE = {"dynamic-max"}


def _key(spelling: str, form: str) -> str:
    return f"{spelling}@{form}"


def _prepare(key: str, recipe):
    spelling, form = key.split("@")
    return prepare_model(zoo.build(spelling, form), contract=CONTRACT, name=key, golden_count=8, recipe=recipe,
                         log=lambda _: None)


def _cases() -> list:
    cases = []
    for spelling in zoo.SPELLINGS:
        for form in zoo.FORMS:
            key = _key(spelling, form)
            for target in sorted(find_targets()):
                fast = (form == "alone" and target in FAST_TARGETS) or (key, target) in FAST_PAIRS
                cases.append(pytest.param(key, target, marks=[] if fast else [pytest.mark.slow],
                                          id=f"{spelling}-{form}-{target}"))
    return cases


@pytest.fixture(scope="module")
def zoo_matrix(tmp_path_factory) -> Matrix:
    return Matrix(tmp_path_factory.mktemp("attention-zoo"), prepare=_prepare)


@pytest.mark.parametrize("key,target", _cases())
def test_spelling_through_target(zoo_matrix, key, target):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # 32 px tensors (conftest.one_torch_thread)
    try:
        result = zoo_matrix.result(key, target)
    finally:
        torch.set_num_threads(previous)
    check_passed(result, target, on_plan_grid=key.split("@")[0] not in FUSED_IN_TFLITE)


# ---- explicit forms ----


@pytest.mark.parametrize("equation,shapes", [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("btc,bchw->bthw", [(2, 4, 8), (2, 8, 3, 5)]),
    ("bhwt,btc->bchw", [(2, 3, 5, 4), (2, 4, 8)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 5, 4), (2, 3, 6, 4)]),
    ("ij,jk", [(3, 4), (4, 5)]),  # implicit output
    ("...ij,...jk->...ik", [(2, 3, 3, 4), (2, 3, 4, 5)]),
    ("bi,bi->b", [(2, 3), (2, 3)]),  # a dot product per row
    ("bi,bjk->bijk", [(2, 3), (2, 4, 5)]),  # outer product
    ("bij,bjk->ikb", [(2, 3, 4), (2, 4, 5)]),  # output permuted
    ("bchw->bhwc", [(2, 3, 4, 5)]),
    ("bij->bi", [(2, 3, 4)]),  # a sum
])
def test_explicit_einsum_computes_what_einsum_computes(equation, shapes):
    g = torch.Generator().manual_seed(0)
    operands = [torch.randn(s, generator=g) for s in shapes]
    assert einsum_unsupported(equation, [len(s) for s in shapes]) is None
    got = explicit_einsum(equation, operands, shapes)
    torch.testing.assert_close(got, torch.einsum(equation, *operands), rtol=1e-5, atol=1e-5)


class _Diagonal(nn.Module):
    def forward(self, x):
        return torch.einsum("bcii->bci", x)


def test_einsum_forms_without_an_explicit_spelling_are_refused_naming_the_layer():
    assert "diagonal" in einsum_unsupported("bii->bi", [3])
    assert "3 operands" in einsum_unsupported("a,b,c->abc", [1, 1, 1])
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(_Diagonal()))
    with pytest.raises(UsageError, match=r"^layer 1\.0: torch\.einsum\('bcii->bci'\) has no explicit export form: "
                                         r"a repeated index in 'bcii' \(a diagonal\)"):
        make_explicit(model, torch.randn(1, 3, 4, 4))


def test_functional_spellings_become_plain_ops_with_the_same_function():
    x = torch.randn(2, 3, 16, 16)
    expected = {"einsum-map": {EINSUM: 4}, "sdpa": {SDPA: 1}, "at-flattened": {SOFTMAX_AXIS: 1}}
    for spelling, counts in expected.items():
        model = zoo.build(spelling, "alone")
        explicit, info = make_explicit(model, x[:1])
        assert info == {"rewritten": counts}, info
        calls = {n.target for n in explicit.graph.nodes if n.op == "call_function"}
        assert torch.einsum not in calls and F.scaled_dot_product_attention not in calls
        with torch.no_grad():
            torch.testing.assert_close(explicit(x), model(x), rtol=1e-5, atol=1e-5)
    plain = zoo.build("at-transposed", "alone")
    assert make_explicit(plain, x[:1]) == (plain, {})  # nothing to do: the model itself, untraced


class _CausalAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        t = self.proj(x).flatten(2).transpose(1, 2)
        return F.scaled_dot_product_attention(t, t, t, is_causal=True).mean(1)


def test_an_attention_form_without_an_explicit_spelling_is_refused_before_conversion(tmp_path):
    from mnv4_deploy import export

    model = nn.Sequential(nn.Identity(), nn.Sequential(_CausalAttention())).eval()
    with pytest.raises(UsageError, match=r"^layer 1\.0: F\.scaled_dot_product_attention with attn_mask/is_causal "
                                         r"has no explicit export form") as err:
        export(model, "onnx,tflite", tmp_path / "out", contract=CONTRACT, log=lambda _: None)
    assert err.value.exit_code == 2 and "\n" not in err.value.one_line()
    assert not list((tmp_path / "out").glob("*.onnx")) and not list((tmp_path / "out").glob("*.tflite"))


def test_a_model_fx_cannot_trace_is_refused_for_int8_naming_the_layer():
    from mnv4_deploy.quant import build_plan

    class Unpacking(nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], -1, *x.shape[2:])

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.ReLU(), Unpacking())).eval()
    with pytest.raises(UsageError, match=r"in layer 1\.1 \(Unpacking\): TraceError"):
        build_plan(model, np.zeros((1, 3, 8, 8), np.float32), log=lambda _: None)


# ---- the TFLite lowering: the reorder it needs, and what it says when LiteRT refuses an op ----


def test_transposed_matmuls_are_reordered_with_the_same_function():
    from mnv4_deploy.converters.tflite.matmul_order import reorder_transposed_matmuls

    model, x = zoo.build("at-transposed", "alone"), torch.randn(1, 3, 16, 16)
    gm = torch.export.export(model, (x,), strict=False).module()
    assert len(reorder_transposed_matmuls(gm)) == 1  # pixels @ k(z).transpose(1, 2) only
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)
    flattened = torch.export.export(zoo.build("at-flattened", "alone"), (x,), strict=False).module()
    assert reorder_transposed_matmuls(flattened) == []  # one operand plain: LiteRT keeps a BATCH_MATMUL


def test_an_op_litert_cannot_prepare_is_named_with_the_target_and_our_layer(tmp_path, monkeypatch):
    """Without the reorder, LiteRT's FULLY_CONNECTED check fails after conversion; the error names the
    target, the op and the bridge's module path, with LiteRT's text as detail."""
    pytest.importorskip("litert_torch")
    import mnv4_deploy.converters.tflite.convert as convert
    from mnv4_deploy.errors import DeployError

    monkeypatch.setattr(convert, "convertible_module", lambda model, example: (model, []))
    model = zoo.build("at-transposed", "alone")
    with pytest.raises(DeployError) as err:
        convert.export_float_tflite(model, torch.randn(1, 3, 16, 16), tmp_path / "m.tflite", "nhwc", "tflite")
    message = err.value.one_line()
    assert "\n" not in message
    assert message.startswith("target tflite: LiteRT cannot prepare op #") and "FULLY_CONNECTED of layer 1 " in message
    assert "fully_connected.cc" in message and "!= cols (256 != 8)" in message  # LiteRT's own text as detail
