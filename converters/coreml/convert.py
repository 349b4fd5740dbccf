"""Canonical PyTorch model -> Core ML ML Program (.mlpackage), with metadata and stable bytes.

Route (coremltools 9, see docs/field-notes.md): `torch.export.export(model, (example,))`
`.run_decompositions({})` (a raw ExportedProgram is refused as "TRAINING dialect"; the
`torch.jit.trace` route fails on hybrids with numpy 2.x), then `ct.convert(...,
convert_to="mlprogram")` with fp16 or fp32 compute and float32 I/O. The W8 target rewrites
the fp16 program with `linear_quantize_weights` (linear symmetric, per output channel).

Image input (`ExportOptions.image_input`): a Core ML `ImageType` maps 0-255 pixels with one
scalar `scale` and a per-channel `bias`, while the contract's std is per channel (ImageNet:
0.229/0.224/0.225). The image type gets `scale = 1 / (255 * mean(std))` and
`bias_c = -255 * mean_c * scale`, so the program sees `y_c = scale * (pixel_c - 255 * mean_c)`
and the model needs `x_c = y_c * r_c` with `r_c = mean(std) / std_c`. That factor is folded
exactly into the input channels of the first convolution (which reads the model input
directly; zero padding stays zero under a per-channel scale), or, when no such convolution
exists, applied by an explicit per-channel multiply in front of the model. Core ML applies
the image scale/bias inside the ML Program (a `mul` and an `add` after the input cast), so
the saved program takes pixels and the reference executor can run it unchanged.

Determinism: coremltools names the package's two manifest items with random UUIDs, stamps
`com.github.apple.coremltools.conversion_date` into the metadata, and writes the spec's
protobuf maps in an order that changes between Python processes. All three are normalized
here (UUIDs derived from the item path, the date key removed, the spec re-serialized with
protobuf's deterministic, key-sorted map order), and the same model, options and tool
versions then give a byte-identical package (weights were identical already).

Package contents: coremltools 9's `MLModel.save` writes `executorch_debug_handle_mapping.json`
next to `Manifest.json` for every program converted from `torch.export` (its debug-handle
scope is "essential" there), mapping every op to the handle `null`, because only ExecuTorch's
passes (`DebugHandleGeneratorPass`) number the nodes. It is no part of a Core ML package, so
`save_package` saves with the MIL program detached (save reads it for that file only) and
then refuses any top-level entry besides `Manifest.json` and `Data/`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mnv4_deploy.converters.coreml_mil import import_coremltools
from mnv4_deploy.errors import BackendMissing, DeployError
from mnv4_deploy.provenance import own_version

INPUT_NAME = "input"
IMAGE_INPUT_NAME = "image"
OUTPUT_NAME = "logits"
CONTRACT_KEY = "mnv4_deploy.preprocess"
LABELS_KEY = "mnv4_deploy.class_labels"
PREFIX = "mnv4_deploy."
CONVERSION_DATE_KEY = "com.github.apple.coremltools.conversion_date"
_MANIFEST_NAMESPACE = uuid.UUID("6d6e7634-6465-706c-6f79-2d636f72656d")  # fixed: "mnv4deploy-corem"
PACKAGE_ENTRIES = frozenset({"Manifest.json", "Data"})  # a Core ML package's top level


def coremltools() -> ModuleType:
    """coremltools, imported through the one helper that keeps TensorFlow out of its import."""
    ct = import_coremltools()
    if ct is None:
        raise BackendMissing("the coreml targets need coremltools, which is not installed",
                             "pip install 'mnv4-deploy[coreml]'")
    return ct


def tool_versions() -> dict[str, str]:
    import torch

    return {"coremltools": coremltools().__version__, "torch": torch.__version__, "mnv4-deploy": own_version()}


# ---------------------------------------------------------------- image input
@dataclass(frozen=True)
class ImageInput:
    """The ImageType parameters for a contract and how the per-channel std is honoured."""

    scale: float  # one scalar for all channels (Core ML's ImageType allows no more)
    bias: tuple[float, float, float]  # per channel, in the model tensor's channel order
    color_layout: str  # "RGB" | "BGR": the model tensor's channel order
    channel_ratios: tuple[float, float, float]  # r_c = mean(std) / std_c, applied inside the model
    compensation: str = "none: one std for every channel"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_input_for(contract: Any) -> ImageInput:
    """ImageType scale/bias from the preprocessing contract (the only source of mean/std)."""
    order = str(contract.channel_order).upper()
    if order not in ("RGB", "BGR"):
        raise DeployError(f"contract channel order {contract.channel_order!r} has no Core ML color layout",
                          "use an RGB or BGR contract")
    std = [float(s) for s in contract.std]
    scale = 1.0 / (255.0 * float(np.mean(std)))
    bias = tuple(-255.0 * float(m) * scale for m in contract.mean)
    ratios = tuple(float(np.mean(std)) / s for s in std)
    return ImageInput(scale, bias, order, ratios)  # type: ignore[arg-type]


def scale_input_channels(model: Any, ratios: tuple[float, ...]) -> Any:
    """`model(x * ratios)` as a module (the fallback when no convolution reads the input)."""
    import torch

    class ScaleInputChannels(torch.nn.Module):
        def __init__(self, inner: Any, factors: torch.Tensor):
            super().__init__()
            self.inner = inner
            self.register_buffer("factors", factors.view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x * self.factors)

    return ScaleInputChannels(model, torch.tensor(ratios, dtype=torch.float32)).eval()


def first_conv_on_input(model: Any, example: Any) -> tuple[str, Any] | None:
    """The Conv2d that reads the model's input tensor itself (not a copy or a sum), if any."""
    import torch

    names = {id(m): n for n, m in model.named_modules()}
    found: list[Any] = []

    def hook(module: Any, args: tuple) -> None:
        if not found and args and args[0] is example:
            found.append(module)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        return None
    conv = found[0]
    if conv.groups != 1 or conv.in_channels != example.shape[1]:
        return None
    return names.get(id(conv), "?"), conv


