"""Core ML targets: `coreml` (fp16 compute), `coreml-fp32` and `coreml-w8` (int8 weights).

Each writes an ML Program package (`.mlpackage`, a directory) converted from the canonical
model through `torch.export` (see `convert.py` for the route and its reasons), with float32
I/O, the preprocessing contract and class names in its metadata, and stable bytes.

- `coreml`: fp16 compute (Core ML's default for ML Programs), precision "fp16".
- `coreml-fp32`: fp32 compute, precision "fp32".
- `coreml-w8`: the fp16 program with int8 linear-symmetric per-output-channel weights
  (`coremltools.optimize.coreml.linear_quantize_weights`), precision "int8"; it rewrites the
  run's `coreml` artifact when there is one.

Options: `image_input` gives the model an `ImageType` input (pixels in, the contract's
scale/bias inside the model, per-channel std compensated exactly); `min_target` sets the
oldest OS (iOS16, macOS14, ...), refused when unknown or too old for what the target uses.
Parity runs in Core ML on macOS and in the NumPy ML Program executor (`converters.coreml_mil`)
elsewhere. Importing this package imports neither coremltools nor torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mnv4_deploy.errors import UsageError
from mnv4_deploy.registry import Artifact, ConvertJob, ExportOptions, NotRunnable, Runner, TargetInfo

from .convert import (CONTRACT_KEY, IMAGE_INPUT_NAME, INPUT_NAME, LABELS_KEY, OUTPUT_NAME, annotate, convert_float,
                      coremltools, image_input_for, quantize_w8, save_package, with_channel_ratios)
from .deployment import ML_PROGRAM, TARGETS, W8_PER_CHANNEL, Feature, check_min_target, minimum_name
from .runtime import LINUX_RUNTIME, coreml_runner, describe_mlpackage, read_embedded_contract, to_pixels

__all__ = ["COREML_FP16", "COREML_FP32", "COREML_W8", "CoremlConverter", "describe_mlpackage", "coreml_runner",
           "read_embedded_contract", "image_input_for", "with_channel_ratios", "to_pixels", "TARGETS",
           "CONTRACT_KEY", "LABELS_KEY", "INPUT_NAME", "IMAGE_INPUT_NAME", "OUTPUT_NAME", "LINUX_RUNTIME"]

REPRODUCIBLE_REASON = ("byte-identical for the same model, options and tool versions, across processes: "
                       "coremltools' random Manifest.json item UUIDs are replaced by path-derived ones, its "
                       "conversion_date metadata key is removed and the spec is re-serialized with sorted maps")


class CoremlConverter:
    """Core ML ML Program of the canonical model: fp16 or fp32 compute, or int8 weights on fp16."""

    def __init__(self, info: TargetInfo, kind: str):
        self.info = info
        self.kind = kind  # "fp16" | "fp32" | "w8"
        self.features: tuple[Feature, ...] = (ML_PROGRAM, W8_PER_CHANNEL) if kind == "w8" else (ML_PROGRAM,)

    def check_options(self, options: ExportOptions) -> None:
        check_min_target(options.min_target, self.features, self.info.name)
        if options.dynamic_batch:
            raise UsageError(f"target {self.info.name} has a fixed batch of 1 (the runner loops over samples)",
                             "export the Core ML targets without --dynamic-batch")

    def _float_source(self, job: ConvertJob, min_target: str) -> tuple[Any, dict[str, Any]]:
        """The fp16 program to quantize: this run's `coreml` artifact when present, else a fresh one."""
        up = job.upstream
        if (up is not None and Path(up.path).is_dir()
                and bool(up.metadata.get("image_input")) == job.options.image_input
                and up.metadata.get("min_target") == min_target):
            ct = coremltools()
            model = ct.models.MLModel(str(up.path), skip_model_load=True)
            meta = {k: up.metadata[k] for k in ("route", "image_input") if k in up.metadata}
            return model, {**meta, "compute_precision": "fp16", "io_dtype": "float32",
                           "float_source": f"this run's {up.target} artifact {Path(up.path).name}"}
        model, meta = convert_float(job.model, job.example, job.contract, fp16=True, min_target=min_target,
                                    image_input=job.options.image_input)
        return model, {**meta, "float_source": "converted for this target"}

    def convert(self, job: ConvertJob) -> Artifact:
        import torch

        self.check_options(job.options)
        # W8 starts from the same fp16 program `coreml` writes; quantizing raises its spec to iOS16.
        min_target = check_min_target(job.options.min_target, (ML_PROGRAM,), self.info.name) or minimum_name((ML_PROGRAM,))
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        if self.kind == "w8":
            mlmodel, meta = self._float_source(job, min_target)
            mlmodel, quant = quantize_w8(mlmodel)
            meta.update(quant)
        else:
            mlmodel, meta = convert_float(job.model, job.example, job.contract, fp16=self.kind == "fp16",
                                          min_target=min_target, image_input=job.options.image_input)
        with torch.no_grad():
            num_classes = int(job.model(job.example).shape[-1])
        meta.update(annotate(mlmodel, stem=job.stem, target=self.info.name, precision=self.info.precision,
                             contract=job.contract, num_classes=num_classes, model=job.model,
                             image=meta.get("image_input")))
        save_package(mlmodel, path)
        described = describe_mlpackage(path)
        meta.update({"min_target": min_target, "spec_version": described["spec_version"],
                     "min_deployment_target": described["min_deployment_target"],
                     "inputs": described["inputs"], "outputs": described["outputs"],
                     "op_histogram": described["op_histogram"], "reproducible": True,
                     "reproducible_reason": REPRODUCIBLE_REASON})
        job.log(f"{self.info.name}: ML Program spec {described['spec_version']} "
                f"({described['min_deployment_target']}), input {described['inputs'][0]['type']}")
        emulation = None
        if self.kind == "w8":  # the recipe rounds weights per output channel; activations stay float
            from mnv4_deploy.emulation import int8_weight_emulation

            emulation = int8_weight_emulation(job.model, meta["weight_quantization"]["weight_threshold"])
        return Artifact(self.info.name, path, self.info.precision, meta, emulation=emulation)

    def runner(self, artifact: Artifact) -> Runner | NotRunnable:
        return coreml_runner(Path(artifact.path))

    def describe(self, path: Path) -> dict[str, Any]:
        return describe_mlpackage(Path(path))


_COMMON = dict(format="coreml", backend_modules=("coremltools",), extra="coreml",
               options=("image_input", "min_target", "fold"))
COREML_FP16 = CoremlConverter(TargetInfo(
    name="coreml", precision="fp16", suffix=".mlpackage",
    description="Core ML ML Program, fp16 compute, float32 I/O; Core ML on macOS, the NumPy MIL executor elsewhere",
    **_COMMON), kind="fp16")
COREML_FP32 = CoremlConverter(TargetInfo(
    name="coreml-fp32", precision="fp32", suffix=".fp32.mlpackage",
    description="Core ML ML Program, fp32 compute and I/O", **_COMMON), kind="fp32")
COREML_W8 = CoremlConverter(TargetInfo(
    name="coreml-w8", precision="int8", suffix=".w8.mlpackage", upstream="coreml",
    description="Core ML ML Program, int8 per-channel weights (linear_quantize_weights), fp16 compute",
    **_COMMON), kind="w8")
