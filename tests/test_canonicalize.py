"""Folding is exact, complete and checked numerically for every paper variant."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mnv4_deploy import canonicalize as canon
from mnv4_deploy import models
from mnv4_deploy.data import synthetic_batch

from conftest import SMALL

# variant -> (norms folded, layer scales folded, MQA pre-norms folded, MQA pre-norms kept as affine)
EXPECTED = {
    "conv_small": (46, 0, 0, 0),
    "conv_medium": (77, 0, 0, 0),
    "conv_large": (102, 0, 0, 0),
    "hybrid_medium": (88, 30, 4, 4),
    "hybrid_large": (113, 35, 4, 4),
}


def _prepared(name: str):
    spec = models.resolve(name, img_size=SMALL)
    model = models.build(spec)
    batch = synthetic_batch(models.contract_for(spec), 4, seed=1)
    x = torch.from_numpy(batch.tensors)
    models.open_layer_scales(model)
    models.recalibrate_batchnorm(model, [x])
    return model, batch


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_norm_folds_and_the_function_is_unchanged(name):
    model, batch = _prepared(name)
    canonical, stats = canon.canonicalize(model, torch.from_numpy(batch.tensors[:1]))
    assert (stats.norms_folded, stats.layer_scales_folded, stats.prenorms_folded, stats.prenorms_to_affine) == EXPECTED[name]
    assert stats.norms_left == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in canonical.modules())
    assert not any(type(m).__name__.startswith("LayerScale") for m in canonical.modules())
    metrics = canon.verify(model, canonical, batch.tensors)
    assert metrics.cosine > 0.999999 and metrics.max_rel_abs < 1e-4
    # the original is untouched
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_mqa_prenorm_before_padded_downsampling_stays_exact_at_borders():
    """Folding the pre-norm into a padded stride-2 depthwise conv would be wrong at the
    borders (BN(0) != 0); the explicit affine keeps every pixel exact. Checked block by block."""
    import copy

    model, batch = _prepared("hybrid_medium")
    with torch.no_grad():  # as in a trained model: BN(0) != 0 (random init re-estimated has mean ~0)
        for module in model.modules():
            if hasattr(module, "attn") and hasattr(module.attn, "key"):
                module.norm.running_mean.uniform_(-1, 1)
                module.norm.bias.uniform_(-0.5, 0.5)
    canonical, _ = canon.canonicalize(model, torch.from_numpy(batch.tensors[:1]))
    blocks = [n for n, m in canonical.named_modules() if isinstance(getattr(m, "norm", None), canon.ChannelAffine)]
    assert len(blocks) == 4
    for name in blocks:
        original, folded = model.get_submodule(name), canonical.get_submodule(name)
        channels = folded.norm.scale.shape[1]
        x = torch.randn(2, channels, 8, 8) + 2.0
        with torch.no_grad():
            ref, out = original(x), folded(x)
        assert (ref - out).abs().max() < 1e-4 * ref.abs().max()
        # The naive fold: push the affine into each k/v down_conv (and the plain q projection).
        naive = copy.deepcopy(folded)
        scale, shift = naive.norm.scale.reshape(-1), naive.norm.shift.reshape(-1)
        with torch.no_grad():
            for branch in (naive.attn.key, naive.attn.value):
                conv = branch.down_conv
                extra = shift * conv.weight.sum(dim=(1, 2, 3))
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                conv.bias = nn.Parameter(conv.bias + extra)
            q = naive.attn.query.proj
            q.bias = nn.Parameter((q.bias if q.bias is not None else 0) + (q.weight[:, :, 0, 0] * shift).sum(1))
            q.weight.mul_(scale.reshape(1, -1, 1, 1))
            naive.norm = nn.Identity()
            wrong = naive(x)
        assert (ref - wrong).abs().max() > 100 * (ref - out).abs().max()


def test_no_fold_keeps_norms_and_disables_fused_attention():
    model, batch = _prepared("hybrid_medium")
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True  # as timm builds it when not exportable
    canonical, stats = canon.canonicalize(model, torch.from_numpy(batch.tensors[:1]), fold=False)
    assert stats.norms_folded == 0 and len(stats.norms_left) > 80
    assert stats.fused_attention_disabled == 8
    assert not any(getattr(m, "fused_attn", False) for m in canonical.modules())


def test_shared_conv_is_never_folded():
    """A conv called twice feeds two norms; folding one into it would corrupt the other."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn_a(self.conv(x)) + self.bn_b(self.conv(x * 2))

    model = Shared().eval()
    for bn in (model.bn_a, model.bn_b):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    canonical, stats = canon.canonicalize(model, x[:1])
    assert stats.norms_folded == 0 and sorted(stats.norms_left) == ["bn_a", "bn_b"]
    assert torch.allclose(model(x), canonical(x))
