"""The float ONNX that goes into the bundle, and the decision whether the march can take it.

`hb_mapper` reads ONNX opset 10/11 with IR version <= 7 and quantizes it itself, so the bundle
holds the canonical (folded) model exported at opset 11 and simplified, with named I/O. One
rewrite makes classifiers fully BPU on X3 as well: the `Flatten -> Gemm` head becomes a 1x1
`Conv` with a (1, classes, 1, 1) output, because Flatten/Reshape run on the CPU on bernoulli2
(hb_mapper itself turns a Gemm into a Conv plus a CPU Reshape; the vendor then removes that
Reshape with `hb_model_modifier -r`). On a march whose BPU lacks `HardSigmoid` (X3), each one
(MobileNet-V3's hard-swish and hard-sigmoid gates at opset 11) becomes `Mul -> Add -> Clip`,
the same function in ops the BPU runs. Ops the march cannot run at all are refused; ops that
would fall back to the CPU are reported, and refused with `--strict`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnv4_deploy.errors import OpsOffAccelerator, UsageError

from .march import March, OpCheck, check_onnx_ops

OFF_BPU_FATAL = ("not_integrated", "unsupported")  # hb_mapper refuses these: the bundle would not compile


def export_bpu_onnx(model: Any, example: Any, path: Path, opset: int, simplify: bool, march: March) -> dict[str, Any]:
    """Write the bundle's ONNX (fixed batch 1) to `path`; return facts for the metadata."""
    import onnx

    from mnv4_deploy.converters.onnx import export_float_onnx, op_histogram

    if opset not in march.onnx_opsets:
        raise UsageError(f"--opset {opset}: {march.name} accepts ONNX opset {', '.join(map(str, march.onnx_opsets))}",
                         f"drop --opset (the BPU targets use {max(march.onnx_opsets)})")
    meta = export_float_onnx(model, example, path, opset, dynamic_batch=False, simplify=simplify)
    proto = onnx.load(str(path))
    meta["conv_head"] = conv_head(proto)
    meta["hard_sigmoids_as_clip"] = 0 if "HardSigmoid" in march.bpu_ops else hard_sigmoid_as_clip(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    meta["ir_version"] = int(proto.ir_version)
    meta["op_histogram"] = op_histogram(proto)
    meta["output_shape"] = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    return meta


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def conv_head(proto: Any) -> bool:
    """Rewrite a trailing `X(N,C,1,1) -> Flatten(axis=1) -> Gemm(W, b) -> output` as one 1x1 Conv.

    Returns whether it rewrote; any other graph is left as it is (the op check then reports it).
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    if len(graph.output) != 1:
        return False
    out = graph.output[0]
    gemm = next((n for n in graph.node if out.name in n.output), None)
    inits = {i.name: i for i in graph.initializer}
    if gemm is None or gemm.op_type != "Gemm" or len(gemm.input) != 3:
        return False
    if not {gemm.input[1], gemm.input[2]} <= set(inits):
        return False
    if _attr(gemm, "alpha", 1.0) != 1.0 or _attr(gemm, "beta", 1.0) != 1.0 or _attr(gemm, "transA", 0):
        return False
    flatten = next((n for n in graph.node if gemm.input[0] in n.output), None)
    if flatten is None or flatten.op_type != "Flatten" or _attr(flatten, "axis", 1) != 1:
        return False
    if sum(gemm.input[0] in n.input for n in graph.node) != 1 or _spatial(proto, flatten.input[0]) != (1, 1):
        return False
    weight = numpy_helper.to_array(inits[gemm.input[1]])
    weight = weight if _attr(gemm, "transB", 0) else weight.T  # -> (classes, channels)
    bias = numpy_helper.to_array(inits[gemm.input[2]])
    if bias.ndim != 1 or bias.shape[0] != weight.shape[0]:
        return False
    w_name, b_name = gemm.name + "_conv_weight", gemm.name + "_conv_bias"
    conv = helper.make_node("Conv", [flatten.input[0], w_name, b_name], list(gemm.output), name=gemm.name + "_as_conv",
                            kernel_shape=[1, 1])
    index = list(graph.node).index(gemm)
    for node in (gemm, flatten):
        graph.node.remove(node)
    graph.node.insert(index - 1, conv)
    used = {i for n in graph.node for i in n.input}
    for name in (gemm.input[1], gemm.input[2]):
        if name not in used:
            graph.initializer.remove(inits[name])
    graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(weight[:, :, None, None]), w_name),
                              numpy_helper.from_array(bias, b_name)])
    dims = out.type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 1
    out.type.tensor_type.shape.Clear()
    for value in (batch, weight.shape[0], 1, 1):
        out.type.tensor_type.shape.dim.add().dim_value = int(value)
    return True


def hard_sigmoid_as_clip(proto: Any) -> int:
    """Rewrite every `HardSigmoid(alpha, beta)` as `Clip(Add(Mul(x, alpha), beta), 0, 1)`; returns how many.

    ONNX defines HardSigmoid as max(0, min(1, alpha * x + beta)), so this is the same function.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    count = 0
    for node in [n for n in graph.node if n.op_type == "HardSigmoid"]:
        base = node.name or f"hard_sigmoid_{count}"
        consts = {"alpha": np.float32(_attr(node, "alpha", 0.2)), "beta": np.float32(_attr(node, "beta", 0.5)),
                  "zero": np.float32(0.0), "one": np.float32(1.0)}
        names = {k: f"{base}_{k}" for k in consts}
        graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), names[k]) for k, v in consts.items())
        scaled, shifted = f"{base}_scaled", f"{base}_shifted"
        replacement = [
            helper.make_node("Mul", [node.input[0], names["alpha"]], [scaled], name=f"{base}_mul"),
            helper.make_node("Add", [scaled, names["beta"]], [shifted], name=f"{base}_add"),
            helper.make_node("Clip", [shifted, names["zero"], names["one"]], list(node.output), name=f"{base}_clip"),
        ]
        index = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(index + offset, new)
        count += 1
    return count


