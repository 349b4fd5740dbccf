"""Running and describing a saved .mlpackage.

On macOS the runner is Core ML itself (`MLModel.predict`, CPU only, so results do not depend
on which accelerator the OS picks). Elsewhere Core ML cannot run, and the runner is the NumPy
ML Program executor of `mnv4_deploy.converters.coreml_mil`, which evaluates the saved main function op by
op with fp16 rounding after every op, as Core ML's fp16 compute does.

Image inputs: Core ML feeds an ImageType's pixels (0-255) into the program, and the program
itself applies the image scale/bias (a `mul` and an `add` after the input cast). The runner
turns the normalized NCHW batch it is given back into pixels with the contract embedded in
the package (`pixel = x * 255 * std + 255 * mean`): on Linux those float pixels go straight
to the program's input; on macOS they are rounded to uint8 (an image is 8-bit), which adds up
to half a pixel of error on synthetic inputs and none on real photos.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnv4_deploy.errors import DeployError, UsageError
from mnv4_deploy.preprocess import Preprocess
from mnv4_deploy.registry import NotRunnable, Runner

from .convert import CONTRACT_KEY, LABELS_KEY, PREFIX, coremltools
from .deployment import releases

LINUX_RUNTIME = "coreml-mil numpy executor (Linux reference)"


def read_spec(path: Path) -> Any:
    """The package's model spec, or a one-line UsageError saying why it cannot be read."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: not an .mlpackage (a Core ML package is a directory)",
                         "pass the .mlpackage folder written by mnv4-deploy")
    manifest = path / "Manifest.json"
    try:
        data = json.loads(manifest.read_text())
        root = data["itemInfoEntries"][data["rootModelIdentifier"]]["path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a valid .mlpackage (Manifest.json unreadable: {type(exc).__name__})",
                         "the package is incomplete or corrupt; export it again") from None
    if not (path / "Data" / root).is_file():
        raise UsageError(f"{path}: not a valid .mlpackage (Data/{root}, named in Manifest.json, is missing)",
                         "the package is incomplete or corrupt; export it again")
    ct = coremltools()
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as exc:  # protobuf and coremltools raise many types for a damaged spec
        text = " ".join(str(exc).split())[:200]
        raise UsageError(f"{path}: the Core ML model spec cannot be read ({type(exc).__name__}: {text})",
                         "the package is incomplete or corrupt; export it again") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise UsageError(f"{path}: holds a {spec.WhichOneof('Type')} model, not an ML Program",
                         "mnv4-deploy writes and validates ML Programs only")
    return spec


def _enum_name(message: Any, field: str) -> str:
    """A proto enum field's name (e.g. FLOAT32, RGB)."""
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    value = int(getattr(message, field))
    return enum.values_by_number[value].name if value in enum.values_by_number else str(value)


def _color(feature: Any) -> str:
    return _enum_name(feature.type.imageType, "colorSpace")


def _feature(feature: Any) -> dict[str, Any]:
    kind = feature.type.WhichOneof("Type")
    if kind == "imageType":
        image = feature.type.imageType
        color = _color(feature)
        channels = 1 if color.startswith("GRAYSCALE") else 3
        return {"name": feature.name, "shape": [1, channels, int(image.height), int(image.width)],
                "type": f"image {color}"}
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        return {"name": feature.name, "shape": [int(d) for d in array.shape],
                "type": f"tensor {_enum_name(array, 'dataType').lower()}"}
    return {"name": feature.name, "shape": [], "type": str(kind)}


def spec_op_histogram(spec: Any) -> dict[str, int]:
    """Count of each non-const op type in the main function of an ML Program spec."""
    functions = spec.mlProgram.functions
    name = spec.description.defaultFunctionName or "main"
    function = functions[name] if name in functions else next(iter(functions.values()))
    counts: dict[str, int] = {}
    for op in function.block_specializations[function.opset].operations:
        if op.type != "const":
            counts[op.type] = counts.get(op.type, 0) + 1
    return dict(sorted(counts.items()))


def _short(key: str, value: str) -> Any:
    """Metadata for display: our JSON values parsed, the long label list summarized."""
    if not key.startswith(PREFIX):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if key == LABELS_KEY and isinstance(parsed, list):
        return {"count": len(parsed), "first": parsed[:3]}
    return parsed