def with_channel_ratios(model: Any, example: Any, image: ImageInput, fold: bool = True) -> tuple[Any, ImageInput]:
    """A copy of `model` that takes `y = x / r` (per channel) and computes model(x) exactly.

    `fold=False` always uses the explicit multiply: an int8 plan's first convolution holds
    integer weights on the plan's grid, which a folded factor would move off it.
    """
    import torch

    if all(abs(r - 1.0) < 1e-12 for r in image.channel_ratios):
        return model, image
    ratios = torch.tensor(image.channel_ratios, dtype=torch.float64)
    folded = copy.deepcopy(model).eval()
    hit = first_conv_on_input(folded, example) if fold else None
    if hit is not None:
        name, conv = hit
        with torch.no_grad():
            conv.weight.copy_((conv.weight.double() * ratios.view(1, -1, 1, 1)).to(conv.weight.dtype))
            # the input may feed more than that convolution (e.g. a skip from the input): check
            y = (example.double() / ratios.view(1, -1, 1, 1)).to(example.dtype)
            reference, got = model(example), folded(y)
            exact = bool(torch.allclose(got, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max())))
        if exact:
            how = (f"exact: per-channel factors {_fmt(image.channel_ratios)} folded into the input channels "
                   f"of {name}")
            return folded, ImageInput(image.scale, image.bias, image.color_layout, image.channel_ratios, how)
    wrapped = scale_input_channels(model, image.channel_ratios)
    how = (f"exact: per-channel factors {_fmt(image.channel_ratios)} applied by a multiply in front "
           "of the model (no convolution is the input's only reader)")
    return wrapped, ImageInput(image.scale, image.bias, image.color_layout, image.channel_ratios, how)


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.6f}" for v in values) + "]"


