"""Targets: the Converter protocol and entry-point discovery.

Built-in converters register exactly like third-party ones, in the entry-point group
`mnv4_deploy.converters` (name = target name, value = `module:object`). *Finding* reads
metadata only; *loading* imports the converter module, which must stay light (heavy backends
are imported inside `convert`/`runner`). Whether a backend is installed is answered with
`importlib.util.find_spec`, so `mnv4-deploy targets` never imports TensorFlow or coremltools.
"""
from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import BackendMissing, DeployError, UsageError
from .judgement import Judgement

ENTRY_POINT_GROUP = "mnv4_deploy.converters"


@dataclass(frozen=True)
class TargetInfo:
    """What a target is, as data: drives argument checks, the targets table and docs."""

    name: str  # e.g. "onnx-fp16"
    format: str  # e.g. "onnx"
    precision: str  # fp32 | fp16 | int8 | ... : picks the parity thresholds
    suffix: str  # artifact file or directory suffix
    description: str
    backend_modules: tuple[str, ...] = ()  # import names the converter needs
    extra: str = ""  # pip extra that installs them: mnv4-deploy[extra]
    needs_calibration: bool = False
    shared_plan: bool = True  # with needs_calibration: uses the run's int8 plan (False: only the images)
    upstream: str | None = None  # target whose artifact this one is built from
    options: tuple[str, ...] = ()  # ExportOptions fields this target honours

    def missing_backends(self) -> list[str]:
        return [m for m in self.backend_modules if importlib.util.find_spec(m.split(".")[0]) is None]

    def require_backends(self) -> None:
        missing = self.missing_backends()
        if missing:
            raise BackendMissing(f"target {self.name} needs {', '.join(missing)}, which is not installed",
                                 f"pip install 'mnv4-deploy[{self.extra}]'" if self.extra else "install it")


@dataclass(frozen=True)
class ExportOptions:
    """Per-run options; frozen once parsed. Targets refuse options they cannot honour."""

    opset: int = 17
    simplify: bool = True
    dynamic_batch: bool = False
    fold: bool = True
    layout: str = "nhwc"  # input layout of image-model artifacts that choose one: "nhwc" | "nchw"
    image_input: bool = False  # image (pixel) input with the contract's scale/bias inside, where supported (CoreML)
    min_target: str | None = None  # oldest OS the artifact must load on, e.g. "iOS16", "macOS14" (CoreML)
    io_dtype: str = "float32"  # I/O tensors of full-integer artifacts: "float32" | "int8" | "uint8" (TFLite)
    strict: bool = False  # refuse artifacts whose ops would leave the accelerator (EdgeTPU, BPU)
    bpu_input: str = "nv12"  # hb_mapper input_type_rt: "nv12" | "rgb" | "bgr" | "featuremap" (BPU)
    archive: bool = False  # also pack a directory artifact as a deterministic .tar.gz (BPU bundle)
    openvino_fp16_weights: bool = False  # store IR weights in fp16, compute stays fp32 (OpenVINO)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def changed(self) -> list[str]:
        """Fields set away from their defaults (the options a run explicitly asked for)."""
        default = ExportOptions()
        return [k for k, v in self.__dict__.items() if v != getattr(default, k)]


@dataclass
class ConvertJob:
    """Everything a converter gets: the canonical model and what the run computed once."""

    model: Any  # canonical torch.nn.Module, eval mode
    contract: Any  # Preprocess
    example: Any  # torch.Tensor (1, 3, H, W)
    workdir: Path  # a private temporary directory; the artifact goes inside it
    stem: str  # artifact file stem, e.g. "conv_small"
    options: ExportOptions
    recipe: Any  # Recipe
    calibration: Any = None  # data.ImageBatch or None
    upstream: Any = None  # Artifact of `info.upstream`, when declared
    plan: Any = None  # quantize.PlanStage: the run's one int8 plan (targets with needs_calibration)
    evaluation: Any = None  # pipeline.Evaluation (labeled batch + reference logits) when --eval-data is given
    model_info: dict[str, Any] = field(default_factory=dict)  # the report's model section (name, weights hash)
    run_cache: dict[Any, Any] = field(default_factory=dict)  # lives for one run: work several targets share
    log: Callable[[str], None] = print


@dataclass
class Artifact:
    """A converter's output. `path` is a file or a directory (e.g. .mlpackage, a bundle).

    `emulation`, when a converter can give it, computes in PyTorch what the artifact is meant
    to compute (e.g. the int8 plan's fake-quant model): the pipeline then also judges the
    artifact against it, which separates "the converter expressed the recipe faithfully" from
    "the recipe loses this much against float".
    """

    target: str
    path: Path
    precision: str
    metadata: dict[str, Any] = field(default_factory=dict)
    emulation: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False, compare=False)
    emulation_bounds: str = "emulation"  # recipe parity key judging it against `emulation` ("emulation_fp16": fp16 compute)
    companions: tuple[Path, ...] = ()  # extra files moved next to `path` (e.g. a bundle's .tar.gz)
    # what the converter judged beside the artifact (e.g. the BPU's board forecasts): rows under its own
    extra_judgements: tuple[Judgement, ...] = ()


