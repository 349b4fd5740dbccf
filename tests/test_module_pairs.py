"""trace_pairs: the producer -> consumer pairs both folding and pad merging rely on."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mnv4_deploy.module_pairs import trace_pairs


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.BatchNorm2d)


def _is_pad(m: nn.Module) -> bool:
    return isinstance(m, nn.ConstantPad2d)


class Graph(nn.Module):
    """One case per rule: shared conv, norm applied twice, pad read twice, conv called twice, a plain pair."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Conv2d(3, 4, 1)
        self.bn_shared = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn_twice = nn.BatchNorm2d(4)
        self.pad_two_readers = nn.ZeroPad2d(1)
        self.left, self.right = nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)
        self.pad = nn.ZeroPad2d(1)
        self.conv_twice = nn.Conv2d(4, 4, 3, padding=1)
        self.pad_once = nn.ConstantPad2d(1, 0.0)
        self.eats_pad = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn_shared(self.shared(x)) + self.shared(x)
        b = self.bn_twice(self.bn_twice(self.conv(x)))
        y = a + b
        p = self.pad_two_readers(y)
        y = self.left(p) + self.right(p)
        y = self.conv_twice(self.pad(y))[..., 1:-1, 1:-1] + self.conv_twice(y)
        return self.eats_pad(self.pad_once(y))


def test_conv_norm_pairs_skip_a_shared_conv_but_not_a_norm_applied_twice():
    model = Graph().eval()
    pairs = trace_pairs(model, torch.randn(1, 3, 8, 8), _is_conv, _is_bn)
    assert pairs == [("conv", "bn_twice")]


def test_pad_conv_pairs_need_one_reader_and_with_the_flag_one_call():
    model = Graph().eval()
    x = torch.randn(1, 3, 8, 8)
    assert trace_pairs(model, x, _is_pad, _is_conv) == [("pad", "conv_twice"), ("pad_once", "eats_pad")]
    assert trace_pairs(model, x, _is_pad, _is_conv, consumer_called_once=True) == [("pad_once", "eats_pad")]


def test_hooks_are_removed_even_when_the_forward_fails():
    model = Graph().eval()
    with pytest.raises(RuntimeError):
        trace_pairs(model, torch.randn(1, 5, 8, 8), _is_conv, _is_bn)  # 5 channels into a 3-channel conv
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
