"""The plan's arithmetic spelled with PyTorch's `quantized_decomposed` ops (PT2E's convert form).

Exporters that read quantized programs from torch.export (coremltools' frontend, ExecuTorch's
XNNPACK partitioner) recognise `quantize_per_tensor -> dequantize_per_tensor` pairs and
`dequantize_per_channel` weights and map them one for one onto their own int8 ops. These ops
compute exactly what `QuantOps` computes (tests check it), so swapping them into
`QuantPlan.export_model` changes how the graph is written, not a number.
"""
from __future__ import annotations

import torch

from .modules import QuantOps
from .qparams import QParams

_CONTAINERS = {"int8": torch.int8, "uint8": torch.uint8}
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127  # the plan's symmetric int8 weights


def register_quantized_decomposed() -> None:
    """Load the `quantized_decomposed` op library (`import torch` alone does not register it)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401


class DecomposedQDQOps(QuantOps):
    """Activation quantizers and frozen weights as quantized_decomposed ops with the plan's constants.

    `int8_container`: write every activation grid in the int8 container (a uint8 grid is the
    same grid shifted by 128, not one value changes), for runtimes with signed kernels only;
    otherwise each grid keeps its own container (uint8 or int8).
    """

    def __init__(self, int8_container: bool = False):
        register_quantized_decomposed()
        self.int8_container = int8_container

    def fake_quant(self, x: torch.Tensor, q: QParams) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        g = q.as_dtype("int8") if self.int8_container else q
        dtype = _CONTAINERS[g.dtype]
        ints = qd.quantize_per_tensor(x, g.scale, g.zero_point, g.qmin, g.qmax, dtype)
        return qd.dequantize_per_tensor(ints, g.scale, g.zero_point, g.qmin, g.qmax, dtype)

    def frozen_weight(self, w_int: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized_decomposed.dequantize_per_channel(
            w_int, scale, zero_point, 0, WEIGHT_QMIN, WEIGHT_QMAX, torch.int8)