@dataclass
class Runner:
    """Runs an artifact on this host: NCHW float32 batch -> logits (N, classes)."""

    run: Callable[[np.ndarray], np.ndarray]
    runtime: str  # e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"
    # a second runtime for the same artifact (Core ML on macOS: the NumPy reference executor);
    # its parity is reported beside the judged one, so two implementations can be compared
    cross_check: "Runner | None" = None


@dataclass
class NotRunnable:
    """Why an artifact cannot run here (e.g. CoreML prediction needs macOS)."""

    reason: str


@runtime_checkable
class Converter(Protocol):
    info: TargetInfo

    def convert(self, job: ConvertJob) -> Artifact: ...

    def runner(self, artifact: Artifact) -> Runner | NotRunnable: ...


class TargetLoadError(DeployError):
    """A registered converter could not be imported or is not a Converter."""


def find_targets(eps: Sequence[EntryPoint] | None = None) -> dict[str, EntryPoint]:
    """Registered targets by name; reads metadata only, imports nothing."""
    eps = list(entry_points(group=ENTRY_POINT_GROUP)) if eps is None else list(eps)
    found: dict[str, EntryPoint] = {}
    for ep in sorted(eps, key=lambda e: e.name):
        found.setdefault(ep.name, ep)
    return found


def load_target(name: str, eps: Mapping[str, EntryPoint] | None = None) -> Converter:
    """Import one target's converter object; failures become one typed error naming it."""
    eps = find_targets() if eps is None else eps
    if name not in eps:
        close = difflib.get_close_matches(name, list(eps), 3, 0.5)
        raise UsageError(f"unknown target {name!r}",
                         f"did you mean {', '.join(close)}?" if close else f"known targets: {', '.join(eps)}")
    ep = eps[name]
    try:
        obj = ep.load()
    except Exception as exc:
        raise TargetLoadError(f"target {name} ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Converter) or not isinstance(getattr(obj, "info", None), TargetInfo):
        raise TargetLoadError(f"target {name} ({ep.value}) is not a Converter (needs info, convert, runner)")
    if obj.info.name != name:
        raise TargetLoadError(f"target {name} ({ep.value}) declares itself as {obj.info.name!r}")
    return obj


def parse_targets(text: str | Sequence[str], eps: Mapping[str, EntryPoint] | None = None) -> list[str]:
    """`onnx,onnx-fp16` or a list -> validated target names (order kept, duplicates dropped)."""
    eps = find_targets() if eps is None else eps
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise UsageError("no target given", f"pass --to with one of: {', '.join(eps)}")
    if items == ["all"]:
        return list(eps)
    names: list[str] = []
    for item in items:
        if item not in eps:
            close = difflib.get_close_matches(item, list(eps), 3, 0.5)
            raise UsageError(f"unknown target {item!r}",
                             f"did you mean {', '.join(close)}?" if close else f"known targets: {', '.join(eps)}")
        if item not in names:
            names.append(item)
    return names


def target_for_artifact(path: Path, eps: Mapping[str, EntryPoint] | None = None) -> Converter:
    """The target whose artifact suffix matches `path` best (longest suffix wins)."""
    eps = find_targets() if eps is None else eps
    name = path.name
    best: Converter | None = None
    for target in eps:
        try:
            conv = load_target(target, eps)
        except TargetLoadError:
            continue
        if name.endswith(conv.info.suffix) and (best is None or len(conv.info.suffix) > len(best.info.suffix)):
            best = conv
    if best is None:
        raise UsageError(f"{path}: no target produces files named like this",
                         "pass --target NAME, or an artifact written by mnv4-deploy")
    return best


def target_rows(eps: Mapping[str, EntryPoint] | None = None) -> list[dict[str, Any]]:
    """One row per registered target for `mnv4-deploy targets` (no heavy imports)."""
    rows = []
    for name, ep in find_targets().items() if eps is None else eps.items():
        try:
            info = load_target(name, {name: ep}).info
        except DeployError as exc:
            rows.append({"target": name, "format": "?", "precision": "?", "installed": False,
                         "description": exc.one_line(), "extra": "", "source": ep.value})
            continue
        missing = info.missing_backends()
        rows.append({"target": name, "format": info.format, "precision": info.precision,
                     "installed": not missing, "missing": missing, "extra": info.extra,
                     "description": info.description, "source": ep.value})
    return rows


def build_order(names: Sequence[str], eps: Mapping[str, EntryPoint] | None = None) -> list[str]:
    """`names` reordered so a target built from another's artifact (its `upstream`) comes after it.

    Otherwise the user's order is kept. Every entry point that converts several targets uses
    this, so `--to tflite-fp16,tflite` converts the float model once, as `--to tflite,tflite-fp16` does.
    """
    eps = find_targets() if eps is None else eps
    upstream = {n: load_target(n, eps).info.upstream for n in names}
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        up = upstream[name]
        if up in upstream and up != name:
            visit(up)
        ordered.append(name)

    for name in names:
        visit(name)
    return ordered
