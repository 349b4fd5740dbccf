"""Core ML targets: `coreml` (fp16 compute), `coreml-fp32` and `coreml-w8` (int8 weights).

Each writes an ML Program package (`.mlpackage`, a directory) converted from the canonical
model through `torch.export` (see `convert.py` for the route and its reasons), with float32
I/O, the preprocessing contract and class names in its metadata, and stable bytes.

- `coreml`: fp16 compute (Core ML's default for ML Programs), precision "fp16".
- `coreml-fp32`: fp32 compute, precision "fp32".
- `coreml-w8`: the fp16 program with int8 linear-symmetric per-output-channel weights
  (`coremltools.optimize.coreml.linear_quantize_weights`), precision "int8"; it rewrites the
  run's `coreml` artifact when there is one.
- `coreml-int8`: W8A8, the run's int8 plan written into the program (`w8a8.py`): the plan's
  integer weights and activation grids, fp16 compute, iOS17+; judged against float and
  against the plan's fake-quant model.

Every package's metadata carries the compute-unit report (`compute_units.py`: Core ML's
compute plan on macOS, the reason it is unavailable elsewhere) and, where the program holds
attention, GELU or int8 activations, notes on what the Neural Engine runs badly.

Options: `image_input` gives the model an `ImageType` input (pixels in, the contract's
scale/bias inside the model, per-channel std compensated exactly); `min_target` sets the
oldest OS (iOS16, macOS14, ...), refused when unknown or too old for what the target uses.
Parity runs in Core ML on macOS and in the NumPy ML Program executor (`mnv4_deploy.converters.coreml_mil`)
elsewhere. Importing this package imports neither coremltools nor torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnv4_deploy.errors import UsageError
from mnv4_deploy.options import TargetOption
from mnv4_deploy.provenance import reproducible
from mnv4_deploy.registry import Artifact, ConvertJob, Converter, ExportOptions, NotRunnable, Runner, TargetInfo

from .compute_units import compute_unit_report, neural_engine_notes
from .convert import (CONTRACT_KEY, IMAGE_INPUT_NAME, INPUT_NAME, LABELS_KEY, OUTPUT_NAME, PREFIX, annotate,
                      convert_float, coremltools, image_input_for, quantize_w8, save_package, with_channel_ratios)
from .deployment import A8_ACTIVATIONS, ML_PROGRAM, TARGETS, W8_PER_CHANNEL, Feature, check_min_target, minimum_name
from .runtime import LINUX_RUNTIME, coreml_runner, describe_mlpackage, read_embedded_contract, spec_op_histogram, to_pixels
from .w8a8 import convert_plan, verify_plan_weights

__all__ = ["COREML_FP16", "COREML_FP32", "COREML_W8", "COREML_INT8", "CoremlConverter", "NOTES_KEY", "describe_mlpackage", "coreml_runner",
           "read_embedded_contract", "image_input_for", "with_channel_ratios", "to_pixels", "TARGETS",
           "CONTRACT_KEY", "LABELS_KEY", "INPUT_NAME", "IMAGE_INPUT_NAME", "OUTPUT_NAME", "LINUX_RUNTIME"]

REPRODUCIBLE = reproducible("byte-identical for the same model, options and tool versions, across processes: "
                            "coremltools' random Manifest.json item UUIDs are replaced by path-derived ones, its "
                            "conversion_date metadata key is removed and the spec is re-serialized with sorted maps")


NOTES_KEY = PREFIX + "neural_engine_notes"
_FEATURES: dict[str, tuple[Feature, ...]] = {"fp16": (ML_PROGRAM,), "fp32": (ML_PROGRAM,),
                                             "w8": (ML_PROGRAM, W8_PER_CHANNEL),
                                             "int8": (ML_PROGRAM, W8_PER_CHANNEL, A8_ACTIVATIONS)}


class CoremlConverter(Converter):
    """Core ML ML Program of the canonical model: fp16/fp32 compute, int8 weights, or the W8A8 plan."""

    def __init__(self, info: TargetInfo, kind: str):
        self.info = info
        self.kind = kind  # "fp16" | "fp32" | "w8" | "int8"
        self.features = _FEATURES[kind]

    def check_options(self, options: ExportOptions) -> None:
        check_min_target(options.min_target, self.features, self.info.name)

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
        # W8A8 is converted at its own minimum (iOS17: activation quantize/dequantize ops).
        features = self.features if self.kind == "int8" else (ML_PROGRAM,)
        min_target = check_min_target(job.options.min_target, features, self.info.name) or minimum_name(features)
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        if self.kind == "int8":
            if job.plan is None:
                raise UsageError(f"target {self.info.name} needs calibration images", "pass --calib-data DIR")
            mlmodel, meta = convert_plan(job.plan, job.example, job.contract, min_target=min_target,
                                         image_input=job.options.image_input)
        elif self.kind == "w8":
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
        notes = neural_engine_notes(spec_op_histogram(mlmodel.get_spec()))
        if notes:  # in the package too, where an app developer looks
            mlmodel.user_defined_metadata[NOTES_KEY] = json.dumps(notes)
        save_package(mlmodel, path)
        described = describe_mlpackage(path)
        if self.kind == "int8":
            meta.update(verify_plan_weights(path, job.plan))
        meta.update({"compute_units": compute_unit_report(path), "neural_engine_notes": notes})
        meta.update({"min_target": min_target, "spec_version": described["spec_version"],
                     "min_deployment_target": described["min_deployment_target"],
                     "inputs": described["inputs"], "outputs": described["outputs"],
                     "op_histogram": described["op_histogram"], **REPRODUCIBLE})
        job.log(f"{self.info.name}: ML Program spec {described['spec_version']} "
                f"({described['min_deployment_target']}), input {described['inputs'][0]['type']}")
        emulation = job.plan.emulation() if self.kind == "int8" else None
        if self.kind == "w8":  # the recipe rounds weights per output channel; activations stay float
            from mnv4_deploy.emulation import int8_weight_emulation

            emulation = int8_weight_emulation(job.model, meta["weight_quantization"]["weight_threshold"])
        # W8A8 computes in fp16, which re-rounds x/scale before each quantize (see default.yaml)
        bounds = "emulation_fp16" if self.kind == "int8" else "emulation"
        return Artifact(self.info.name, path, self.info.precision, meta, emulation=emulation, emulation_bounds=bounds)

    def runner(self, artifact: Artifact) -> Runner | NotRunnable:
        return coreml_runner(Path(artifact.path))

    def describe(self, path: Path) -> dict[str, Any]:
        return describe_mlpackage(Path(path))


IMAGE_INPUT = TargetOption("image_input", bool, False, "image (pixel) input, the contract's scale/bias inside the "
                           "model", panel="Core ML")
MIN_TARGET = TargetOption("min_target", str, None, "oldest OS to load on, e.g. iOS16, macOS14 [default: the oldest "
                          "the target allows]", panel="Core ML")
_COMMON = dict(format="coreml", backend_modules=("coremltools",), extra="coreml", options=(IMAGE_INPUT, MIN_TARGET))
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
COREML_INT8 = CoremlConverter(TargetInfo(
    name="coreml-int8", precision="int8", suffix=".int8.mlpackage", needs_calibration=True,
    description="Core ML ML Program, W8A8: the run's int8 plan (weights and activation grids), fp16 compute, iOS17+",
    **_COMMON), kind="int8")
