"""Attention's layout ops spelled so XNNPACK takes them (MobileNet-V4 hybrid's mobile MQA).

Three spellings in an exported attention block leave work outside XNNPACK's delegate:

- `contiguous` after a quantize -> dequantize pair sits between the dequantize and its consumer,
  so a conv after `permute(...).contiguous()` does not read a dequantize and its int8 pattern is
  not matched ("Expected act input to be dequant node"): the conv and its `dequantize_per_channel`
  weight then stay portable, and ExecuTorch's portable kernels have no such op ("Missing out
  variants" at `to_executorch`). The copy is moved before the pair (same values; it is kept, not
  dropped, because the layout it gives travels on: without it the rest of the network traces
  channels-last and the global pool's decomposition adds an `as_strided_copy` XNNPACK refuses).
- inference `dropout` is an identity that likewise hides the dequantize; it is dropped.
- `unsqueeze` on a middle dimension (the one key/value head of multi-query attention): XNNPACK
  only takes it on the trailing dimension; it is the same view as a `reshape`, which it takes.
- `matmul` broadcasting that one key/value head over the query heads decomposes to
  `expand_copy` (ExecuTorch's matmul decomposition expands even equal batch shapes), which
  XNNPACK has no op for. With the broadcast dimensions folded into the rows
  (`(B, H, N, K) @ (B, 1, K, M)` as `bmm((B, H*N, K), (B, K, M))`) it is one batched matmul of
  the same dot products.
"""
from __future__ import annotations

from typing import Any


def _shape(node: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in node.meta["val"].shape)


def _is_inference_dropout(node: Any) -> bool:
    import torch

    if node.target is not torch.ops.aten.dropout.default:
        return False
    p, train = node.args[1], node.args[2]
    return not train or p == 0


def _quantize_pair_before(node: Any) -> tuple[Any, Any] | None:
    """(quantize, dequantize) when `node` reads a per-tensor dequantize of a quantize; else None."""
    import torch

    from mnv4_deploy.quant.decomposed import register_quantized_decomposed

    register_quantized_decomposed()  # an fp32 program has none, but the names must resolve
    qd = torch.ops.quantized_decomposed
    dq = node.args[0]
    if getattr(dq, "target", None) is not qd.dequantize_per_tensor.default:
        return None
    q = dq.args[0]
    if getattr(q, "target", None) is not qd.quantize_per_tensor.default:
        return None
    return q, dq


def _move_before_quantize(node: Any, q: Any, dq: Any) -> None:
    """`x -> q -> dq -> node` becomes `x -> node -> q -> dq` (node: a layout copy of the same values)."""
    node.replace_all_uses_with(dq)
    node.args = (q.args[0], *node.args[1:])
    q.args = (node, *q.args[1:])
    q.prepend(node)


def _fold_broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    """How many leading batch dims both operands share, when `b` broadcasts over all the rest (or
    none are left); None when `a` broadcasts or the ranks differ (left to ExecuTorch's own lowering)."""
    if len(a) != len(b) or len(a) < 3:
        return None
    batch_a, batch_b = a[:-2], b[:-2]
    shared = 0
    while shared < len(batch_a) and batch_a[shared] == batch_b[shared]:
        shared += 1
    if any(d != 1 for d in batch_b[shared:]):
        return None
    return shared


def _set_meta(node: Any, like: Any, shape: tuple[int, ...]) -> None:
    node.meta = dict(like.meta)
    node.meta["val"] = like.meta["val"].new_empty(shape)


def rewrite_attention_ops(graph_module: Any) -> dict[str, int]:
    """Move layout copies before their quantize pair, drop inference dropout, spell unsqueeze as
    reshape and broadcasting matmuls as bmm; return the counts (same numbers, ops XNNPACK takes)."""
    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    counts = {"dropout_dropped": 0, "contiguous_moved": 0, "unsqueeze_as_reshape": 0, "matmul_as_bmm": 0}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if _is_inference_dropout(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            counts["dropout_dropped"] += 1
        elif node.target is aten.contiguous.default:
            pair = _quantize_pair_before(node)
            if pair is not None:
                _move_before_quantize(node, *pair)
                counts["contiguous_moved"] += 1
        elif node.target is aten.unsqueeze.default:
            with graph.inserting_before(node):
                reshaped = graph.call_function(aten.reshape.default, (node.args[0], list(_shape(node))))
            _set_meta(reshaped, node, _shape(node))
            node.replace_all_uses_with(reshaped)
            graph.erase_node(node)
            counts["unsqueeze_as_reshape"] += 1
        elif node.target is aten.matmul.default:
            left, right = node.args
            a, b = _shape(left), _shape(right)
            shared = _fold_broadcast(a, b)
            if shared is None:
                continue
            batch = 1
            for d in a[:shared]:
                batch *= d
            rows = 1
            for d in a[shared:-1]:
                rows *= d
            left_shape, right_shape, out_shape = (batch, rows, a[-1]), (batch, b[-2], b[-1]), (batch, rows, b[-1])
            with graph.inserting_before(node):
                l3 = graph.call_function(aten.reshape.default, (left, list(left_shape)))
                r3 = graph.call_function(aten.reshape.default, (right, list(right_shape)))
                mm = graph.call_function(aten.bmm.default, (l3, r3))
                back = graph.call_function(aten.reshape.default, (mm, list(_shape(node))))
            _set_meta(l3, left, left_shape)
            _set_meta(r3, right, right_shape)
            _set_meta(mm, node, out_shape)
            _set_meta(back, node, _shape(node))
            node.replace_all_uses_with(back)
            graph.erase_node(node)
            counts["matmul_as_bmm"] += 1
    if any(counts.values()):
        graph_module.recompile()
    return counts
