"""Emit a QuantPlan as a QDQ ONNX model, with the plan's own grids (not recomputed by ORT).

The fake-quant graph is exported through the TorchScript exporter with its `QuantOps`
swapped for ops whose ONNX form is QuantizeLinear/DequantizeLinear with constant scales and
zero points: activations Q->DQ on their per-tensor grid (uint8 or int8), weights as int8
initializers behind a per-channel DequantizeLinear (axis 0), biases as int32 on
input_scale * weight_scale. So the exported graph is, node for node, what the fake-quant
model computes, and onnxruntime fuses the Q/DQ islands into QLinearConv, QLinearAdd, QGemm...

Weights go out as int8 (zero point 0) or as the same grid in uint8 (zero point 128). On x86
CPUs without VNNI onnxruntime's u8s8 kernels add neighbouring products in saturating int16
(quant/overflow.py; measured here: -5.5 pt top-1 on the digits model, cosine 0.2 against the
fake-quant model), while its u8u8 kernels do not. `weight_dtype="auto"` writes int8 when no
pair sum of the plan can saturate (the plan's overflow fix, or `weights.dense_bits: 7`): the
artifact is then exact on every CPU and keeps the fast u8s8 kernels. For a plan that may
saturate it falls back to the host's class: int8 on VNNI (or non-x86) hosts, uint8 elsewhere;
such an artifact is exact on the CPU class it was written on only.

This is the only module that knows about ONNX.
"""
from __future__ import annotations

import collections
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import BackendMissing, UsageError
from ..host import has_vnni
from ..validate import ParityMetrics, compare
from .modules import QuantOps
from .plan import QuantPlan
from .qparams import QParams

_ONNX_DTYPES = {"uint8": torch.uint8, "int8": torch.int8}
WEIGHT_DTYPES = ("auto", "int8", "uint8")
# The constants of the export in progress, looked up by the symbolics through an int key
# (the TorchScript exporter passes non-tensor arguments of autograd Functions as Python
# values; arrays and floats break its peephole pass, ints do not).
_PAYLOAD: dict[int, Any] = {}


def _const(g: Any, array: np.ndarray | torch.Tensor) -> Any:
    return g.op("Constant", value_t=torch.as_tensor(array))


class _QDQActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, key: int) -> torch.Tensor:
        return x.clone()  # only traced during export; the symbolic below defines the node

    @staticmethod
    def symbolic(g: Any, x: Any, key: int) -> Any:
        q: QParams = _PAYLOAD[key]
        scale = _const(g, torch.tensor(q.scale, dtype=torch.float32))
        zp = _const(g, torch.tensor(q.zero_point, dtype=_ONNX_DTYPES[q.dtype]))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zp), scale, zp)


class _DQConstant(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, key: int) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def symbolic(g: Any, x: Any, key: int) -> Any:
        ints, scale, zero_point = _PAYLOAD[key]
        zp = np.full(scale.shape, zero_point, ints.dtype)
        return g.op("DequantizeLinear", _const(g, ints), _const(g, scale), _const(g, zp), axis_i=0)


def host_weight_dtype() -> str:
    """'int8' where u8s8 integer kernels are exact (VNNI/AMX x86, ARM), else 'uint8'."""
    return "int8" if has_vnni() else "uint8"


def auto_weight_dtype(plan: QuantPlan) -> str:
    """int8 when no pair sum of `plan` can saturate (exact everywhere), else the host's `host_weight_dtype`."""
    return "int8" if not plan.saturating_layers else host_weight_dtype()


