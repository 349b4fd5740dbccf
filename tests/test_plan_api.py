"""The plan's public API converters use: emulation, the full-integer variant, frozen export
models, the hash; and the one module that runs models over batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mnv4_deploy.batches import run_chunked, torch_logits, torch_runner
from mnv4_deploy.quant.modules import QuantWeighted

from rounding_ties import assert_codes_equal_but_ties, assert_same_model_but_ties, point_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest: small tensors, shared VM


def _logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_emulation_is_the_fake_quant_model(digits_plans):
    plan = digits_plans.plan()
    x = digits_plans.net.x_heldout[:16]
    np.testing.assert_array_equal(plan.emulation()(x), _logits(plan.fake_quant_model(), x))


def test_full_integer_variant_is_made_once_and_quantizes_the_logits(digits_plans):
    plan = digits_plans.plan()
    full = plan.with_quantized_output()
    assert plan.with_quantized_output() is full  # every full-integer target of a run shares it
    assert full.with_quantized_output() is full
    out_points = set(full.activation_ranges) - set(plan.activation_ranges)
    assert out_points, "the variant enables the output point"
    x = digits_plans.net.x_heldout[:16]
    logits = full.emulation()(x)
    grid = full.activation_ranges[sorted(out_points)[0]]
    steps = logits / grid.scale + grid.zero_point  # every logit sits on the output grid
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


@pytest.mark.parametrize("int8_container", [False, True])
def test_export_model_freezes_weights_and_changes_no_number(digits_plans, int8_container):
    """Frozen layers hold exactly the plan's integers, scales and biases; with quantized_decomposed ops
    the model computes the fake-quant model's codes except at rounding ties (tests/rounding_ties.py:
    two kernel paths, so not bit-identical on every CPU)."""
    from mnv4_deploy.quant.decomposed import DecomposedQDQOps
    from mnv4_deploy.quant.modules import QuantOps

    plan = digits_plans.plan()
    x = digits_plans.net.x_heldout[:16]
    live = plan.fake_quant_model()
    expected = _logits(live, x)
    decomposed = DecomposedQDQOps(int8_container=int8_container)
    for ops in (QuantOps(), decomposed):
        model = plan.export_model(ops)
        for name in plan.layers:  # exact: the same integers times the same scales, the same bias
            frozen, original = model.get_submodule(name), live.get_submodule(name)
            assert torch.equal(frozen.effective_weight(), original.effective_weight()), name
            assert torch.equal(frozen.effective_bias(), original.effective_bias()), name
        assert_same_model_but_ties(_logits(model, x), expected)
    points = point_inputs(live, torch.from_numpy(x))
    assert len(points) > 5
    assert_codes_equal_but_ties(points, QuantOps().fake_quant, decomposed.fake_quant)
    layers = [m for m in model.modules() if isinstance(m, QuantWeighted)]
    assert layers and all(m.frozen for m in layers)
    buffers = {name.rpartition(".")[2] for name, _ in model.named_buffers()}
    assert not buffers & {"weight", "bias", "bias_q"}  # no float copy is left for an export to carry
    assert {"weight_int", "weight_scale", "weight_zero_point", "frozen_bias"} <= buffers
    assert plan.fake_quant_model().get_submodule(plan.layers[0]).frozen is False  # the plan itself is untouched


def test_a_float_layer_cannot_be_frozen(digits_plans):
    from mnv4_deploy.quant.modules import QuantOps

    plan = digits_plans.plan()
    variant = plan.with_float([plan.layers[0]], recorrect=False)
    ops = QuantOps()
    kept = variant.export_model(ops).get_submodule(plan.layers[0])
    assert not kept.frozen and kept.ops is ops and kept.weight is not None  # float layers stay float
    with pytest.raises(ValueError, match="only a quantized layer can be frozen"):
        kept.freeze()


def test_plan_hash_follows_the_plan_numbers(digits_plans):
    plan = digits_plans.plan()
    assert plan.sha256 == plan.sha256 and len(plan.sha256) == 64
    assert plan.with_float([plan.layers[2]], recorrect=False).sha256 != plan.sha256
    assert plan.with_quantized_output().sha256 != plan.sha256  # one more activation grid


def test_run_chunked_gives_each_image_its_own_row():
    tensors = np.arange(70 * 3, dtype=np.float32).reshape(70, 3, 1, 1)
    calls = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return batch.reshape(len(batch), 3) * 2

    out = run_chunked(run, tensors, chunk=32)
    assert calls == [32, 32, 6]
    np.testing.assert_array_equal(out, tensors.reshape(70, 3) * 2)


def test_torch_runners_agree_with_the_module(digits_plans):
    model, x = digits_plans.canonical, digits_plans.net.x_heldout[:40]
    expected = _logits(model, x)
    np.testing.assert_allclose(torch_logits(model, x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(torch_runner(model, one_thread=True)(x.astype(np.float64)), expected,
                               rtol=1e-5, atol=1e-5)  # float64 input is cast, as every runner takes float32


def test_a_fixed_batch_tflite_runs_any_number_of_images(tmp_path):
    """A foreign .tflite with a fixed batch of 4 runs 6 images: chunks of 4, the last one padded."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("litert_torch", "ai_edge_litert")):
        pytest.skip("needs mnv4-deploy[tflite]")
    from mnv4_deploy.converters.tflite import litert_runner
    from mnv4_deploy.converters.tflite.convert import export_float_tflite

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)).eval()
    path = tmp_path / "batch4.tflite"
    export_float_tflite(model, torch.zeros(4, 3, 8, 8), path, "nchw")
    x = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    got = litert_runner(path).run(x)
    assert got.shape == (6, 5)
    np.testing.assert_allclose(got, _logits(model, x), rtol=1e-4, atol=1e-4)  # each row is its own image's
