"""TF "SAME" convs and explicit zero pads rewritten at the export size, checked against timm."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnv4_deploy import canonicalize as canon
from mnv4_deploy import models
from mnv4_deploy.errors import UsageError
from mnv4_deploy.quant.graph import build_quant_graph
from mnv4_deploy.same_padding import PaddedConv2d, canonicalize_padding, is_same_conv, same_pads

SIZES = (63, 64, 65, 96, 97)  # odd and even: stride-2 SAME padding is symmetric only at odd sizes


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("size", range(30, 41))
@pytest.mark.parametrize("kernel,stride,dilation", [(3, 2, 1), (5, 2, 1), (3, 1, 2), (3, 2, 2), (4, 1, 1), (1, 2, 1)])
def test_pads_match_timm(size, kernel, stride, dilation):
    from timm.layers.padding import pad_same_arg

    expected = tuple(pad_same_arg([size, size + 1], [kernel, kernel], [stride, stride], [dilation, dilation]))
    assert same_pads((size, size + 1), (kernel, kernel), (stride, stride), (dilation, dilation)) == expected


@pytest.mark.parametrize("size", SIZES)
def test_hand_made_conv2d_same_with_stride_and_dilation(size):
    from timm.layers import Conv2dSame

    torch.manual_seed(size)
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2, dilation=2, bias=True), nn.ReLU(),
                          Conv2dSame(8, 8, (3, 5), stride=(2, 1), groups=8)).eval()
    x = torch.randn(2, 3, size, size)
    canonical, stats = canon.canonicalize(model, x[:1])
    assert not any(is_same_conv(m) for m in canonical.modules())
    assert all(type(m) in (nn.Conv2d, nn.ZeroPad2d, nn.ReLU, nn.Sequential, PaddedConv2d) for m in canonical.modules())
    assert stats.pads_rewritten == 2 and stats.to_dict()["pads_rewritten"] == 2
    # stride 2, dilated 3x3 (span 5): total pad 4 at odd sizes (symmetric), 3 at even sizes
    first = canonical[0]
    if size % 2:
        assert type(first) is nn.Conv2d and first.padding == (2, 2)
    else:
        assert isinstance(first, PaddedConv2d) and first.pad.padding == (1, 2, 1, 2) and first.conv.padding == (0, 0)
    with torch.no_grad():
        assert _rel_err(model(x), canonical(x)) < 1e-6
    assert canon.verify(model, canonical, x.numpy()).cosine > 0.999999


@pytest.fixture(scope="module", params=["tf_efficientnet_lite0", "tf_mobilenetv3_small_100"])
def tf_model(request):
    spec = models.resolve(f"timm:{request.param}", img_size=64)
    torch.manual_seed(0)
    model = models.build(spec)  # timm `exportable` flags, as the CLI builds it
    models.recalibrate_batchnorm(model, [torch.randn(4, 3, 64, 64)])
    return request.param, model


@pytest.mark.parametrize("size", SIZES)
def test_timm_tf_models_match_at_odd_and_even_sizes(tf_model, size):
    name, model = tf_model
    assert sum(is_same_conv(m) for m in model.modules()) == 5  # the stride-2 convs
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    canonical, stats = canon.canonicalize(model, x[:1])
    assert not any(is_same_conv(m) for m in canonical.modules())
    explicit = stats.padding.same_convs_explicit_pad
    assert stats.padding.same_convs_symmetric + explicit == 5
    # at 65 and 97 every stride-2 stage sees an odd size; at even sizes every SAME conv is asymmetric
    assert explicit == {63: 4, 64: 5, 65: 0, 96: 5, 97: 0}[size]
    assert sum(isinstance(m, PaddedConv2d) for m in canonical.modules()) == explicit
    assert stats.norms_left == []
    with torch.no_grad():
        assert _rel_err(model(x), canonical(x)) < 1e-5, name


def test_explicit_zero_pads_before_convs_are_merged():
    torch.manual_seed(1)
    model = nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 4, 3),  # symmetric: into the conv
                          nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(4, 4, 3, stride=2, padding=1),  # asymmetric
                          nn.ConstantPad2d(2, 0.0), nn.Conv2d(4, 4, 5)).eval()
    x = torch.randn(2, 3, 20, 20)
    canonical, stats = canonicalize_padding(_copy(model), x[:1])
    assert (stats.zero_pads_merged, stats.zero_pads_canonical) == (2, 1)
    assert isinstance(canonical[0], nn.Identity) and canonical[1].padding == (1, 1)
    assert canonical[2].padding == (1, 2, 1, 2) and canonical[3].padding == (0, 0)
    assert isinstance(canonical[4], nn.Identity) and canonical[5].padding == (2, 2)
    with torch.no_grad():
        assert _rel_err(model(x), canonical(x)) < 1e-6


def test_a_nonzero_or_reflect_pad_is_left_alone():
    model = nn.Sequential(nn.ConstantPad2d(1, 0.5), nn.Conv2d(3, 4, 3), nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3)).eval()
    canonical, stats = canonicalize_padding(_copy(model), torch.randn(1, 3, 16, 16))
    assert stats.total == 0 and isinstance(canonical[0], nn.ConstantPad2d)


class _FunctionalPad(nn.Module):
    """A user block that pads with F.pad in its forward, as hand-ported TF code does."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.mid = nn.Conv2d(8, 8, 3, groups=8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(F.pad(x, (0, 1, 0, 1))))
        x = self.mid(F.pad(x, (1, 1, 1, 1), mode="constant", value=0.0))
        return self.head(x.mean((2, 3)))


