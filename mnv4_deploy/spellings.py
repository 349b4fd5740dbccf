"""Functional attention spellings made explicit at canonicalization, or refused naming the layer.

Users write attention with calls no module swap can reach: `torch.einsum`,
`F.scaled_dot_product_attention`, and softmax over an axis other than the last. Each is a
single opaque op to some consumers: ONNX opset 11 (the BPU bundle) has no Einsum and no
attention op, the int8 plan would quantize a fused attention's output but nothing inside it,
and full-integer TFLite and XNNPACK take softmax only over the last axis (LiteRT decomposes
any other axis into REDUCE_MAX/EXP kernels that stay float). So a model that uses them is
traced with torch.fx and each call is replaced by the same function in plain ops:

- `einsum` of one or two operands: permutes, reshapes, one (batched) matmul, sums;
- `scaled_dot_product_attention` (no mask, no dropout, not causal): `softmax(q k^T * s) v`;
- softmax over axis d: transpose(d, -1), softmax over the last axis, transpose back.

A form with no explicit equivalent here (an attention mask, a causal flag, an einsum diagonal)
is refused before any conversion, naming the op and the layer. A model without these calls is
returned untouched; one that torch.fx cannot trace is too, with the reason recorded.
`canonicalize.verify` checks the rewritten model against the original like every fold.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode

from .errors import UsageError

EINSUM = "einsum"
SDPA = "scaled_dot_product_attention"
SOFTMAX_AXIS = "softmax_to_last_axis"
_SOFTMAX_FUNCS = (torch.softmax, F.softmax, torch.Tensor.softmax)


# ---- the explicit forms (plain torch ops; they also run on fx proxies) ----------------------


def _einsum_terms(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """Operand and output index strings, with `...` expanded and an implicit output made explicit."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"{len(terms)} operand terms for {len(ranks)} operands")
    used = set(eq) - set(".,->")
    spare = iter(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in used)
    ellipsis = ""
    if "..." in eq:
        width = max(r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t)
        ellipsis = "".join(next(spare) for _ in range(width))
        terms = [t.replace("...", ellipsis[len(ellipsis) - (r - len(t.replace("...", ""))):])
                 for t, r in zip(terms, ranks)]
    if not arrow:
        counts = Counter("".join(terms))
        out = ellipsis + "".join(sorted(c for c in counts if counts[c] == 1 and c not in ellipsis))
    else:
        out = out.replace("...", ellipsis)
    return terms, out


def einsum_unsupported(equation: str, ranks: Sequence[int]) -> str | None:
    """Why `einsum(equation)` has no explicit form here (None when it has one)."""
    if len(ranks) not in (1, 2):
        return f"{len(ranks)} operands (one or two are made explicit)"
    try:
        terms, out = _einsum_terms(equation, ranks)
    except ValueError as exc:
        return str(exc)
    for t, r in zip(terms, ranks):
        if len(t) != r:
            return f"term {t!r} does not match an operand of rank {r}"
        if len(set(t)) != len(t):
            return f"a repeated index in {t!r} (a diagonal)"
    if len(set(out)) != len(out) or not set(out) <= set("".join(terms)):
        return f"output {out!r} repeats an index or names one no operand has"
    return None


def _permute(t: torch.Tensor, have: str, want: str) -> torch.Tensor:
    order = [have.index(c) for c in want]
    return t if order == sorted(order) else t.permute(*order)


def _sum_out(t: torch.Tensor, term: str, keep: str) -> tuple[torch.Tensor, str]:
    dims = [i for i, c in enumerate(term) if c not in keep]
    return (t.sum(dim=dims), "".join(c for c in term if c in keep)) if dims else (t, term)


