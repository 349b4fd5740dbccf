"""Make a timm MobileNet-family model canonical: exportable attention, norms folded, verified.

Folding is found by observation, not by knowing block classes: one forward pass with hooks
records which norm consumes exactly the tensor a convolution produced (and which LayerScale
consumes a projection's output). Those pairs fold exactly. The MQA pre-norm follows a
residual add and is handled on its own (docs/field-notes.md). Every fold is checked numerically
against the un-folded model by `verify`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .attention import decompose_multihead_attention
from .module_pairs import trace_pairs
from .same_padding import PadStats, canonicalize_padding
from .same_padding import describe as describe_padding
from .spellings import make_explicit
from .validate import ParityMetrics, compare


class ChannelAffine(nn.Module):
    """`x * scale + shift` per channel: an inference BatchNorm that cannot fold into a conv.

    Exported as Mul + Add, which every target runs, instead of a BatchNormalization node.
    """

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


@dataclass
class FoldStats:
    """What canonicalization did, for the report."""

    norms_folded: int = 0
    layer_scales_folded: int = 0
    prenorms_folded: int = 0
    prenorms_to_affine: int = 0
    norms_left: list[str] = field(default_factory=list)
    fused_attention_disabled: int = 0
    multihead_attention_decomposed: int = 0
    spellings: dict[str, Any] = field(default_factory=dict)  # spellings.make_explicit: calls made explicit
    padding: PadStats = field(default_factory=PadStats)
    verification: ParityMetrics | None = None

    @property
    def pads_rewritten(self) -> int:
        """SAME convs and explicit zero pads put into canonical form."""
        return self.padding.total

    def to_dict(self) -> dict[str, Any]:
        return {
            "norms_folded": self.norms_folded,
            "layer_scales_folded": self.layer_scales_folded,
            "mqa_prenorms_folded": self.prenorms_folded,
            "mqa_prenorms_as_affine": self.prenorms_to_affine,
            "norms_left": self.norms_left,
            "fused_attention_disabled": self.fused_attention_disabled,
            "multihead_attention_decomposed": self.multihead_attention_decomposed,
            "spellings_made_explicit": self.spellings,
            "pads_rewritten": self.pads_rewritten,
            "padding": describe_padding(self.padding),
            "verification": self.verification.to_dict() if self.verification else None,
        }


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The inference-time per-channel (scale, shift) of a BatchNorm."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats


def _is_layer_scale(module: nn.Module) -> bool:
    return type(module).__name__.startswith("LayerScale") and isinstance(getattr(module, "gamma", None), torch.Tensor)


def _norm_remainder(bn: nn.Module) -> nn.Module:
    """What a timm BatchNormAct2d still does after its norm is folded: dropout, activation."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
            if m is not None and not isinstance(m, nn.Identity)]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _fold_scale_into_conv(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    """conv'(x) = scale * conv(x) + shift, per output channel."""
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = conv.bias.detach() * scale if conv.bias is not None else torch.zeros_like(scale)
        if shift is not None:
            bias = bias + shift
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))


def _fold_affine_into_following_conv(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """conv'(x) = conv(scale * x + shift) for an unpadded 1x1 conv (exact)."""
    with torch.no_grad():
        w = conv.weight  # (out, in, 1, 1), groups == 1
        extra = (w[:, :, 0, 0] * shift.reshape(1, -1)).sum(dim=1)
        w.mul_(scale.reshape(1, -1, 1, 1))
        bias = conv.bias.detach() + extra if conv.bias is not None else extra
        conv.bias = nn.Parameter(bias.to(w.dtype))


def _is_plain_pointwise(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1
            and conv.stride == (1, 1) and tuple(conv.padding) in ((0, 0),) and type(conv) is nn.Conv2d)


def _fold_mqa_prenorms(model: nn.Module, stats: FoldStats) -> None:
    """The MQA block's pre-norm BN follows a residual add, so it folds forward, not back.

    Into the q/k/v 1x1 projections when each branch starts with one (exact); otherwise (a
    padded stride-2 depthwise k/v down-sampling, where BN(0) != 0 at the borders) it stays
    as an explicit per-channel affine, which is exact too.
    """
    for name, block in list(model.named_modules()):
        norm, attn = getattr(block, "norm", None), getattr(block, "attn", None)
        if not (_is_norm(norm) and attn is not None and all(hasattr(attn, b) for b in ("query", "key", "value"))):
            continue
        scale, shift = _bn_affine(norm)
        branches = [getattr(attn, b) for b in ("query", "key", "value")]
        firsts = [next(iter(b.children()), None) if isinstance(b, nn.Sequential) else None for b in branches]
        if all(_is_plain_pointwise(f) and len(b) == 1 for f, b in zip(firsts, branches)):
            for conv in firsts:
                _fold_affine_into_following_conv(conv, scale, shift)
            block.norm = nn.Identity()
            stats.prenorms_folded += 1
        else:
            block.norm = ChannelAffine(scale, shift)
            stats.prenorms_to_affine += 1


def disable_fused_attention(model: nn.Module) -> int:
    """Switch timm attention to its explicit matmul/softmax form (fused SDPA does not export)."""
    count = 0
    for module in model.modules():
        if getattr(module, "fused_attn", False):
            module.fused_attn = False
            count += 1
    return count


def canonicalize(model: nn.Module, example: torch.Tensor, fold: bool = True) -> tuple[nn.Module, FoldStats]:
    """A folded, exportable copy of `model` (eval mode); the input model is not touched.

    SAME padding is rewritten even with `fold=False`: it is not a fold but a fixed-size form
    of the same function, and the int8 engine and converters need plain convs.
    """
    canonical = copy.deepcopy(model).eval()
    stats = FoldStats(fused_attention_disabled=disable_fused_attention(canonical),
                      multihead_attention_decomposed=decompose_multihead_attention(canonical))
    canonical, stats.padding = canonicalize_padding(canonical, example)
    if not fold:
        stats.norms_left = [n for n, m in canonical.named_modules() if _is_norm(m)]
        return _explicit(canonical, example, stats)
    named = dict(canonical.named_modules())
    for conv_name, bn_name in trace_pairs(canonical, example, _is_conv, _is_norm):
        bn = named[bn_name]
        scale, shift = _bn_affine(bn)
        _fold_scale_into_conv(named[conv_name], scale, shift)
        _replace(canonical, bn_name, _norm_remainder(bn))
        stats.norms_folded += 1
    _fold_mqa_prenorms(canonical, stats)
    named = dict(canonical.named_modules())
    for conv_name, ls_name in trace_pairs(canonical, example, _is_conv, _is_layer_scale):
        gamma = named[ls_name].gamma.detach().reshape(-1)
        _fold_scale_into_conv(named[conv_name], gamma, None)
        _replace(canonical, ls_name, nn.Identity())
        stats.layer_scales_folded += 1
    stats.norms_left = [n for n, m in canonical.named_modules() if _is_norm(m)]
    return _explicit(canonical, example, stats)


def _explicit(canonical: nn.Module, example: torch.Tensor, stats: FoldStats) -> tuple[nn.Module, FoldStats]:
    """Last step: einsum, fused attention and off-axis softmax calls in plain ops (spellings.py)."""
    canonical, stats.spellings = make_explicit(canonical, example, leaves=(ChannelAffine,))
    return canonical, stats


def verify(original: nn.Module, canonical: nn.Module, inputs: np.ndarray) -> ParityMetrics:
    """Logit parity of the canonical model against the un-folded original."""
    with torch.no_grad():
        x = torch.from_numpy(inputs)
        return compare(original(x).numpy(), canonical(x).numpy())
