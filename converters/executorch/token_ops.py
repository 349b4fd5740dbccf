"""Token-path ops spelled so XNNPACK takes them: means that drop dimensions, and one token picked.

XNNPACK's partitioner takes `mean.dim` only with `keepdim=True` ("mean.dim only supports
keepdim=True"), and a user's global pool is usually `x.mean((2, 3))` feeding a Linear or a
`torch.cat` with a token. The mean is rewritten to keep its dimensions and a reshape drops
them after it: after the mean's quantize/dequantize pair when it has one (so the int8 pattern
dequantize -> mean -> quantize that XNNPACK matches stays whole), re-quantized on the same grid
after the reshape, as the plan does after any reshape. Without that pair, XNNPACK's int8 linear
read the reshape's float input on a wrong grid (a 2-D pool into a Linear: cosine 0.73).

Picking one token, `tokens[:, 0]`, exports as `select`, which XNNPACK has no kernel for (it stays
in ExecuTorch's portable kernels, where the int8 target refuses it): it is the same values as a
one-wide `slice` (which XNNPACK takes) reshaped to drop that dimension. Joining a pooled map
with that token (`torch.cat`) needs both on the concat's grid (`requantize_concat_inputs`).
"""
from __future__ import annotations

from typing import Any

from .graph_pass import rewrite_calls


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
    """`node -> quantize -> dequantize` with the given pair's grid, taking all of `node`'s uses."""
    dq = _requantize_after_copy(graph, node, quantize, dequantize)
    q = dq.args[0]
    node.replace_all_uses_with(dq, delete_user_cb=lambda user: user is not q)
    return dq


def spell_means_with_keepdim(graph_module: Any) -> int:
    """`mean(x, dims)` -> `mean(x, dims, keepdim=True)` then a reshape; returns how many."""
    import torch

    def rewrite(graph: Any, node: Any) -> bool:
        x, dims = node.args[0], node.args[1]
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if keepdim or not dims:
            return False
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
        return True

    return rewrite_calls(graph_module, torch.ops.aten.mean.dim, rewrite)


def spell_selects_as_slices(graph_module: Any) -> int:
    """`select(x, dim, i)` -> `slice(x, dim, i, i + 1)` then a reshape; returns how many."""
    import torch

    aten = torch.ops.aten

    def rewrite(graph: Any, node: Any) -> bool:
        x, dim, index = node.args
        size = int(x.meta["val"].shape[dim])
        index = index % size
        shape = tuple(int(d) for d in node.meta["val"].shape)
        with graph.inserting_before(node):
            sliced = graph.call_function(aten.slice.Tensor, (x, dim, index, index + 1))
            dropped = graph.call_function(aten.reshape.default, (sliced, list(shape)))
        sliced.meta = dict(node.meta)
        kept = list(x.meta["val"].shape)
        kept[dim] = 1
        _with_shape(sliced, tuple(int(d) for d in kept))
        dropped.meta = dict(node.meta)
        node.replace_all_uses_with(dropped)
        graph.erase_node(node)
        return True

    return rewrite_calls(graph_module, aten.select.int, rewrite)


def requantize_concat_inputs(graph_module: Any) -> int:
    """int8 `cat` of inputs on different grids: each input re-quantized on the output's grid first.

    XNNPACK's int8 concatenate copies bytes, so it needs every input on the output's grid (it
    refused to compile `torch.cat([pooled, token])` otherwise); quantizing each input with the
    output's grid before the concat is the same numbers as quantizing the concat's output.
    """
    import torch

    from mnv4_deploy.quant.decomposed import register_quantized_decomposed

    register_quantized_decomposed()
    qd = torch.ops.quantized_decomposed
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.cat.default:
            continue
        users = list(node.users)
        inputs = node.args[0]
        if len(users) != 1 or users[0].target is not qd.quantize_per_tensor.default:
            continue
        if not all(getattr(i, "target", None) is qd.dequantize_per_tensor.default for i in inputs):
            continue
        q_out = users[0]
        grid = tuple(q_out.args[1:])
        if all(tuple(i.args[1:]) == grid for i in inputs):
            continue
        dq_out = next(iter(q_out.users))
        requantized = []
        for dq in inputs:
            if tuple(dq.args[1:]) == grid:
                requantized.append(dq)
                continue
            requantized.append(_requantize_after_copy(graph, dq, q_out, dq_out))
        node.args = (requantized, *node.args[1:])
        count += 1
    if count:
        graph_module.recompile()
    return count


def _requantize_after_copy(graph: Any, node: Any, quantize: Any, dequantize: Any) -> Any:
    """A new `node -> quantize -> dequantize` on the given pair's grid (node's other uses untouched)."""
    shape = tuple(node.meta["val"].shape)
    with graph.inserting_after(node):
        q = graph.call_function(quantize.target, (node, *quantize.args[1:]), dict(quantize.kwargs))
    with graph.inserting_after(q):
        dq = graph.call_function(dequantize.target, (q, *dequantize.args[1:]), dict(dequantize.kwargs))
    for new, like in ((q, quantize), (dq, dequantize)):
        new.meta = dict(like.meta)
        _with_shape(new, shape)
    return dq
