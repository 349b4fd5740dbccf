"""Recipes are schema-checked data; a typo names the key."""
from __future__ import annotations

import pytest

from mnv4_deploy.errors import UsageError
from mnv4_deploy.recipes import load_recipe, shipped_recipe_names


@pytest.mark.parametrize("name", shipped_recipe_names())
def test_every_shipped_recipe_loads(name):
    recipe = load_recipe(name)
    for precision in ("fp32", "fp16", "int8"):
        assert recipe.thresholds(precision).min_cosine > 0.9


def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_user_recipe_extends_a_shipped_one(tmp_path):
    recipe = load_recipe(_write(tmp_path, "extends: default\nname: mine\nactivations: {estimator: mse}\n"))
    assert recipe.name == "mine" and recipe.section("activations")["estimator"] == "mse"
    assert recipe.section("activations")["percentile"] == 99.99  # inherited
    assert recipe.thresholds("fp32").min_cosine == load_recipe("default").thresholds("fp32").min_cosine


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