def test_functional_zero_pads_are_rewritten_in_the_fx_graph():
    torch.manual_seed(2)
    model = _FunctionalPad().eval()
    x = torch.randn(2, 3, 32, 32)
    canonical, stats = canon.canonicalize(model, x[:1])
    assert (stats.padding.zero_pads_merged, stats.padding.zero_pads_canonical) == (1, 1)
    code = canonical.code
    assert "pad(" not in code.replace("zero_pad(", "")  # no F.pad left, only the ZeroPad2d module
    assert canonical.get_submodule("mid").padding == (1, 1)
    with torch.no_grad():
        assert _rel_err(model(x), canonical(x)) < 1e-6


def test_same_conv_called_at_two_sizes_is_refused():
    from timm.layers import Conv2dSame

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = Conv2dSame(3, 3, 3, stride=2)

        def forward(self, x):
            return self.conv(x).mean() + self.conv(x[..., :-1, :-1]).mean()

    with pytest.raises(UsageError, match="several input sizes"):
        canon.canonicalize(Twice().eval(), torch.randn(1, 3, 16, 16))


def test_the_int8_engine_quantizes_the_pad_on_its_input_grid():
    """A zero pad is a shared point: same scale and zero point as its input, zero exactly representable."""
    from timm.layers import Conv2dSame

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Hardswish(), Conv2dSame(4, 4, 3, stride=2)).eval()
    x = torch.randn(1, 3, 16, 16)
    canonical, _ = canon.canonicalize(model, x)
    qg = build_quant_graph(canonical, x)
    pad_points = [p for p in qg.points.values() if "pad" in p.anchor]
    assert len(pad_points) == 1
    assert pad_points[0].shared_from is not None
    assert qg.root_point(pad_points[0].name) == qg.points[pad_points[0].shared_from].name


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("size", (64, 65))
def test_timm_export_variant_conv2d_same_export(size):
    """timm's ONNX-oriented Conv2dSameExport (pads with a ZeroPad2d built on its first call)."""
    from timm.layers.conv2d_same import Conv2dSameExport

    torch.manual_seed(4)
    model = nn.Sequential(Conv2dSameExport(3, 6, 5, stride=2), nn.ReLU()).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)  # builds its pad for this size
    canonical, stats = canon.canonicalize(model, x[:1])
    assert stats.pads_rewritten == 1 and not any(is_same_conv(m) for m in canonical.modules())
    with torch.no_grad():
        assert _rel_err(expected, canonical(x)) < 1e-6
