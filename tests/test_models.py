"""Model zoo names, weights loading and its bad-input cases."""
from __future__ import annotations

import pickle

import pytest
import torch

from mnv4_deploy import models
from mnv4_deploy.errors import DeployError, UsageError

from conftest import SMALL


@pytest.mark.parametrize("alias, timm_name", sorted(models.PAPER_VARIANTS.items()))
def test_paper_aliases_resolve_to_full_checkpoint_names(alias, timm_name):
    assert models.resolve(alias).timm_name == timm_name


def test_other_variants_tags_and_timm_prefix():
    assert "conv_blur_medium" in models.mnv4_short_names() and "conv_small_050" in models.mnv4_short_names()
    assert models.resolve("conv_small_050").timm_name.startswith("mobilenetv4_conv_small_050")
    assert models.resolve("conv_small.e3600_r256_in1k").timm_name == "mobilenetv4_conv_small.e3600_r256_in1k"
    assert models.resolve("timm:mobilenetv3_large_100").arch == "mobilenetv3_large_100"
    assert models.resolve("timm:tf_efficientnet_lite0").arch == "tf_efficientnet_lite0"


@pytest.mark.parametrize("name, fragment", [
    ("conv_smal", "conv_small"),
    ("hybrid_mediun", "hybrid_medium"),
    ("timm:mobilenetv3_larg_100", "mobilenetv3_large_100"),
])
def test_unknown_names_suggest_the_closest(name, fragment):
    with pytest.raises(UsageError) as err:
        models.resolve(name)
    assert fragment in err.value.one_line() and err.value.exit_code == 2


def test_unknown_tag_lists_known_tags():
    with pytest.raises(UsageError, match="unknown checkpoint tag") as err:
        models.resolve("conv_small.e9_r1")
    assert "e2400_r224_in1k" in err.value.one_line()


def test_non_mobilenet_family_is_refused():
    with pytest.raises(UsageError, match="not a MobileNet-V3/EfficientNet"):
        models.build(models.resolve("timm:resnet18"))


@pytest.fixture(scope="module")
def small_model():
    return models.build(models.resolve("conv_small", num_classes=10, img_size=SMALL))


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "state_dict_ema", "module_prefix", "safetensors"])
def test_weights_roundtrip_in_every_checkpoint_layout(small_model, tmp_path, layout):
    state = {k: v.clone() + 0.01 if v.is_floating_point() else v.clone() for k, v in small_model.state_dict().items()}
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "plain":
        torch.save(state, path)
    elif layout == "module_prefix":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save({layout: state, "epoch": 3}, path)
    target = models.build(models.resolve("conv_small", num_classes=10, img_size=SMALL))
    digest = models.load_weights(target, path)
    assert len(digest) == 64
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_weights_for_another_architecture_name_the_mismatch(small_model, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(small_model.state_dict(), path)
    other = models.build(models.resolve("conv_small", num_classes=1000, img_size=SMALL))
    with pytest.raises(UsageError, match=r"does not match the architecture: 2 shape mismatches \(first: classifier"):
        models.load_weights(other, path)
    bigger = models.build(models.resolve("conv_medium", num_classes=10))
    with pytest.raises(UsageError, match="missing keys"):
        models.load_weights(bigger, path)


def test_truncated_and_foreign_files_are_refused(small_model, tmp_path):
    good = tmp_path / "good.pth"
    torch.save(small_model.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UsageError, match="truncated or not a PyTorch checkpoint"):
        models.load_weights(small_model, truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(UsageError):
        models.load_weights(small_model, text)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 10)
    with pytest.raises(UsageError, match="safetensors"):
        models.load_weights(small_model, bad_st)
    with pytest.raises(UsageError, match="no such file"):
        models.load_weights(small_model, tmp_path / "absent.pth")


class _Payload:
    """Stands for arbitrary code a malicious pickle would run."""


def test_pickle_with_more_than_weights_is_refused(small_model, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": small_model.state_dict(), "payload": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(UsageError, match="more than plain weights"):
        models.load_weights(small_model, path)
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(UsageError, match="not a state dict"):
        models.load_weights(small_model, listed)


def test_pretrained_offline_gives_a_clear_error():
    with pytest.raises(DeployError, match="could not fetch pretrained weights") as err:
        models.build(models.resolve("conv_small"), pretrained=True)
    assert "--weights" in err.value.one_line()


def test_random_init_is_degenerate_until_batchnorm_is_reestimated():
    from mnv4_deploy.data import synthetic_batch

    spec = models.resolve("hybrid_medium", img_size=SMALL)
    model = models.build(spec)
    x = torch.from_numpy(synthetic_batch(models.contract_for(spec), 4).tensors)
    with torch.no_grad():
        before = model(x).abs().max().item()
    assert models.open_layer_scales(model) > 0
    models.recalibrate_batchnorm(model, [x])
    with torch.no_grad():
        after = model(x)
    assert before < 1e-6  # denormal-scale logits: parity on this would mean nothing
    assert 0.05 < after.std().item() < 10 and torch.isfinite(after).all()
