"""TF "SAME" padding and explicit zero pads, rewritten at the fixed export size.

TF-ported timm models (`tf_efficientnet_*`, `tf_mobilenetv3_*`) use `Conv2dSame`, a Conv2d
subclass that computes its padding from the input size on every call (`F.pad`, then an
unpadded conv). Int8 engines, exporters and accelerators want a plain `nn.Conv2d`. At a fixed
input size the padding is a constant, so:
- symmetric padding goes into the conv's own `padding` (every runtime pads inside the conv);
- asymmetric padding (stride 2 at even sizes: one more row/column at the bottom/right) becomes
  one `nn.ZeroPad2d` right before a plain unpadded conv. Int8 runtimes fuse or run that pad on
  integers (ONNX Pad, TFLite PAD, Core ML pad), and zero lies exactly on every int8 grid
  because zero points are integers.
An explicit zero pad (`nn.ZeroPad2d`, `nn.ConstantPad2d(value=0)`, `F.pad` constant 0) that
feeds exactly one conv is merged the same way. Everything is found by observation at the
export size; `canonicalize.verify` then checks the whole model numerically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import UsageError
from .module_pairs import trace_pairs

# timm's TF-"SAME" conv classes (timm.layers.conv2d_same), matched by name across timm versions
SAME_CONV_CLASSES = ("Conv2dSame", "Conv2dSameExport")

Pads = tuple[int, int, int, int]  # (left, right, top, bottom), F.pad's order for 4-D tensors


@dataclass
class PadStats:
    """What the rewrite did, for FoldStats and the report."""

    same_convs_symmetric: int = 0  # SAME convs whose padding went into the conv
    same_convs_explicit_pad: int = 0  # SAME convs now ZeroPad2d + unpadded conv
    zero_pads_merged: int = 0  # explicit zero pads folded into the following conv's padding
    zero_pads_canonical: int = 0  # explicit asymmetric zero pads kept, the conv's own padding moved into them

    @property
    def total(self) -> int:
        return self.same_convs_symmetric + self.same_convs_explicit_pad + self.zero_pads_merged + self.zero_pads_canonical


class PaddedConv2d(nn.Sequential):
    """An explicit `ZeroPad2d` followed by an unpadded `nn.Conv2d`: asymmetric SAME padding.

    A plain Sequential, so torch.fx and every exporter see the two ordinary modules.
    """

    def __init__(self, pads: Pads, conv: nn.Conv2d):
        super().__init__()
        self.pad = nn.ZeroPad2d(pads)
        self.conv = conv


def same_pads(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
              dilation: tuple[int, int]) -> Pads:
    """TF SAME padding at one input size: the total split with the extra pixel at the end."""
    def total(x: int, k: int, s: int, d: int) -> int:
        return max((math.ceil(x / s) - 1) * s + (k - 1) * d + 1 - x, 0)

    ph = total(size[0], kernel[0], stride[0], dilation[0])
    pw = total(size[1], kernel[1], stride[1], dilation[1])
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def is_same_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and type(module).__name__ in SAME_CONV_CLASSES


def _is_zero_pad(module: nn.Module) -> bool:
    return isinstance(module, nn.ConstantPad2d) and float(module.value) == 0.0


def _module_pads(module: nn.ConstantPad2d) -> Pads:
    p = module.padding
    return (p, p, p, p) if isinstance(p, int) else tuple(int(v) for v in p)  # type: ignore[return-value]


def _plain_conv(conv: nn.Conv2d, padding: tuple[int, int]) -> nn.Conv2d:
    """A plain nn.Conv2d with `conv`'s weights and the given symmetric padding."""
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                      conv.dilation, conv.groups, conv.bias is not None, device=conv.weight.device,
                      dtype=conv.weight.dtype)
    plain.weight = conv.weight
    if conv.bias is not None:
        plain.bias = conv.bias
    return plain.train(conv.training)


def _conv_with_pads(conv: nn.Conv2d, pads: Pads) -> nn.Module:
    """`conv` (unpadded) after non-negative SAME `pads`, in the canonical form."""
    left, right, top, bottom = pads
    if left == right and top == bottom:
        return _plain_conv(conv, (top, left))
    return PaddedConv2d(pads, _plain_conv(conv, (0, 0)))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _observe(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, list[tuple[int, int]]], list[tuple[str, str]]]:
    """Input sizes of every SAME conv, and (zero pad, conv) pairs where the conv eats the pad's output."""
    sizes: dict[str, list[tuple[int, int]]] = {}

    def same_hook(name):
        def hook(_m, inp):
            sizes.setdefault(name, []).append(tuple(inp[0].shape[-2:]))
        return hook

    handles = [module.register_forward_pre_hook(same_hook(name))
               for name, module in model.named_modules() if is_same_conv(module)]
    try:
        pairs = trace_pairs(model, example, _is_zero_pad, lambda m: type(m) is nn.Conv2d, consumer_called_once=True)
    finally:
        for h in handles:
            h.remove()
    return sizes, pairs


def _rewrite_same_convs(model: nn.Module, sizes: dict[str, list[tuple[int, int]]], stats: PadStats) -> None:
    for name, module in list(model.named_modules()):
        if not is_same_conv(module) or name not in sizes:
            continue  # a SAME conv the forward never reaches does not matter for export
        seen = set(sizes[name])
        if len(seen) > 1:
            raise UsageError(f"{name}: SAME-padded conv called at several input sizes {sorted(seen)}",
                             "its padding depends on the input size; export a model that calls it once")
        pads = same_pads(seen.pop(), module.kernel_size, module.stride, module.dilation)
        new = _conv_with_pads(module, pads)
        _replace(model, name, new)
        if isinstance(new, PaddedConv2d):
            stats.same_convs_explicit_pad += 1
        else:
            stats.same_convs_symmetric += 1


