"""TFLite/LiteRT float targets: `tflite` (fp32), `tflite-fp16` and `tflite-dynamic`.

Route: `litert_torch.convert(model, (example,), strict_export=True)` on the canonical model
(strict `torch.export` keeps residual ADDs clean, which the full-integer targets also need),
with NHWC input by default through `litert_torch.to_channel_last_io` because mobile apps feed
NHWC. The two weight-compressed targets are rewrites of that float flatbuffer by
`ai-edge-quantizer`, the quantizer litert-torch itself depends on:

- `tflite-fp16`: weight-only FLOAT_CASTING recipe (fp16 weights of CONV_2D, DEPTHWISE_CONV_2D
  and FULLY_CONNECTED plus DEQUANTIZE ops; float32 compute and I/O). This is the same model
  form as TensorFlow's "float16 quantization" (`target_spec.supported_types=[tf.float16]`).
- `tflite-dynamic`: `recipe.dynamic_wi8_afp32()` (per-channel symmetric int8 weights;
  activations stay float32 and are quantized on the fly by the kernels).

Every artifact carries the preprocessing contract as a JSON entry in the flatbuffer's metadata
list (`METADATA_NAME`), with the input layout and shape, so an app reads mean/std/size from the
model file itself; `read_embedded_contract(path)` reads it back. The runner is generic: it
follows the embedded layout, loops per sample over a fixed batch and (de)quantizes integer
I/O with the tensors' own scale/zero point, so full-integer targets can reuse it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mnv4_deploy.registry import Artifact, ConvertJob, ExportOptions, TargetInfo

from .common import LAYOUT, LAYOUTS, METADATA_NAME, REPRODUCIBLE, check_layout, tool_versions
from .convert import RECIPES, export_float_tflite, quantize_tflite
from .metadata import contract_payload, embed_metadata, read_embedded_contract, read_metadata
from .runtime import TfliteArtifacts, describe_tflite, litert_runner, open_interpreter

__all__ = ["TFLITE_FP32", "TFLITE_FP16", "TFLITE_DYNAMIC", "TfliteConverter", "read_embedded_contract",
           "read_metadata", "embed_metadata", "contract_payload", "litert_runner", "describe_tflite",
           "open_interpreter", "export_float_tflite", "quantize_tflite", "LAYOUTS", "METADATA_NAME", "RECIPES"]

_FLOAT_BACKENDS = ("litert_torch", "ai_edge_litert")
_QUANT_BACKENDS = (*_FLOAT_BACKENDS, "ai_edge_quantizer")


class TfliteConverter(TfliteArtifacts):
    """Float TFLite (fp32), or its fp16-weight / dynamic-range rewrite, of the canonical model."""

    def __init__(self, info: TargetInfo, kind: str):
        self.info = info
        self.kind = kind  # "fp32" | "fp16" | "dynamic"

    def check_options(self, options: ExportOptions) -> None:
        check_layout(options.layout)

    def _float_source(self, job: ConvertJob) -> tuple[Path, dict[str, Any]]:
        """The float .tflite to rewrite: the run's `tflite` artifact when present, else a fresh one."""
        up = job.upstream
        if up is not None and up.metadata.get("layout") == job.options.layout and Path(up.path).is_file():
            return Path(up.path), {"route": up.metadata.get("route", "litert_torch.convert"),
                                   "float_source": f"this run's {up.target} artifact {Path(up.path).name}"}
        source = job.workdir / f"{job.stem}.float.tflite"
        meta = export_float_tflite(job.model, job.example, source, job.options.layout, self.info.name)
        return source, {**meta, "float_source": "converted for this target"}

    def convert(self, job: ConvertJob) -> Artifact:
        check_layout(job.options.layout)
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        if self.kind == "fp32":
            meta = export_float_tflite(job.model, job.example, path, job.options.layout, self.info.name)
        else:
            source, meta = self._float_source(job)
            meta["float_bytes"] = source.stat().st_size
            meta.update(quantize_tflite(source, path, self.kind))
            meta["route"] = f"{meta['route']} -> {meta['quantization']}"
        interpreter = open_interpreter(path)
        shape = [int(d) for d in interpreter.get_input_details()[0]["shape"]]
        versions = tool_versions()
        payload = contract_payload(job.contract, job.options.layout, shape,
                                   {"model": job.stem, "target": self.info.name, "precision": self.info.precision,
                                    "producer": "mnv4-deploy", "tools": versions})
        embed_metadata(path, payload)
        facts = describe_tflite(path)
        meta.update({"layout": job.options.layout, "strict_export": True, "tools": versions,
                     "inputs": facts["inputs"], "outputs": facts["outputs"], "op_histogram": facts["op_histogram"],
                     "embedded_metadata": METADATA_NAME})
        emulation = None
        if self.kind == "dynamic":  # the recipe rounds weights per channel; activations stay float
            from mnv4_deploy.emulation import int8_weight_emulation

            emulation = int8_weight_emulation(job.model)
        meta.update(REPRODUCIBLE)
        return Artifact(self.info.name, path, self.info.precision, meta, emulation=emulation)



_COMMON = dict(format="tflite", extra="tflite", options=(LAYOUT,))
TFLITE_FP32 = TfliteConverter(TargetInfo(
    name="tflite", precision="fp32", suffix=".tflite", backend_modules=_FLOAT_BACKENDS,
    description="TFLite/LiteRT fp32 via litert-torch (NHWC input by default), run by the LiteRT interpreter",
    **_COMMON), kind="fp32")
TFLITE_FP16 = TfliteConverter(TargetInfo(
    name="tflite-fp16", precision="fp16", suffix=".fp16.tflite", backend_modules=_QUANT_BACKENDS, upstream="tflite",
    description="TFLite fp16 weights (DEQUANTIZE to float32 compute), float32 I/O; ai-edge-quantizer float casting",
    **_COMMON), kind="fp16")
TFLITE_DYNAMIC = TfliteConverter(TargetInfo(
    name="tflite-dynamic", precision="int8", suffix=".dynamic.tflite", backend_modules=_QUANT_BACKENDS,
    upstream="tflite",
    description="TFLite dynamic-range: int8 per-channel weights, float activations; ai-edge-quantizer",
    **_COMMON), kind="dynamic")

from .int8_target import TFLITE_INT8, TfliteInt8Converter  # noqa: E402  (full-integer target)

__all__ += ["TFLITE_INT8", "TfliteInt8Converter"]