def _spatial(proto: Any, name: str) -> tuple[int, ...] | None:
    import onnx

    graph = onnx.shape_inference.infer_shapes(proto).graph
    for info in (*graph.value_info, *graph.input):
        if info.name == name:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
            return tuple(dims[2:]) if len(dims) == 4 else None
    return None


def enforce_op_policy(check: OpCheck, strict: bool, log: Callable[[str], None]) -> list[str]:
    """Refuse what the toolchain cannot build; report (or with `strict` refuse) CPU fallbacks.

    Returns the one-line notes for the report: which op types leave the BPU, how many nodes.
    """
    fatal = [n for n in check.off_bpu if n.kind in OFF_BPU_FATAL]
    if not check.opset_ok or not check.ir_version_ok or fatal:
        bad = sorted({n.op_type for n in fatal})
        what = f"ops {', '.join(bad)}" if bad else check.problems()[0]
        raise UsageError(f"{check.march} cannot build this model: {what}",
                         "use a model without these ops, or a march that runs them (quant_configs/bpu_marches.yaml)")
    if not check.off_bpu:
        return []
    counts: dict[str, int] = {}
    for node in check.off_bpu:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    summary = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items()))
    if strict:
        raise OpsOffAccelerator(f"--strict: {len(check.off_bpu)} node(s) would run on the CPU on {check.march}: "
                                f"{summary}", "drop --strict to build a hybrid BPU+CPU model, or use a model "
                                "without these ops")
    note = f"{len(check.off_bpu)} node(s) run on the CPU on {check.march}, not the BPU: {summary}"
    log(f"warning: {note}")
    return [note]


def check_bundle_onnx(path: Path, march: March, strict: bool, log: Callable[[str], None]) -> tuple[OpCheck, list[str]]:
    """The static op check of the bundle's ONNX and the notes it leaves in the report."""
    check = check_onnx_ops(path, march)
    return check, enforce_op_policy(check, strict, log)
