"""The run's int8 plan as a PyTorch module XNNPACK's partitioner reads as quantized ops.

XNNPACK lowers `dequantize -> conv/linear/add/... -> quantize` patterns spelled with PyTorch's
`quantized_decomposed` ops (what PT2E's `convert_pt2e` writes). The plan's fake-quant model is
rewritten into exactly that form, carrying the plan's constants instead of a quantizer's:

- every enabled activation point: quantize_per_tensor -> dequantize_per_tensor with the plan's
  scale and zero point, in the int8 container (XNNPACK's signed QS8 kernels; a uint8 grid is the
  same grid shifted by 128, not one value changes);
- every quantized layer: the plan's integer weights (int8, [-127, 127]) and per-output-channel
  scales through dequantize_per_channel;
- biases: the plan's int32 bias times input_scale * weight_scale as a float constant, the
  form XNNPACK's quantizer config writes (its lowering re-quantizes the bias onto
  input_scale * weight_scale, which gives back the plan's integers); an explicit int32
  dequantize_per_channel bias makes the partitioner fail ("dependency cycles").

The numbers are the plan's fake-quant model's (a test checks it before lowering).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mnv4_deploy.errors import UsageError

if TYPE_CHECKING:
    from torch import fx

    from mnv4_deploy.quant import QuantPlan


def plan_module(plan: "QuantPlan") -> "fx.GraphModule":
    """The plan's fake-quant model (a copy) with XNNPACK-matchable quantizers and constant weights."""
    from mnv4_deploy.quant.decomposed import DecomposedQDQOps

    if plan.settings.act_bits != 8:
        raise UsageError(f"XNNPACK quantizes activations to 8 bits; this plan uses {plan.settings.act_bits}-bit",
                         "use a recipe with activations.bits: 8 for executorch-int8")
    return plan.export_model(DecomposedQDQOps(int8_container=True))


def duplicate_shared_dequantize(graph_module: Any) -> int:
    """Give every consumer of a dequantize_per_tensor its own copy, as PT2E's convert does.

    A shared dequantize (a residual input feeding both a conv and an ADD) makes XNNPACK's
    partitioner group nodes that do not form a closed subgraph ("found dependency cycles").
    torchao's DuplicateDQPass only acts on annotated graphs, so this is the same rewrite for ours.
    """
    import torch

    target = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    copies = 0
    for node in list(graph_module.graph.nodes):
        if node.op == "call_function" and node.target is target and len(node.users) > 1:
            for user in list(node.users)[1:]:
                with graph_module.graph.inserting_after(node):
                    copy = graph_module.graph.node_copy(node)
                user.replace_input_with(node, copy)
                copies += 1
    graph_module.recompile()
    return copies