def describe_mlpackage(path: Path) -> dict[str, Any]:
    """What is inside an .mlpackage: format, spec version, I/O, op histogram, metadata."""
    spec = read_spec(Path(path))
    meta = spec.description.metadata
    functions = spec.mlProgram.functions
    opset = next(iter(functions.values())).opset if functions else None
    return {"format": "coreml mlprogram", "spec_version": int(spec.specificationVersion),
            "min_deployment_target": releases(int(spec.specificationVersion)), "opset": opset,
            "inputs": [_feature(f) for f in spec.description.input],
            "outputs": [_feature(f) for f in spec.description.output],
            "op_histogram": spec_op_histogram(spec),
            "author": meta.author, "license": meta.license, "version": meta.versionString,
            "short_description": meta.shortDescription,
            "metadata": {k: _short(k, v) for k, v in sorted(meta.userDefined.items())}}


def read_embedded_contract(path: Path) -> Preprocess:
    """The preprocessing contract stored in the package's metadata."""
    spec = read_spec(Path(path))
    try:
        return Preprocess.from_dict(json.loads(spec.description.metadata.userDefined[CONTRACT_KEY]))
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"{path}: no readable preprocessing contract in metadata key {CONTRACT_KEY} "
                         f"({type(exc).__name__})", "export it with mnv4-deploy") from None


def to_pixels(batch: np.ndarray, contract: Preprocess) -> np.ndarray:
    """Normalized NCHW -> 0-255 NCHW pixels, the inverse of `contract.normalize`."""
    std = np.asarray(contract.std, np.float64).reshape(1, 3, 1, 1) * 255.0
    mean = np.asarray(contract.mean, np.float64).reshape(1, 3, 1, 1) * 255.0
    return (batch.astype(np.float64) * std + mean).astype(np.float32)


def on_macos() -> bool:
    """Whether Core ML itself can run here (one place, so tests can stand in for a Mac)."""
    return sys.platform == "darwin"


def _per_sample(predict: Callable[[np.ndarray], np.ndarray], runtime: str) -> Runner:
    """Batch-1 programs: run a batch one sample at a time."""
    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outs = [np.asarray(predict(batch[i:i + 1]), np.float32).reshape(1, -1) for i in range(len(batch))]
        return np.concatenate(outs)

    return Runner(run=run, runtime=runtime)


def _mlmodel_runner(path: Path, input_name: str, output_name: str, contract: Preprocess | None,
                    bgr: bool) -> Runner:
    """Core ML itself (macOS only), CPU_ONLY so results do not depend on the accelerator picked."""
    ct = coremltools()
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)

    def predict(sample: np.ndarray) -> np.ndarray:
        if contract is not None:
            from PIL import Image

            pixels = np.clip(np.rint(to_pixels(sample, contract)), 0, 255).astype(np.uint8)[0]
            hwc = pixels.transpose(1, 2, 0)
            feed: Any = Image.fromarray(np.ascontiguousarray(hwc[..., ::-1] if bgr else hwc), "RGB")
        else:
            feed = sample
        return np.asarray(model.predict({input_name: feed})[output_name], np.float32)

    runtime = f"coremltools {ct.__version__} MLModel.predict (macOS, CPU_ONLY)"
    return _per_sample(predict, runtime + (", image input as uint8 pixels" if contract is not None else ""))


def _executor_runner(path: Path, input_name: str, output_name: str, contract: Preprocess | None) -> Runner | NotRunnable:
    """The NumPy reference executor: reads only the saved package, runs anywhere."""
    from mnv4_deploy.converters.coreml_mil import MilExecutor, MilExecutorError, UnsupportedOpError

    try:
        executor = MilExecutor.from_mlpackage(path)
    except UnsupportedOpError as exc:
        return NotRunnable(f"Core ML runs only on macOS, and the Linux reference executor cannot run this "
                           f"program: {exc}")
    except MilExecutorError as exc:
        raise DeployError(f"{path.name}: {exc}", "the package is incomplete or corrupt; export it again") from None

    def predict(sample: np.ndarray) -> np.ndarray:
        feed = to_pixels(sample, contract) if contract is not None else sample
        return executor.run({input_name: feed})[output_name]

    return _per_sample(predict, LINUX_RUNTIME + (", image input fed as float pixels" if contract is not None else ""))


def coreml_runner(path: Path) -> Runner | NotRunnable:
    """Core ML on macOS (with the reference executor as a cross-check), the executor elsewhere."""
    path = Path(path)
    spec = read_spec(path)
    feature = spec.description.input[0]
    input_name, output_name = feature.name, spec.description.output[0].name
    image = feature.type.WhichOneof("Type") == "imageType"
    contract = read_embedded_contract(path) if image else None
    reference = _executor_runner(path, input_name, output_name, contract)
    if not on_macos():
        return reference
    runner = _mlmodel_runner(path, input_name, output_name, contract, image and _color(feature) == "BGR")
    if isinstance(reference, Runner):
        runner.cross_checks = (reference,)  # both are reported; Core ML's own result is the one judged
    return runner
