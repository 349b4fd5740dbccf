"""ONNX targets: `onnx` (fp32) and `onnx-fp16`, validated in onnxruntime.

Export uses the TorchScript exporter (`dynamo=False`): it gives clean Conv/Relu/Add graphs and
honours low opsets (the BPU needs 11), where the dynamo exporter silently writes opset 18.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mnv4_deploy.errors import DeployError, UsageError
from mnv4_deploy.provenance import byte_identical, own_version
from mnv4_deploy.options import TargetOption
from mnv4_deploy.registry import Artifact, ConvertJob, Converter, ExportOptions, NotRunnable, Runner, TargetInfo

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET, MAX_OPSET = 11, 20
_BACKENDS = ("onnx", "onnxruntime", "onnxsim")


# Declared in every artifact's metadata, carried by the manifest (tests/test_reproducible.py checks the bytes)
REPRODUCIBLE = byte_identical("torch.onnx export and onnxsim are deterministic and ONNX stores no timestamps")


# onnxsim passes that fuse hand-written attention (q/k/v projections, matmul, softmax) into
# ONNX Runtime's com.microsoft Attention/GroupQueryAttention contrib ops: only onnxruntime runs
# those, and hb_mapper refuses them, so the exported ONNX keeps standard-domain ops only.
NON_STANDARD_FUSIONS = ("fuse_attention", "fuse_gqa")


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset} is not supported", f"use {MIN_OPSET}..{MAX_OPSET}")


def export_float_onnx(model: Any, example: Any, path: Path, opset: int, dynamic_batch: bool,
                      simplify: bool) -> dict[str, Any]:
    """Write the float ONNX of `model` to `path`; return facts for the artifact metadata."""
    import onnx
    import torch

    check_opset(opset)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
    proto = onnx.load(str(path))
    simplified = False
    if simplify:
        import onnxsim

        candidate, ok = onnxsim.simplify(proto, skipped_optimizers=list(NON_STANDARD_FUSIONS))
        if not ok:
            raise DeployError("onnxsim could not verify the simplified model", "retry with --no-simplify")
        proto, simplified = candidate, True
    proto.producer_name, proto.producer_version = "mnv4-deploy", own_version()
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return {"opset": opset, "simplified": simplified, "dynamic_batch": dynamic_batch,
            "input": INPUT_NAME, "output": OUTPUT_NAME, "op_histogram": op_histogram(proto)}


def op_histogram(proto: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def to_fp16(path: Path) -> None:
    """Store weights and compute in fp16, keeping float32 input/output for callers."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    _sort_topologically(proto.graph)  # the converter appends its I/O casts at the end
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _sort_topologically(graph: Any) -> None:
    """Reorder `graph.node` so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise DeployError("the fp16 graph has a cycle or a dangling input", "export onnx (fp32) instead")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def describe_onnx(path: Path) -> dict[str, Any]:
    """What is inside an ONNX file: I/O, opset, op histogram, producer, metadata."""
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise UsageError(f"{path}: not a readable ONNX model ({type(exc).__name__})", "check the file is complete") from None
    if not proto.graph.node or not proto.graph.output:  # protobuf parses many byte strings as an empty model
        raise UsageError(f"{path}: not an ONNX model (no graph nodes or outputs)", "check the file is complete")

    def tensors(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower()})
        return out

    initializer_names = {i.name for i in proto.graph.initializer}
    return {"format": "onnx", "opset": proto.opset_import[0].version if proto.opset_import else None,
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "inputs": tensors(i for i in proto.graph.input if i.name not in initializer_names),
            "outputs": tensors(proto.graph.output), "op_histogram": op_histogram(proto),
            "metadata": {p.key: p.value for p in proto.metadata_props}}


SPINNING = "session.intra_op.allow_spinning"  # onnxruntime session config key: "1" spin, "0" sleep


def ort_session(path: Path, spinning: bool = False) -> Any:
    """An onnxruntime CPU session whose intra-op threads sleep between runs unless `spinning`.

    Validation and evaluation share the cores with decode workers and the PyTorch reference:
    spinning threads took 2.1-2.5 ms CPU per image from them (docs/benchmarks.md, "Evaluation at
    scale"). Batch-1 latency is the one place spinning pays (0.2-0.6 ms per image at load 2.6, nothing
at load 3+; same document).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry(SPINNING, "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(path: Path, spinning: bool = False) -> Runner:
    """An onnxruntime CPU runner; feeds one sample at a time when the batch axis is fixed.

    Threads sleep between runs (see `ort_session`); its `latency_variant` is the spinning runner a
    latency measurement times instead.
    """
    import onnxruntime as ort

    session = ort_session(path, spinning)
    name = session.get_inputs()[0].name
    fixed_batch = session.get_inputs()[0].shape[0]

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if isinstance(fixed_batch, int) and fixed_batch != batch.shape[0]:
            return np.concatenate([session.run(None, {name: batch[i:i + fixed_batch]})[0]
                                   for i in range(0, batch.shape[0], fixed_batch)])
        return session.run(None, {name: batch})[0]

    if spinning:
        return Runner(run=run,
                      runtime=f"onnxruntime {ort.__version__} (CPUExecutionProvider, intra-op threads spinning)")
    return Runner(run=run, runtime=f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
                  latency_variant=lambda: ort_runner(path, spinning=True))


class OnnxConverter(Converter):
    """Float ONNX export (fp32 or fp16) of the canonical model."""

    def __init__(self, info: TargetInfo, fp16: bool):
        self.info = info
        self.fp16 = fp16

    def check_options(self, options: ExportOptions) -> None:
        check_opset(options.opset)

    def convert(self, job: ConvertJob) -> Artifact:
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        meta = export_float_onnx(job.model, job.example, path, job.options.opset, job.options.dynamic_batch,
                                 job.options.simplify)
        if self.fp16:
            to_fp16(path)
            import onnx

            meta["op_histogram"] = op_histogram(onnx.load(str(path)))
        meta.update(REPRODUCIBLE)
        return Artifact(self.info.name, path, self.info.precision, meta)

    def runner(self, artifact: Artifact) -> Runner | NotRunnable:
        return ort_runner(artifact.path)

    def describe(self, path: Path) -> dict[str, Any]:
        return describe_onnx(path)


class OnnxInt8Converter(Converter):
    """Static int8 QDQ ONNX expressing the run's quantization plan (ranges not recomputed by ORT)."""

    MIN_OPSET = 13  # per-channel DequantizeLinear (axis) needs opset 13

    def __init__(self, info: TargetInfo):
        self.info = info

    def check_options(self, options: ExportOptions) -> None:
        check_opset(options.opset)
        if options.opset < self.MIN_OPSET:
            raise UsageError(f"target onnx-int8 needs --opset {self.MIN_OPSET} or newer for per-channel weights "
                             f"(got {options.opset})", "drop --opset or export int8 separately")

    def convert(self, job: ConvertJob) -> Artifact:
        import onnx

        from mnv4_deploy.quant.onnx_qdq import auto_weight_dtype, export_qdq_onnx
        from mnv4_deploy.quant.overflow import x86_saturation

        if job.plan is None:
            raise UsageError("target onnx-int8 needs calibration images", "pass --calib-data DIR")
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        weight_dtype = auto_weight_dtype(job.plan)
        export_qdq_onnx(job.plan, path, job.example, opset=job.options.opset, weight_dtype=weight_dtype)
        proto = onnx.load(str(path))
        meta = {"opset": job.options.opset, "form": "QDQ", "input": INPUT_NAME, "output": OUTPUT_NAME,
                "weight_dtype": weight_dtype, "float_layers": list(job.plan.float_layers),
                "op_histogram": op_histogram(proto), **x86_saturation(job.plan), **REPRODUCIBLE}
        return Artifact(self.info.name, path, self.info.precision, meta, emulation=job.plan.emulation())

    def runner(self, artifact: Artifact) -> Runner | NotRunnable:
        return ort_runner(artifact.path)

    def describe(self, path: Path) -> dict[str, Any]:
        return describe_onnx(path)


# shared with every target built through an ONNX export of its own (the BPU bundles)
OPSET = TargetOption("opset", int, 17, "ONNX opset", panel="ONNX")
_COMMON = dict(format="onnx", backend_modules=_BACKENDS, extra="onnx", options=(OPSET,), dynamic_batch=True)
ONNX_FP32 = OnnxConverter(TargetInfo(name="onnx", precision="fp32", suffix=".onnx",
                                     description="ONNX fp32, onnxsim-simplified, run by onnxruntime", **_COMMON),
                          fp16=False)
ONNX_FP16 = OnnxConverter(TargetInfo(name="onnx-fp16", precision="fp16", suffix=".fp16.onnx",
                                     description="ONNX fp16 weights and compute, float32 I/O", **_COMMON),
                          fp16=True)
ONNX_INT8 = OnnxInt8Converter(TargetInfo(
    name="onnx-int8", format="onnx", precision="int8", suffix=".int8.onnx", backend_modules=_BACKENDS, extra="onnx",
    needs_calibration=True, options=(OPSET,), unfolded=False, x86_int8_kernels=True,
    description="ONNX static int8 (QDQ): per-channel weights, activation ranges from the run's plan"))
