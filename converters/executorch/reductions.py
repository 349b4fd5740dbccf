"""Means that drop their reduced dimensions, spelled so XNNPACK takes them.

XNNPACK's partitioner takes `mean.dim` only with `keepdim=True` ("mean.dim only supports
keepdim=True"), and a user's global pool is usually `x.mean((2, 3))` feeding a Linear or a
`torch.cat` with a token. The mean is rewritten to keep its dimensions and a reshape drops
them after it: after the mean's quantize/dequantize pair when it has one (so the int8 pattern
dequantize -> mean -> quantize that XNNPACK matches stays whole), re-quantized on the same grid
after the reshape, as the plan does after any reshape. Without that pair, XNNPACK's int8 linear
read the reshape's float input on a wrong grid (a 2-D pool into a Linear: cosine 0.73).
"""
from __future__ import annotations

from typing import Any


def _dequantizes_after(node: Any) -> list[Any]:
    """The dequantizes of `node -> quantize -> dequantize(s)` when that is its only use; else []."""
    import torch

    from mnv4_deploy.quant.decomposed import register_quantized_decomposed

    register_quantized_decomposed()
    qd = torch.ops.quantized_decomposed
    users = list(node.users)
    if len(users) != 1 or users[0].target is not qd.quantize_per_tensor.default:
        return []
    dequantizes = list(users[0].users)
    return dequantizes if all(d.target is qd.dequantize_per_tensor.default for d in dequantizes) else []


def _with_shape(node: Any, shape: tuple[int, ...]) -> None:
    node.meta["val"] = node.meta["val"].new_empty(shape)


def _reshape_after(graph: Any, end: Any, shape: tuple[int, ...]) -> Any:
    """`end -> reshape(shape)`, the reshape taking every other use of `end`."""
    import torch

    with graph.inserting_after(end):
        dropped = graph.call_function(torch.ops.aten.reshape.default, (end, list(shape)))
    dropped.meta = dict(end.meta)
    _with_shape(dropped, shape)
    end.replace_all_uses_with(dropped, delete_user_cb=lambda user: user is not dropped)
    return dropped


def _requantize_after(graph: Any, node: Any, quantize: Any, dequantize: Any) -> Any:
    """`node -> quantize -> dequantize` with the given pair's grid; returns the new dequantize."""
    shape = tuple(node.meta["val"].shape)
    with graph.inserting_after(node):
        q = graph.call_function(quantize.target, (node, *quantize.args[1:]), dict(quantize.kwargs))
    with graph.inserting_after(q):
        dq = graph.call_function(dequantize.target, (q, *dequantize.args[1:]), dict(dequantize.kwargs))
    for new, like in ((q, quantize), (dq, dequantize)):
        new.meta = dict(like.meta)
        _with_shape(new, shape)
    node.replace_all_uses_with(dq, delete_user_cb=lambda user: user is not q)
    return dq


def spell_means_with_keepdim(graph_module: Any) -> int:
    """`mean(x, dims)` -> `mean(x, dims, keepdim=True)` then a reshape; returns how many."""
    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.mean.dim:
            continue
        x, dims = node.args[0], node.args[1]
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if keepdim or not dims:
            continue
        out_shape = tuple(int(d) for d in node.meta["val"].shape)
        rank = x.meta["val"].dim()
        kept = tuple(1 if i in {d % rank for d in dims} else int(s) for i, s in enumerate(x.meta["val"].shape))
        node.args, node.kwargs = (x, dims, True), {}
        dequantizes = _dequantizes_after(node)
        for step in (node, *([next(iter(node.users))] if dequantizes else []), *dequantizes):
            _with_shape(step, kept)
        for end in dequantizes or [node]:
            dropped = _reshape_after(graph, end, out_shape)
            if dequantizes:  # re-quantized on the same grid, as the plan does after a reshape
                dropped = _requantize_after(graph, dropped, next(iter(node.users)), end)
        count += 1
    if count:
        graph_module.recompile()
    return count