# ---------------------------------------------------------------- conversion
@contextlib.contextmanager
def _quiet():
    """coremltools draws progress bars on stderr for every conversion: keep the run's log readable."""
    import warnings

    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def convert_float(model: Any, example: Any, contract: Any, *, fp16: bool, min_target: str,
                  image_input: bool, fold_ratios: bool = True) -> tuple[Any, dict[str, Any]]:
    """The ML Program of `model` (an MLModel, not saved) and facts for the artifact metadata.

    `fold_ratios`: see `with_channel_ratios` (False for models whose weights must not change).
    """
    import torch

    ct = coremltools()
    example = example.contiguous()
    facts: dict[str, Any] = {"route": "torch.export -> run_decompositions -> coremltools.convert(mlprogram)",
                             "compute_precision": "fp16" if fp16 else "fp32", "io_dtype": "float32"}
    shape = tuple(int(d) for d in example.shape)
    if image_input:
        image = image_input_for(contract)
        model, image = with_channel_ratios(model, example, image, fold=fold_ratios)
        inputs = [ct.ImageType(name=IMAGE_INPUT_NAME, shape=shape, scale=image.scale, bias=list(image.bias),
                               color_layout=getattr(ct.colorlayout, image.color_layout))]
        facts["image_input"] = image.to_dict()
    else:
        inputs = [ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)]
    try:
        with _quiet():
            program = torch.export.export(model.eval(), (example,)).run_decompositions({})
            mlmodel = ct.convert(program, inputs=inputs, outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                                 convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, min_target),
                                 compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32)
    except DeployError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise DeployError(f"coremltools could not convert the model ({type(exc).__name__}: {text})",
                          "docs/field-notes.md lists the known coremltools limits") from exc
    return mlmodel, facts


def quantize_w8(mlmodel: Any) -> tuple[Any, dict[str, Any]]:
    """int8 linear-symmetric per-output-channel weights (coremltools' default size threshold)."""
    coremltools()
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    op_config = OpLinearQuantizerConfig(mode="linear_symmetric", granularity="per_channel")
    with _quiet():
        quantized = linear_quantize_weights(mlmodel, OptimizationConfig(global_config=op_config))
    return quantized, {"weight_quantization": {"api": "coremltools.optimize.coreml.linear_quantize_weights",
                                               "mode": "linear_symmetric", "granularity": "per_channel",
                                               "dtype": "int8", "weight_threshold": op_config.weight_threshold}}


# ---------------------------------------------------------------- metadata
def class_labels(num_classes: int) -> tuple[list[str], str]:
    """ImageNet-1k class names for 1000 classes (unique: a repeated name gets its WordNet id), else indices."""
    if num_classes == 1000:
        try:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            names = [info.index_to_description(i) for i in range(1000)]
            wnids = info.label_names()
        except Exception:  # timm without the ImageNet info files
            names = []
        if len(names) == 1000:
            repeated = {n for n in names if names.count(n) > 1}
            labels = [f"{n} ({w})" if n in repeated else n for n, w in zip(names, wnids)]
            return labels, "ImageNet-1k class names (timm.data.ImageNetInfo)"
    return [str(i) for i in range(num_classes)], "class indices (not a 1000-class model)"