def _merge_module_pads(model: nn.Module, pairs: list[tuple[str, str]], stats: PadStats) -> None:
    for pad_name, conv_name in pairs:
        pad, conv = model.get_submodule(pad_name), model.get_submodule(conv_name)
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            continue
        ph, pw = conv.padding
        left, right, top, bottom = _module_pads(pad)
        merged = (left + pw, right + pw, top + ph, bottom + ph)
        if min(merged) < 0:
            continue  # a cropping pad: not ours to touch
        if merged[0] == merged[1] and merged[2] == merged[3]:
            _replace(model, pad_name, nn.Identity())
            _replace(model, conv_name, _plain_conv(conv, (merged[2], merged[0])))
            stats.zero_pads_merged += 1
        elif (ph, pw) != (0, 0) or type(pad) is not nn.ZeroPad2d:
            _replace(model, pad_name, nn.ZeroPad2d(merged))
            _replace(model, conv_name, _plain_conv(conv, (0, 0)))
            stats.zero_pads_canonical += 1


def _fpad_zero_pads(node: fx.Node) -> Pads | None:
    """The (l, r, t, b) of an `F.pad(x, pads)` call with constant zero, else None."""
    if node.op != "call_function" or node.target not in (F.pad, torch._C._nn.pad):
        return None
    args = list(node.args) + [None] * 4
    pads = args[1] if args[1] is not None else node.kwargs.get("pad")
    mode = node.kwargs.get("mode", args[2] if args[2] is not None else "constant")
    value = node.kwargs.get("value", args[3] if args[3] is not None else 0.0)
    if mode != "constant" or (value or 0.0) != 0.0 or not isinstance(pads, (tuple, list)) or len(pads) != 4:
        return None
    if not all(isinstance(p, int) for p in pads):
        return None
    return tuple(pads)  # type: ignore[return-value]


def _has_fpad(model: nn.Module) -> bool:
    """Cheap pre-check: does any module's source call F.pad? (tracing every model is not free)."""
    import inspect

    for module in model.modules():
        try:
            src = inspect.getsource(type(module).forward)
        except (OSError, TypeError):
            continue
        if "pad(" in src and type(module).__module__.split(".")[0] not in ("torch", "timm"):
            return True
    return False


class _ConvLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.ConstantPad2d)) or super().is_leaf_module(m, qualname)


def _rewrite_fpad_graph(model: nn.Module, stats: PadStats) -> nn.Module:
    """F.pad(x, pads) with constant 0 feeding exactly one plain conv, in a torch.fx trace of `model`.

    Returns `model` itself when there is nothing to rewrite (or it cannot be traced), otherwise
    a GraphModule computing the same function with the pads merged.
    """
    if not _has_fpad(model):
        return model
    try:
        gm = fx.GraphModule(model, _ConvLeafTracer().trace(model))
    except Exception:  # fx raises many types for untraceable Python; then F.pad stays as written
        return model
    changed = 0
    for node in list(gm.graph.nodes):
        pads = _fpad_zero_pads(node)
        if pads is None or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.op != "call_module" or user.args[0] is not node:
            continue
        conv = gm.get_submodule(user.target)
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            continue
        ph, pw = conv.padding
        merged = (pads[0] + pw, pads[1] + pw, pads[2] + ph, pads[3] + ph)
        if min(merged) < 0:
            continue
        if merged[0] == merged[1] and merged[2] == merged[3]:
            _replace(gm, user.target, _plain_conv(conv, (merged[2], merged[0])))
            user.replace_input_with(node, node.args[0])
            gm.graph.erase_node(node)
            stats.zero_pads_merged += 1
        else:
            pad_path = f"{user.target.replace('.', '_')}_zero_pad"
            gm.add_submodule(pad_path, nn.ZeroPad2d(merged))
            _replace(gm, user.target, _plain_conv(conv, (0, 0)))
            with gm.graph.inserting_before(node):
                pad_node = gm.graph.call_module(pad_path, (node.args[0],))
            node.replace_all_uses_with(pad_node)
            gm.graph.erase_node(node)
            stats.zero_pads_canonical += 1
        changed += 1
    if not changed:
        return model
    gm.graph.lint()
    gm.recompile()
    return gm


def canonicalize_padding(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, PadStats]:
    """Rewrite SAME convs and explicit zero pads of `model` (in place where possible) at `example`'s size.

    Returns the model to use from now on (a GraphModule only when an `F.pad` call was merged)
    and what was done.
    """
    stats = PadStats()
    sizes, pairs = _observe(model, example)
    _rewrite_same_convs(model, sizes, stats)
    _merge_module_pads(model, pairs, stats)
    return _rewrite_fpad_graph(model, stats), stats


def describe(stats: PadStats) -> dict[str, Any]:
    """The report's view of the rewrite."""
    return {"same_convs_symmetric": stats.same_convs_symmetric,
            "same_convs_explicit_pad": stats.same_convs_explicit_pad,
            "zero_pads_merged": stats.zero_pads_merged,
            "zero_pads_canonical": stats.zero_pads_canonical}