def explicit_einsum(equation: str, operands: Sequence[torch.Tensor], shapes: Sequence[Sequence[int]]) -> torch.Tensor:
    """`torch.einsum(equation, *operands)` as permutes, reshapes, one matmul and sums.

    `shapes` are the operands' static shapes (the first group of every reshape is left -1, so
    the batch stays free); call `einsum_unsupported` first.
    """
    terms, out = _einsum_terms(equation, [len(s) for s in shapes])
    size = {c: int(d) for t, s in zip(terms, shapes) for c, d in zip(t, s)}
    if len(operands) == 1:
        t, term = _sum_out(operands[0], terms[0], out)
        return _permute(t, term, out)
    (a, ta), (b, tb) = _sum_out(operands[0], terms[0], out + terms[1]), _sum_out(operands[1], terms[1], out + terms[0])
    batch = [c for c in out if c in ta and c in tb]
    contract = [c for c in ta if c in tb and c not in out]
    a_free = [c for c in ta if c not in tb]
    b_free = [c for c in tb if c not in ta]
    k = math.prod(size[c] for c in contract)
    m, n = math.prod(size[c] for c in a_free), math.prod(size[c] for c in b_free)
    lead = [-1] if batch else []
    a = _permute(a, ta, "".join(batch + a_free + contract)).reshape(*lead, *([m] if lead else [-1]), k)
    b = _permute(b, tb, "".join(batch + contract + b_free)).reshape(*lead, k, *([n] if lead else [-1]))
    product = a @ b  # (batch, m, n), or (m, n) without batch indices
    grouped = batch + a_free + b_free
    if not (len(batch) <= 1 and len(a_free) == 1 and len(b_free) == 1):
        sizes = [size[c] for c in grouped]
        product = product.reshape(-1, *sizes[1:]) if sizes else product.reshape(())
    return _permute(product, "".join(grouped), out)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, scale=scale)` without mask, dropout or causality."""
    return ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v


def softmax_last_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over `dim` computed over the last axis between two transposes."""
    return x.transpose(dim, -1).softmax(dim=-1).transpose(dim, -1)


# ---- finding and rewriting the calls ----------------------------------------------------------


def _softmax_dim(args: tuple, kwargs: dict) -> Any:
    return kwargs.get("dim", args[1] if len(args) > 1 else None)


class _Probe(TorchFunctionMode):
    """Counts, in one eager forward pass, the calls this module makes explicit."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.einsum:
            self.found[EINSUM] += 1
        elif func is F.scaled_dot_product_attention:
            self.found[SDPA] += 1
        elif func in _SOFTMAX_FUNCS and isinstance(args[0], torch.Tensor):
            dim = _softmax_dim(args, kwargs)
            if dim is None or dim % max(args[0].dim(), 1) != args[0].dim() - 1:
                self.found[SOFTMAX_AXIS] += 1
        return func(*args, **kwargs)


def probe(model: nn.Module, example: torch.Tensor) -> Counter:
    """Which spellings `model` uses that `make_explicit` rewrites (one forward pass)."""
    mode = _Probe()
    with torch.no_grad(), mode:
        model(example)
    return mode.found


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[type, ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def layer_of(node: fx.Node) -> str:
    """The module path a traced call belongs to (its innermost enclosing module), for messages."""
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    return path or "the model's own forward"


def _shape(node: Any) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    return node.kwargs.get(name, node.args[index] if len(node.args) > index else default)


def _softmax_call(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, int] | None:
    """(input, dim) when `node` is a softmax over an axis other than the last."""
    if node.op == "call_method" and node.target == "softmax":
        x, dim = node.args[0], _arg(node, 1, "dim")
    elif node.op == "call_function" and node.target in _SOFTMAX_FUNCS:
        x, dim = node.args[0], _arg(node, 1, "dim")
    elif node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Softmax):
        x, dim = node.args[0], gm.get_submodule(node.target).dim
    else:
        return None
    if not isinstance(x, fx.Node) or "tensor_meta" not in x.meta:
        return None
    rank = len(_shape(x))
    if dim is None:  # legacy implicit dim, as F.softmax picks it
        dim = 0 if rank in (0, 1, 3) else 1
    return (x, dim % rank) if rank and dim % rank != rank - 1 else None


def _refuse(node: fx.Node, what: str, fix: str, why: str = "") -> UsageError:
    return UsageError(f"layer {layer_of(node)}: {what} has no explicit export form{': ' + why if why else ''}", fix)


def _sdpa_scale(node: fx.Node) -> float:
    if _arg(node, 3, "attn_mask") is not None or _arg(node, 5, "is_causal", False):
        raise _refuse(node, "F.scaled_dot_product_attention with attn_mask/is_causal",
                      "call it without a mask (slice the keys instead), or use nn.MultiheadAttention without masks")
    if _arg(node, 4, "dropout_p", 0.0) or _arg(node, 7, "enable_gqa", False):
        raise _refuse(node, "F.scaled_dot_product_attention with dropout_p or enable_gqa",
                      "pass dropout_p=0.0 for inference and repeat the key/value heads yourself")
    scale = _arg(node, 6, "scale")
    return float(scale) if scale is not None else _shape(node.args[0])[-1] ** -0.5


def _replace(gm: fx.GraphModule, node: fx.Node, fn: Any, inputs: Sequence[fx.Node], *extra: Any) -> None:
    """Trace `fn(*proxies, *extra)` in place of `node`."""
    tracer = fx.proxy.GraphAppendingTracer(gm.graph)
    before = set(gm.graph.nodes)
    with gm.graph.inserting_before(node):
        out = fn(*[fx.Proxy(n, tracer) for n in inputs], *extra)
    for new in set(gm.graph.nodes) - before:  # the new nodes belong to the replaced call's layer
        if "nn_module_stack" in node.meta:
            new.meta["nn_module_stack"] = node.meta["nn_module_stack"]
    node.replace_all_uses_with(out.node)
    gm.graph.erase_node(node)


def _rewrite(gm: fx.GraphModule) -> Counter:
    done: Counter = Counter()
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.einsum:
            equation, rest = node.args[0], node.args[1:]
            operands = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)
            shapes = [_shape(o) for o in operands]
            why = einsum_unsupported(equation, [len(s) for s in shapes])
            if why:
                raise _refuse(node, f"torch.einsum({equation!r})", "write it as permute/reshape/matmul", why)
            _replace(gm, node, lambda *ops: explicit_einsum(equation, ops, shapes), operands)
            done[EINSUM] += 1
        elif node.op == "call_function" and node.target is F.scaled_dot_product_attention:
            scale = _sdpa_scale(node)
            _replace(gm, node, explicit_attention, node.args[:3], scale)
            done[SDPA] += 1
        else:
            found = _softmax_call(gm, node)
            if found is not None:
                _replace(gm, node, softmax_last_axis, [found[0]], found[1])
                done[SOFTMAX_AXIS] += 1
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return done


def make_explicit(model: nn.Module, example: torch.Tensor,
                  leaves: tuple[type, ...] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """`model` with its einsum / fused attention / off-axis softmax calls in plain ops.

    Returns (model or its rewritten fx.GraphModule, what was done). `leaves`: module types
    kept as single calls (the canonical form's own modules). Raises `UsageError` naming the
    layer for a call with no explicit form.
    """
    found = probe(model, example)
    if not found:
        return model, {}
    try:
        gm = fx.GraphModule(model, _Tracer(leaves).trace(model))
    except Exception as exc:  # fx raises many types for untraceable Python
        return model, {"found": dict(found), "not_rewritten": f"torch.fx cannot trace the model: "
                                                               f"{type(exc).__name__}: {str(exc)[:200]}"}
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    return gm.eval(), {"rewritten": dict(_rewrite(gm))}