def model_facts(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    cfg = cfg if isinstance(cfg, dict) else getattr(cfg, "__dict__", {})
    return {"architecture": cfg.get("architecture") or type(model).__name__, "license": cfg.get("license"),
            "weights_source": cfg.get("hf_hub_id")}


def annotate(mlmodel: Any, *, stem: str, target: str, precision: str, contract: Any, num_classes: int,
             model: Any, image: dict[str, Any] | None) -> dict[str, Any]:
    """Author, license, version, description, I/O descriptions and mnv4_deploy.* metadata keys."""
    versions = tool_versions()
    facts = model_facts(model)
    labels, label_source = class_labels(num_classes)
    h, w = contract.crop_size
    mlmodel.author = "mnv4-deploy"
    mlmodel.license = facts["license"] or "unknown: see the license of the weights' source"
    mlmodel.version = versions["mnv4-deploy"]
    mlmodel.short_description = (f"{stem}: {facts['architecture']} image classifier, {target} ({precision}); "
                                 f"{h}x{w} {contract.channel_order} input, {num_classes} logits. "
                                 f"Preprocessing in metadata key {CONTRACT_KEY}.")
    mean, scale = contract.pixel_mean_and_scale()
    if image is not None:
        mlmodel.input_description[IMAGE_INPUT_NAME] = (
            f"{w}x{h} {contract.channel_order} image, resized (short side {contract.resize_short}, "
            f"{contract.interpolation}) and centre-cropped; scale/bias applied by the model")
    else:
        mlmodel.input_description[INPUT_NAME] = (
            f"float32 NCHW (1, 3, {h}, {w}) {contract.channel_order}: (pixel - {_fmt(tuple(mean))}) * "
            f"{_fmt(tuple(scale))} per channel, pixels 0-255 after resize and centre crop")
    mlmodel.output_description[OUTPUT_NAME] = f"logits (1, {num_classes}); class names in metadata key {LABELS_KEY}"
    meta = mlmodel.user_defined_metadata
    if CONVERSION_DATE_KEY in meta:
        del meta[CONVERSION_DATE_KEY]  # a date makes two conversions of one model differ
    entries = {
        CONTRACT_KEY: json.dumps(contract.to_dict(), sort_keys=True),
        LABELS_KEY: json.dumps(labels),
        PREFIX + "class_labels_source": label_source,
        PREFIX + "target": target,
        PREFIX + "precision": precision,
        PREFIX + "architecture": str(facts["architecture"]),
        PREFIX + "tools": json.dumps(versions, sort_keys=True),
        PREFIX + "input": json.dumps({"name": IMAGE_INPUT_NAME if image is not None else INPUT_NAME,
                                      "kind": "image" if image is not None else "tensor", "layout": "NCHW",
                                      "shape": [1, 3, h, w], **({"image": image} if image else {})},
                                     sort_keys=True),
    }
    for key, value in entries.items():
        meta[key] = value
    return {"class_labels": label_source, "license": mlmodel.license, "architecture": facts["architecture"],
            "tools": versions}


# ---------------------------------------------------------------- saving
def normalize_manifest(package: Path) -> None:
    """Replace the manifest's random item UUIDs by UUIDs derived from each item's path."""
    manifest = package / "Manifest.json"
    data = json.loads(manifest.read_text())
    entries = data["itemInfoEntries"]
    renamed = {old: str(uuid.uuid5(_MANIFEST_NAMESPACE, item["path"])) for old, item in entries.items()}
    data["itemInfoEntries"] = {renamed[old]: item for old, item in entries.items()}
    data["rootModelIdentifier"] = renamed[data["rootModelIdentifier"]]
    manifest.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")


def normalize_spec(package: Path) -> None:
    """Re-serialize the model spec with protobuf's deterministic map order (sorted keys).

    coremltools writes map fields (metadata, op attributes and inputs) in hash-table order,
    which changes from one Python process to the next.
    """
    coremltools()
    from coremltools.proto import Model_pb2

    data = json.loads((package / "Manifest.json").read_text())
    spec_path = package / "Data" / data["itemInfoEntries"][data["rootModelIdentifier"]]["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


@contextlib.contextmanager
def _program_detached(mlmodel: Any):
    """`mlmodel` without its MIL program for the duration: `MLModel.save` then writes no debug-handle file.

    The spec and the weights that `save` writes come from the model's spec and package, not
    from the program, so the saved bytes are otherwise the same.
    """
    program = getattr(mlmodel, "_mil_program", None)
    mlmodel._mil_program = None
    try:
        yield mlmodel
    finally:
        mlmodel._mil_program = program


def stray_package_entries(package: Path) -> list[str]:
    """Top-level entries of `package` that are not Core ML's own (`Manifest.json`, `Data/`)."""
    return sorted(entry.name for entry in package.iterdir() if entry.name not in PACKAGE_ENTRIES)


def save_package(mlmodel: Any, path: Path) -> None:
    """Write `mlmodel` as a package holding only Core ML's own files, with stable bytes."""
    with _quiet(), _program_detached(mlmodel):
        mlmodel.save(str(path))
    stray = stray_package_entries(path)
    if stray:
        shutil.rmtree(path)
        raise DeployError(f"coremltools wrote {', '.join(stray)} into the Core ML package, which is no part of one",
                          "report this with the coremltools version; constraints.txt pins the tested one")
    normalize_manifest(path)
    normalize_spec(path)