class OnnxQDQOps(QuantOps):
    """QuantOps whose exported form is Q/DQ nodes with the plan's constants."""

    def __init__(self, weight_dtype: str = "int8"):
        self.weight_dtype = weight_dtype

    def fake_quant(self, x: torch.Tensor, q: QParams) -> torch.Tensor:
        if q.bits != 8:
            raise UsageError(f"ONNX QDQ needs 8-bit activations; this plan uses {q.bits}-bit",
                             "use a recipe with activations.bits: 8 for ONNX")
        key = len(_PAYLOAD)
        _PAYLOAD[key] = q
        return _QDQActivation.apply(x, key)

    def weight(self, w_int: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        key = len(_PAYLOAD)
        ints = w_int.numpy().astype(np.int16)
        if self.weight_dtype == "uint8":  # the same grid, shifted: q + 128 with zero point 128
            _PAYLOAD[key] = ((ints + 128).astype(np.uint8), scale.numpy().astype(np.float32), 128)
        else:
            _PAYLOAD[key] = (ints.astype(np.int8), scale.numpy().astype(np.float32), 0)
        return _DQConstant.apply(super().weight(w_int, scale), key)

    def bias(self, b_int: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        key = len(_PAYLOAD)
        _PAYLOAD[key] = (b_int.numpy().astype(np.int32), scale.numpy().astype(np.float32), 0)
        return _DQConstant.apply(super().bias(b_int, scale), key)


def export_qdq_onnx(plan: QuantPlan, path: str | Path, example: torch.Tensor, opset: int = 17,
                    weight_dtype: str = "auto", log: Callable[[str], None] = lambda _: None) -> Path:
    """Write `plan` as a QDQ ONNX model (dynamic batch) to `path`, atomically.

    weight_dtype: "int8", "uint8" (same values, zero point 128) or "auto" (`auto_weight_dtype`).
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise UsageError(f"weight dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    if plan.settings.act_bits != 8:
        raise UsageError(f"ONNX QDQ needs 8-bit activations; this plan uses {plan.settings.act_bits}-bit",
                         "use a recipe with activations.bits: 8 for ONNX")
    if weight_dtype == "auto":
        weight_dtype = auto_weight_dtype(plan)
    try:
        import onnx
    except ImportError:
        raise BackendMissing("the onnx package is not installed", "install mnv4-deploy[onnx]") from None
    if opset < 13:
        raise UsageError(f"QDQ with per-channel weights needs opset >= 13, asked for {opset}")
    path = Path(path)
    gm = plan.fake_quant_model()
    ops = OnnxQDQOps(weight_dtype)
    for module in gm.modules():
        if hasattr(module, "ops"):
            module.ops = ops
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    _PAYLOAD.clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(gm, (example,), tmp, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              do_constant_folding=True)
        model = onnx.load(tmp)
        onnx.checker.check_model(model)
        os.replace(tmp, path)
    finally:
        _PAYLOAD.clear()
        if os.path.exists(tmp):
            os.unlink(tmp)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    log(f"wrote {path.name}: {counts.get('QuantizeLinear', 0)} Q, {counts.get('DequantizeLinear', 0)} DQ, "
        f"{counts.get('Conv', 0)} Conv nodes, {weight_dtype} weights")
    return path


def ort_session(path: str | Path, threads: int = 2, optimized_path: str | Path | None = None,
                disable_optimizations: bool = False) -> Any:
    """An onnxruntime CPU session; `optimized_path` saves the graph ORT actually runs."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendMissing("onnxruntime is not installed", "install mnv4-deploy[onnx]") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if disable_optimizations:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_session(session: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0]
                           for i in range(0, x.shape[0], batch_size)])


def optimized_op_counts(path: str | Path, threads: int = 2) -> dict[str, int]:
    """Op types in the graph onnxruntime runs after its QDQ fusions (QLinearConv, ...)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "optimized.onnx"
        ort_session(path, threads, optimized_path=opt)
        return dict(collections.Counter(n.op_type for n in onnx.load(str(opt)).graph.node))


def qdq_parity(plan: QuantPlan, path: str | Path, inputs: np.ndarray, threads: int = 2) -> ParityMetrics:
    """How closely onnxruntime's int8 execution of `path` follows `plan.fake_quant_model()`."""
    with torch.no_grad():
        reference = plan.fake_quant_model()(torch.from_numpy(inputs)).numpy()
    return compare(reference, run_session(ort_session(path, threads), inputs))
