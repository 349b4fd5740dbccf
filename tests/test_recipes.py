"""Recipes are schema-checked data; a typo names the key."""
from __future__ import annotations

import pytest
import torch

from mnv4_deploy.errors import UsageError
from mnv4_deploy.recipes import load_recipe, shipped_recipe_names


@pytest.mark.parametrize("name", shipped_recipe_names())
def test_every_shipped_recipe_loads(name):
    recipe = load_recipe(name)
    for precision in ("fp32", "fp16", "int8"):
        assert recipe.thresholds(precision).min_cosine > 0.9
    # a lower precision is never held to a tighter bound than a higher one
    fp32, fp16, int8 = (recipe.thresholds(p) for p in ("fp32", "fp16", "int8"))
    assert fp32.min_cosine >= fp16.min_cosine >= int8.min_cosine
    assert fp32.min_sqnr_db >= fp16.min_sqnr_db >= int8.min_sqnr_db
    assert fp32.max_rel_abs <= fp16.max_rel_abs <= int8.max_rel_abs


def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_user_recipe_extends_a_shipped_one(tmp_path):
    recipe = load_recipe(_write(tmp_path, "extends: default\nname: mine\nactivations: {estimator: mse}\n"))
    parent = load_recipe("default")
    assert recipe.name == "mine" and recipe.section("activations")["estimator"] == "mse"
    # everything the user recipe does not state is the parent's, key by key
    assert {k: v for k, v in recipe.section("activations").items() if k != "estimator"} == \
        {k: v for k, v in parent.section("activations").items() if k != "estimator"}
    assert recipe.section("activations")["percentile"] == parent.section("activations")["percentile"]
    for section in ("calibration", "weights", "parity", "fallback"):
        assert recipe.section(section) == parent.section(section), section
    assert recipe.thresholds("fp32").min_cosine == parent.thresholds("fp32").min_cosine


@pytest.mark.parametrize("text, message", [
    ("extends: default\nactivation: {estimator: mse}\n", "unknown key activation"),
    ("extends: default\nactivations: {estimatr: mse}\n", "unknown key activations.estimatr"),
    ("extends: default\nactivations: {estimator: kl}\n", "'kl' is not one of minmax, percentile, entropy, mse"),
    ("extends: default\ncalibration: {size: many}\n", "calibration.size must be an integer"),
    ("extends: default\nactivations: {percentile: 20}\n", "percentile 20 must be in"),
    ("extends: default\nparity: {fp32: {min_cosine: 0.9}}\n", None),
    ("name: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("name: lonely\n", "missing sections"),
    ("extends: nowhere\n", "unknown recipe 'nowhere'"),
])
def test_malformed_recipes_are_refused_with_the_key_named(tmp_path, text, message):
    if message is None:  # partial override of one threshold merges with the parent
        assert load_recipe(_write(tmp_path, text)).thresholds("fp32").min_cosine == 0.9
        return
    with pytest.raises(UsageError, match=message) as err:
        load_recipe(_write(tmp_path, text))
    assert err.value.exit_code == 2


def test_missing_recipe_file():
    with pytest.raises(UsageError, match="no such file"):
        load_recipe("does/not/exist.yaml")


def test_fp16_emulation_bounds_are_wider_and_fall_back_to_emulation(tmp_path):
    default = load_recipe("default")
    assert default.thresholds("emulation_fp16").min_cosine < default.thresholds("emulation").min_cosine
    import yaml

    raw = default.to_dict()
    del raw["parity"]["emulation_fp16"]
    raw["parity"]["emulation"]["min_cosine"] = 0.97
    mine = load_recipe(_write(tmp_path, yaml.safe_dump(raw)))
    assert mine.thresholds("emulation_fp16").min_cosine == 0.97


# ---- the recipe's parity bounds are the ones the pipeline judges with -------------------------
# One onnx-fp16 export of a tiny module (fp16 rounding gives a finite, non-trivial SQNR), then
# `validate` re-judges the same artifact under recipes whose fp16 SQNR bound sits 1 dB above and
# 1 dB below what was measured: the verdict flips exactly at the recipe's number.

class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    """(artifact, module, contract, measured fp16 SQNR dB) of one default-recipe export."""
    from mnv4_deploy import Preprocess, export

    torch.manual_seed(0)
    module = _TinyNet().eval()
    contract = Preprocess(crop_size=(32, 32), resize_short=32)
    out = tmp_path_factory.mktemp("recipe-judge")
    report = export(module, "onnx-fp16", out, contract=contract, name="tiny", golden_count=4, log=lambda _: None)
    result = report.result("onnx-fp16")
    assert result.status == "passed", result.failures
    return out / result.artifact, module, contract, result.parity["sqnr_db"]


@pytest.mark.parametrize("offset_db, passes", [(+1.0, False), (-1.0, True)])
def test_the_fp16_sqnr_bound_is_the_recipes(fp16_export, tmp_path, offset_db, passes):
    import yaml

    from mnv4_deploy.pipeline import validate_artifact

    artifact, module, contract, sqnr = fp16_export
    bound = round(sqnr + offset_db, 3)
    recipe = _write(tmp_path, yaml.safe_dump({"extends": "default", "name": "judge",
                                              "parity": {"fp16": {"min_sqnr_db": bound}}}))
    report = validate_artifact(artifact, module, contract=contract, name="tiny", golden_count=4,
                               quant_config=recipe, out=tmp_path / "out", log=lambda _: None)
    result = report.result("onnx-fp16")
    assert result.parity["sqnr_db"] == pytest.approx(sqnr)  # the same artifact and golden inputs
    assert result.thresholds["min_sqnr_db"] == bound
    if passes:
        assert result.status == "passed" and report.exit_code == 0, result.failures
    else:
        assert report.exit_code == 3 and any("SQNR" in f for f in result.failures), result.failures
