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

from typing import Any

from mnv4_deploy.errors import UsageError

def register_quantized_decomposed() -> None:
    """Load the `quantized_decomposed` op library (not registered by `import torch` alone)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401


def xnnpack_qdq_ops() -> Any:
    """A `QuantOps` whose exported form is int8 quantize/dequantize_per_tensor with the plan's grid."""
    import torch

    from mnv4_deploy.quant.modules import QuantOps

    register_quantized_decomposed()
    qd = torch.ops.quantized_decomposed

    class XnnpackQDQOps(QuantOps):
        """Same numbers as `QuantOps`, spelled as the ops XNNPACK's partitioner matches."""

        def fake_quant(self, x: torch.Tensor, q: Any) -> torch.Tensor:
            g = q.as_dtype("int8")
            ints = qd.quantize_per_tensor(x, g.scale, g.zero_point, g.qmin, g.qmax, torch.int8)
            return qd.dequantize_per_tensor(ints, g.scale, g.zero_point, g.qmin, g.qmax, torch.int8)

    return XnnpackQDQOps()


def _freeze_layer(layer: Any) -> None:
    """Constant int8 weights behind one dequantize_per_channel, and a constant float bias.

    The layer's other state (float weights, bias copies) is dropped: torch.export lifts every
    buffer into the program, and unused ones would stay in its constant table beside the
    delegate's own int8 copy (measured: the .pte 1.5x the fp32 one instead of about 0.3x).
    """
    import torch

    qd = torch.ops.quantized_decomposed
    ints = layer.weight_int.to(torch.int8).clone()
    scale = layer.weight_scale.float().clone()
    with torch.no_grad():
        bias = layer.effective_bias().detach().float().clone()
    for unused in ("weight", "bias", "weight_int", "weight_scale", "bias_q"):
        layer._buffers.pop(unused, None)
    layer.register_buffer("xnn_weight_int8", ints)
    layer.register_buffer("xnn_weight_scale", scale)
    layer.register_buffer("xnn_weight_zero", torch.zeros(scale.shape, dtype=torch.int64))
    layer.register_buffer("xnn_bias", bias)
    layer.effective_weight = lambda: qd.dequantize_per_channel(
        layer.xnn_weight_int8, layer.xnn_weight_scale, layer.xnn_weight_zero, 0, -127, 127, torch.int8)
    layer.effective_bias = lambda: layer.xnn_bias


def plan_module(plan: Any) -> Any:
    """The plan's fake-quant model (a copy) with XNNPACK-matchable quantizers and constant weights."""
    from mnv4_deploy.quant.modules import QuantWeighted

    if plan.settings.act_bits != 8:
        raise UsageError(f"XNNPACK quantizes activations to 8 bits; this plan uses {plan.settings.act_bits}-bit",
                         "use a recipe with activations.bits: 8 for executorch-int8")
    model = plan.fake_quant_model()
    ops = xnnpack_qdq_ops()
    for module in model.modules():
        if hasattr(module, "ops"):
            module.ops = ops
        if isinstance(module, QuantWeighted) and module.quantized:
            _freeze_layer(module)
    return model.eval()


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
