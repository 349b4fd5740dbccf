"""Recipe values the quantization engine reads: malformed ones are refused with the key named."""
from __future__ import annotations

import pytest

from mnv4_deploy.errors import UsageError
from mnv4_deploy.quant import QuantSettings
from mnv4_deploy.recipes import load_recipe


def _write(tmp_path, body: str):
    path = tmp_path / "recipe.yaml"
    path.write_text("extends: default\n" + body)
    return path


@pytest.mark.parametrize("body, message", [
    ("activations: {estimator: kl}\n", "activations.estimator"),
    ("activations: {dtype: int16}\n", "activations.dtype"),
    ("activations: {quantize_output: maybe}\n", "activations.quantize_output"),
    ("activations: {percentile: 120.0}\n", "percentile"),
    ("weights: {rounding: stochastic}\n", "weights.rounding"),
    ("weights: {adaround_iterations: 1.5}\n", "weights.adaround_iterations"),
    ("calibration: {correction_size: many}\n", "calibration.correction_size"),
    ("calibration: {batchsize: 8}\n", "unknown key calibration.batchsize"),
])
def test_malformed_values_are_refused_by_load_recipe(tmp_path, body, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        load_recipe(_write(tmp_path, body))


@pytest.mark.parametrize("body, message", [
    ("weights: {bits: 9}\n", "weights.bits 9"),
    ("activations: {bits: 1}\n", "activations.bits 1"),
    ("weights: {symmetric: false}\n", "weights.symmetric"),
    ("calibration: {batch_size: 0}\n", "calibration.batch_size"),
])
def test_values_the_engine_cannot_honour_are_refused(tmp_path, body, message):
    recipe = load_recipe(_write(tmp_path, body))  # well-formed
    with pytest.raises(UsageError, match=message):
        QuantSettings.from_recipe(recipe)


# ---- what the recipe's knobs do to the plan (a tiny conv/depthwise/linear net, 8 images) --------

@pytest.fixture(scope="module")
def plan_for():
    """`plan_for(section__key=value, ...)`: the plan of the default recipe with those overrides (cached)."""
    import numpy as np
    import torch

    from mnv4_deploy.quant import build_plan

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    calib = np.random.default_rng(0).normal(size=(8, 3, 16, 16)).astype(np.float32)
    plans: dict = {}

    def plan_for(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in plans:
            raw = load_recipe("default").to_dict()
            for name, value in overrides.items():
                section, _, field = name.partition("__")
                raw[section][field] = value
            plans[key] = build_plan(model, calib, raw if overrides else "default", log=lambda _: None)
        return plans[key]

    return plan_for


def _max_abs_int_per_channel(plan, layer):
    import numpy as np

    ints = plan.weight_ints(layer)
    return np.abs(ints.reshape(ints.shape[0], -1)).max(axis=1)


def test_default_recipe_settings(plan_for):
    s = QuantSettings.from_recipe("default")
    assert s.batch_size >= 1 and s.correction_size >= 1
    plan = plan_for()  # the shipped recipe, by name
    for layer in plan.layers:  # 8-bit symmetric per-channel weights: each channel reaches +-127
        ints = plan.weight_ints(layer)
        assert len(plan.weight_scales[layer]) == ints.shape[0] and len(set(plan.weight_scales[layer])) > 1
        assert (_max_abs_int_per_channel(plan, layer) == 127).all(), layer
    grids = {(q.qmin, q.qmax) for q in plan.activation_ranges.values()}
    assert grids == {(0, 255)}  # 8-bit activations in uint8
    quantized = plan.with_quantized_output()  # the logits stay float unless a full-integer form asks
    assert set(quantized.activation_ranges) > set(plan.activation_ranges)
    assert (s.weight_bits, s.act_bits, s.per_channel, s.act_dtype) == (8, 8, True, "uint8")
    assert not s.quantize_output


def test_weight_bits_set_the_weight_grid(plan_for):
    plan = plan_for(weights__bits=4)
    for layer in plan.layers:
        assert (_max_abs_int_per_channel(plan, layer) == 7).all(), layer
    assert plan.sha256 != plan_for().sha256


def test_activation_dtype_changes_the_container_not_the_grid(plan_for):
    uint8, int8 = plan_for().activation_ranges, plan_for(activations__dtype="int8").activation_ranges
    assert set(uint8) == set(int8)
    for point, q in int8.items():
        assert (q.qmin, q.qmax) == (-128, 127) and q.scale == pytest.approx(uint8[point].scale, rel=1e-6)
        assert q.zero_point == uint8[point].zero_point - 128, point


def test_quantize_output_adds_the_logits_grid(plan_for):
    default, full = plan_for(), plan_for(activations__quantize_output=True)
    added = set(full.activation_ranges) - set(default.activation_ranges)
    assert len(added) == 1 and set(full.with_quantized_output().activation_ranges) == set(full.activation_ranges)


def test_estimator_changes_the_ranges(plan_for):
    percentile, minmax = plan_for().activation_ranges, plan_for(activations__estimator="minmax").activation_ranges
    assert any(minmax[p].scale > percentile[p].scale for p in percentile)  # minmax keeps the outliers
    assert all(minmax[p].scale >= percentile[p].scale * (1 - 1e-6) for p in percentile)


def test_calibration_batch_size_changes_memory_not_the_plan(plan_for):
    """Same integers and zero points; scales agree to float32 rounding (conv kernels sum in a
    batch-size-dependent order, measured: one scale in five off by 1 ulp, so the sha256 differs)."""
    one, eight = plan_for(calibration__batch_size=1), plan_for(calibration__batch_size=8)
    for layer in one.layers:
        assert (one.weight_ints(layer) == eight.weight_ints(layer)).all(), layer
    for point, q in one.activation_ranges.items():
        assert q.zero_point == eight.activation_ranges[point].zero_point, point
        assert q.scale == pytest.approx(eight.activation_ranges[point].scale, rel=1e-6), point
