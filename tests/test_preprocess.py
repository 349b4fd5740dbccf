"""The preprocessing contract reproduces timm's own eval transform, from the model config."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mnv4_deploy import models
from mnv4_deploy.preprocess import Preprocess


@pytest.mark.parametrize("name", ["conv_small", "conv_small.e3600_r256_in1k", "conv_large"])
def test_contract_matches_timm_eval_transform(name, tmp_path):
    import timm.data

    spec = models.resolve(name)
    contract = models.contract_for(spec)
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=__import__("timm").get_pretrained_cfg(spec.timm_name).to_dict())
    transform = timm.data.create_transform(**cfg, is_training=False)
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, size=(300, 410, 3), dtype=np.uint8))
    path = tmp_path / "x.png"
    img.save(path)
    ours = contract.load_image(path)
    theirs = transform(Image.open(path).convert("RGB")).numpy()
    assert ours.shape == theirs.shape == (3, *contract.crop_size)
    # PIL resampling is shared; only float rounding of the normalization may differ.
    assert np.abs(ours - theirs).max() < 1e-4


def test_mean_std_come_from_checkpoint_not_imagenet_defaults():
    half = models.contract_for(models.resolve("conv_small.e3600_r256_in1k"))
    assert half.mean == (0.5, 0.5, 0.5) and half.std == (0.5, 0.5, 0.5)
    assert half.crop_size == (256, 256) and half.resize_short == int(256 / 0.95)
    mean, scale = half.pixel_mean_and_scale()
    assert mean == [127.5] * 3 and scale == pytest.approx([1 / 127.5] * 3)
    imagenet = models.contract_for(models.resolve("conv_small"))
    mean, scale = imagenet.pixel_mean_and_scale()
    assert mean == pytest.approx([123.675, 116.28, 103.53])
    assert scale == pytest.approx([0.01712475, 0.017507, 0.01742919], rel=1e-6)


def test_img_size_override_keeps_crop_ratio():
    contract = models.contract_for(models.resolve("conv_small", img_size=128))
    assert contract.crop_size == (128, 128) and contract.resize_short == int(128 / 0.875)


def test_dict_roundtrip_and_hash_are_stable():
    contract = models.contract_for(models.resolve("hybrid_medium"))
    again = Preprocess.from_dict(contract.to_dict())
    assert again == contract and again.sha256() == contract.sha256()
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocess.from_dict({**contract.to_dict(), "colour": "rgb"})


def test_invalid_contracts_are_refused():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(crop_size=(8, 8), resize_short=8, interpolation="cubic-ish")
    with pytest.raises(ValueError, match="smaller than the crop"):
        Preprocess(crop_size=(64, 64), resize_short=32)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_pixels_are_pils_resized_crop_exactly_as_contiguous_float32(mode, tmp_path):
    """The decode workers' one-copy uint8 -> float32 CHW conversion changes no pixel value."""
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 255, size=(97, 131, 3), dtype=np.uint8)).convert(mode)
    contract = Preprocess(crop_size=(64, 64), resize_short=73)
    ours = contract.pixels_from_pil(img)
    resized = img.convert("RGB").resize((98, 73), resample=Image.BICUBIC)
    expected = np.asarray(resized.crop((17, 4, 81, 68)), dtype=np.float32).transpose(2, 0, 1)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert np.array_equal(ours, expected)
