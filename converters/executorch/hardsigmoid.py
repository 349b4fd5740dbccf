"""Hard-sigmoid spelled with float constants, so XNNPACK takes all of it.

XNNPACK has no hard-sigmoid op, so `to_edge` decomposes `aten.hardsigmoid` with PyTorch's
decomposition, `clamp(x + 3, 0, 6) / 6`, whose integer 3 and 6 become int64 tensor constants
cast to float by `dim_order_ops._to_dim_order_copy`. XNNPACK refuses a cast from int64
("invalid dtype"), so every MobileNet-V3 squeeze-excite gate left two casts in the portable
kernels. Writing the same function with float constants (`(x + 3.0).clamp(0.0, 6.0) / 6.0`,
PyTorch's own kernel order: add, clamp, divide) gives XNNPACK only ops it delegates, with
bit-identical fp32 results.
"""
from __future__ import annotations

from typing import Any

from .graph_pass import rewrite_calls


def spell_hardsigmoid_with_float_constants(graph_module: Any) -> int:
    """Replace every `aten.hardsigmoid` of an exported graph by add/clamp/div on float scalars; return the count."""
    import torch

    aten = torch.ops.aten

    def rewrite(graph: Any, node: Any) -> bool:
        with graph.inserting_before(node):
            shifted = graph.call_function(aten.add.Tensor, (node.args[0], 3.0))
            clamped = graph.call_function(aten.clamp.default, (shifted, 0.0, 6.0))
            gate = graph.call_function(aten.div.Tensor, (clamped, 6.0))
        for new in (shifted, clamped, gate):  # elementwise: same shape and dtype as the gate
            new.meta = dict(node.meta)
        node.replace_all_uses_with(gate)
        graph.erase_node(node)
        return True

    return rewrite_calls(graph_module, aten.hardsigmoid.default, rewrite)
