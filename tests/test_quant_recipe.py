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


def test_default_recipe_settings():
    s = QuantSettings.from_recipe("default")
    assert (s.weight_bits, s.act_bits, s.per_channel, s.act_dtype) == (8, 8, True, "uint8")
    assert s.batch_size >= 1 and s.correction_size >= 1 and not s.quantize_output
