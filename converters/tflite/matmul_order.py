"""A matmul of two transposed views, reordered before LiteRT conversion so it keeps both transposes.

The TFLite converter folds a transpose that feeds a batched matmul into the matmul's adjoint
flags. When both operands are transposed views (`A.mT @ B.mT`, e.g. Mobile-Former's
`pixels @ keys.transpose(1, 2)` with `pixels = x.flatten(2).transpose(1, 2)`) and the batch is
one, it lowers the op to a FULLY_CONNECTED with the right operand as its weights and drops the
left operand's transpose: the model then fails to load (`fully_connected.cc ... != cols`),
litert-torch 0.10.0 / ai-edge-litert 2.3.0 (docs/field-notes.md).

`A.mT @ B.mT == (B @ A).mT` exactly, so such a matmul is rewritten as the product of the
untransposed operands in the other order, transposed once after it: a plain BATCH_MATMUL and a
TRANSPOSE. The rewrite works on `torch.export`'s graph, whatever Python spelled the matmul
(`@`, `torch.matmul`, `torch.bmm`); a model without such a matmul is converted as it is.
"""
from __future__ import annotations

from typing import Any

# ops that give back their input's values in the same shape (looked through)
_SAME_SHAPE = ("expand.default", "view.default", "reshape.default", "_unsafe_view.default", "clone.default",
               "contiguous.default", "alias.default")
_MATMULS = ("matmul.default", "bmm.default")


def _aten(name: str) -> Any:
    import torch

    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload)


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(int(d) for d in val.shape) if val is not None and hasattr(val, "shape") else None


def _swaps_last_two(node: Any) -> bool:
    """`node` is `transpose(-2, -1)` (any spelling of it) of a tensor of rank >= 2."""
    shape = _shape(node.args[0])
    if shape is None or len(shape) < 2:
        return False
    rank = len(shape)
    if node.target == _aten("transpose.int"):
        return sorted(d % rank for d in node.args[1:3]) == [rank - 2, rank - 1]
    if node.target == _aten("permute.default"):
        return [d % rank for d in node.args[1]] == [*range(rank - 2), rank - 1, rank - 2]
    return node.target == _aten("t.default") and rank == 2


def untransposed(node: Any) -> Any | None:
    """The tensor whose last-two-dims transpose `node` is (through same-shape no-ops), else None."""
    same_shape = {_aten(n) for n in _SAME_SHAPE}
    shape = _shape(node)
    while getattr(node, "op", None) == "call_function":
        if node.target in same_shape and _shape(node.args[0]) == shape:
            node = node.args[0]
        elif _swaps_last_two(node):
            return node.args[0]
        else:
            return None
    return None


def reorder_transposed_matmuls(gm: Any) -> list[str]:
    """Rewrite every `A.mT @ B.mT` of `gm` (an exported, unlifted graph) as `(B @ A).mT`, in place.

    Returns the rewritten nodes' names. Only matmuls with equal batch shapes are touched (no
    broadcasting to undo).
    """
    rewritten = []
    matmuls = {_aten(n) for n in _MATMULS}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in matmuls:
            continue
        lhs, rhs = node.args[:2]
        a, b = untransposed(lhs), untransposed(rhs)
        if a is None or b is None or _shape(lhs) is None or _shape(rhs) is None:
            continue
        if len(_shape(lhs)) != len(_shape(rhs)) or _shape(lhs)[:-2] != _shape(rhs)[:-2]:
            continue
        with gm.graph.inserting_before(node):
            product = gm.graph.call_function(node.target, (b, a))
            swapped = gm.graph.call_function(_aten("transpose.int"), (product, -2, -1))
        swapped.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
        product.meta.update(swapped.meta)
        node.replace_all_uses_with(swapped)
        gm.graph.erase_node(node)
        rewritten.append(node.name)
    if rewritten:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return rewritten


def _has_activation_matmul(model: Any, example: Any) -> bool:
    """Whether one eager forward pass multiplies two non-parameter tensors (a cheap filter: only
    such models are exported for the rewrite, which costs seconds)."""
    import torch
    from torch.overrides import TorchFunctionMode

    watched = {torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm}

    class Probe(TorchFunctionMode):
        found = False

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in watched and all(isinstance(a, torch.Tensor) and not isinstance(a, torch.nn.Parameter)
                                       and a.dim() >= 2 for a in args[:2]):
                Probe.found = True
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Probe():
        model(example)
    return Probe.found


def convertible_module(model: Any, example: Any) -> tuple[Any, list[str]]:
    """`model` itself, or (when it has a matmul of two transposed views) its reordered exported graph."""
    import torch

    if not _has_activation_matmul(model, example):
        return model, []
    gm = torch.export.export(model, (example,), strict=False).module()
    rewritten = reorder_transposed_matmuls(gm)
    return (gm, rewritten) if rewritten else (model, [])
