"""Targets: the declared converter contract, the options targets own, and entry-point discovery.

Built-in converters register exactly like third-party ones, in the entry-point group
`mnv4_deploy.converters` (name = target name, value = `module:object`). *Finding* reads
metadata only; *loading* imports the converter module, which must stay light (heavy backends
are imported inside `convert`/`runner`). Whether a backend is installed is answered with
`importlib.util.find_spec`, so `mnv4-deploy targets` never imports TensorFlow or coremltools.

The contract is the `Converter` base class: `info`, `convert` and `runner` are required; every
other hook (`check_options`, `check_output_dir`, `describe`, `check`, `declared_precision`) is
named, typed and has a default, so the core calls each plainly. Options a target honours are
declared as `TargetOption` data in `TargetInfo.options` (options.py); `ExportOptions` holds the
core's few run-wide options plus the values of every declared one.
"""
from __future__ import annotations

import abc
import difflib
import functools
import importlib.util
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from .errors import BackendMissing, DeployError, UsageError
from .judgement import Judgement
from .options import TargetOption, merge_declarations, unknown_option

if TYPE_CHECKING:
    import torch

    from .data import ImageBatch
    from .preprocess import Preprocess
    from .quant.plan import QuantPlan
    from .recipes import Recipe

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
    options: tuple[TargetOption, ...] = ()  # the options this target honours, declared as data
    dynamic_batch: bool = False  # honours --dynamic-batch (else the core refuses it, naming this target)
    unfolded: bool = True  # honours --no-fold (builds from the unfolded canonical model)
    toolchain: str = ""  # an out-of-venv vendor toolchain it runs (mnv4_deploy.toolchains), e.g. "rknn"
    check_platforms: tuple[str, ...] = ()  # the chips `mnv4-deploy check --platform` may name for it
    # its int8 runtime runs u8 x s8 kernels on x86 CPUs, whose int16 pair sums saturate without VNNI:
    # the run's plan then gets the overflow fix by default (--overflow-fix, quant/overflow.py)
    x86_int8_kernels: bool = False

    def option_names(self) -> frozenset[str]:
        return frozenset(o.name for o in self.options)

    def missing_backends(self) -> list[str]:
        """Backend modules not installed, and the toolchain when it is not usable (`toolchain NAME`)."""
        missing = self._missing_modules()
        if self.toolchain:
            from .toolchains import toolchain_usable

            missing += [] if toolchain_usable(self.toolchain) else [f"toolchain {self.toolchain}"]
        return missing

    def _missing_modules(self) -> list[str]:
        return [m for m in self.backend_modules if importlib.util.find_spec(m.split(".")[0]) is None]

    def require_backends(self) -> None:
        """Refuse a missing backend module (a toolchain is checked by the target, which knows its path option)."""
        missing = self._missing_modules()
        if missing:
            raise BackendMissing(f"target {self.name} needs {', '.join(missing)}, which is not installed",
                                 f"pip install 'mnv4-deploy[{self.extra}]'" if self.extra else "install it")


# Options the core owns, with their defaults (why these four: ExportOptions' docstring)
CORE_OPTIONS: dict[str, Any] = {"fold": True, "dynamic_batch": False, "simplify": True, "overflow_fix": None}


class ExportOptions:
    """Per-run options, frozen once made: the core's four plus every registered target's declared ones.

    `ExportOptions(io_dtype="int8")` or `ExportOptions.of({"io_dtype": "int8"})`; an unknown
    name is a one-line usage error. Converters read values as attributes (`job.options.io_dtype`);
    an option not given has its declared default.

    The core owns only options that act before or around every target rather than inside one:
    `fold` (canonicalization, done once for all targets; a target that cannot start from the
    unfolded model says so with `TargetInfo.unfolded=False`), `dynamic_batch` (a capability each
    target declares in `TargetInfo.dynamic_batch`, refused once by the core naming the target)
    and `simplify` (onnxsim in the ONNX export several formats go through; every target
    tolerates it, so it is never refused) and `overflow_fix` (the one int8 plan every int8 target of
    the run shares; None picks `auto` when a requested target declares `x86_int8_kernels`, else
    `off`). `opset` is declared by the targets that export ONNX
    (the ONNX family and the BPU bundles), `strict` by those with an accelerator check (EdgeTPU,
    BPU): several targets share them, but each is still target knowledge.
    """

    __slots__ = ("_values",)

    def __init__(self, **values: Any) -> None:
        declared = declared_options()
        for name in values:
            if name not in CORE_OPTIONS and name not in declared:
                raise unknown_option(name, {**CORE_OPTIONS, **declared})
        full = {name: values.get(name, default) for name, default in CORE_OPTIONS.items()}
        full.update({name: values.get(name, option.default) for name, option in declared.items()})
        object.__setattr__(self, "_values", full)

    @classmethod
    def of(cls, options: "ExportOptions | Mapping[str, Any] | None") -> "ExportOptions":
        """The API's forms (None, a mapping of option values, or ExportOptions) as ExportOptions."""
        if options is None:
            return cls()
        return options if isinstance(options, ExportOptions) else cls(**dict(options))

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            values = object.__getattribute__(self, "_values")
            if name in values:
                return values[name]
        raise AttributeError(f"ExportOptions has no option {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ExportOptions is frozen; make a new one")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExportOptions) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        return f"ExportOptions({', '.join(f'{k}={v!r}' for k, v in self.changed_values().items())})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_options, (self._values,))

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def changed_values(self) -> dict[str, Any]:
        defaults = ExportOptions()._values
        return {k: v for k, v in self._values.items() if v != defaults.get(k)}

    def changed(self) -> list[str]:
        """Options set away from their defaults (the options a run explicitly asked for)."""
        return list(self.changed_values())


def _rebuild_options(values: Mapping[str, Any]) -> ExportOptions:
    return ExportOptions(**values)


class HeldEvaluation(Protocol):
    """Labeled images held in memory with the reference's logits on them (the pipeline's `Evaluation`)."""

    batch: "ImageBatch"
    reference_logits: np.ndarray


@dataclass
class ConvertJob:
    """Everything a converter gets: the canonical model and what the run computed once."""

    model: "torch.nn.Module"  # canonical, eval mode
    contract: "Preprocess"
    example: "torch.Tensor"  # (1, 3, H, W)
    workdir: Path  # a private temporary directory; the artifact goes inside it
    stem: str  # artifact file stem, e.g. "conv_small"
    options: ExportOptions
    recipe: "Recipe | None"
    calibration: "ImageBatch | None" = None  # with needs_calibration and --calib-data
    upstream: "Artifact | None" = None  # the run's artifact of `info.upstream`, when declared and built
    plan: "QuantPlan | None" = None  # the run's one int8 plan (targets with needs_calibration and shared_plan)
    evaluation: HeldEvaluation | None = None  # labeled batch + reference logits when --eval-data is given
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

    `metadata` keys the core reads: `notes` (the report's note column) and `details_table`
    (a plain-text table the converter already formats, e.g. Vela's op/memory/cycle summary or
    the RKNN toolkit's layer placement, shown under the target's own heading in report.md).
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
    # other runtimes for the same artifact (Core ML on macOS: the NumPy reference executor; OpenVINO:
    # its default kernels, and its kernels capped to a CPU class without VNNI); each one's parity is
    # reported beside the judged one (informative, not gating), so implementations can be compared
    cross_checks: "tuple[Runner, ...]" = ()
    # builds the same artifact's runner tuned for timing one image at a time, when that tuning would
    # hurt validation/evaluation (onnxruntime threads that spin between runs starve the decode workers
    # and the reference beside them); latency measurements use it, everything else uses `run`
    latency_variant: "Callable[[], Runner] | None" = None


@dataclass
class NotRunnable:
    """Why an artifact cannot run here (e.g. CoreML prediction needs macOS)."""

    reason: str


class Converter(abc.ABC):
    """The converter contract. Subclass it, set `info`, implement `convert` and `runner`.

    Every other hook has a default that means "this target has nothing to add", so the core
    calls them plainly. Converter modules stay light: heavy backends are imported inside the
    methods, never at module top (`mnv4-deploy targets` and `--help` load every converter).
    """

    info: TargetInfo

    @abc.abstractmethod
    def convert(self, job: ConvertJob) -> Artifact:
        """Write the artifact inside `job.workdir` and say what it is; the core moves it into place."""

    @abc.abstractmethod
    def runner(self, artifact: Artifact) -> "Runner | NotRunnable":
        """Open the artifact in its runtime here, or say why it cannot run on this host."""

    def check_options(self, options: ExportOptions) -> None:
        """Refuse, before any work, option values this target cannot honour (raise UsageError).

        Declared choices and types are checked by the core after this hook; raise here to say
        more precisely what is wrong, or to refuse combinations.
        """

    def check_output_dir(self, out: Path) -> None:
        """Refuse, before anything is written, an output directory this target cannot share."""

    def describe(self, path: Path) -> dict[str, Any] | None:
        """`mnv4-deploy inspect`: format, I/O (`inputs`/`outputs` with `shape`), ops, metadata.

        None: this target cannot describe its artifacts (validate then skips the I/O check).
        """
        return None

    def check(self, path: Path, compiler_log: Path | None = None) -> dict[str, Any] | None:
        """`mnv4-deploy check`: a model against the accelerator's op rules.

        Returns `fully_mapped`, a printable `table` and (with `compiler_log`) `compiler_log`
        with its own `table`; None: this target has no static accelerator check.
        """
        return None

    def declared_precision(self, description: Mapping[str, Any]) -> str:
        """The precision a described file carries (validate judges it as that); default: the target's."""
        return self.info.precision


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
        raise TargetLoadError(f"target {name} ({ep.value}) is not a Converter",
                              "subclass mnv4_deploy.registry.Converter and set info, convert, runner")
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
                     "description": info.description, "source": ep.value,
                     "options": [o.flag for o in info.options], "dynamic_batch": info.dynamic_batch})
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


def declared_options(eps: Mapping[str, EntryPoint] | None = None) -> dict[str, TargetOption]:
    """Every registered target's declared options, merged (conflicting declarations are refused).

    A target that fails to load declares nothing here (`mnv4-deploy targets` names its error).
    """
    eps = find_targets() if eps is None else eps
    return dict(_declared_options(tuple((name, ep.value) for name, ep in eps.items())))


def options_for(values: Mapping[str, Any], targets: Sequence[str],
                eps: Mapping[str, EntryPoint] | None = None) -> dict[str, Any]:
    """A matrix's target options narrowed to those `targets` honour (the core's own always pass).

    benchmark and build export a model's (or a unit's) targets together: an option only some
    targets of the matrix honour must not make an export of the others refuse it.
    """
    eps = find_targets() if eps is None else eps
    honoured = set(CORE_OPTIONS).union(*(load_target(t, eps).info.option_names() for t in targets))
    return {name: value for name, value in values.items() if name in honoured}


def option_owners(eps: Mapping[str, EntryPoint] | None = None) -> dict[str, list[str]]:
    """Option name -> the registered targets that declare it (for help texts and errors)."""
    eps = find_targets() if eps is None else eps
    owners: dict[str, list[str]] = {}
    for info in _loadable_infos(tuple((name, ep.value) for name, ep in eps.items())):
        for option in info.options:
            owners.setdefault(option.name, []).append(info.name)
    return owners


@functools.lru_cache(maxsize=8)
def _loadable_infos(registered: tuple[tuple[str, str], ...]) -> tuple[TargetInfo, ...]:
    eps = {name: EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP) for name, value in registered}
    infos = []
    for name in eps:
        try:
            infos.append(load_target(name, eps).info)
        except DeployError:
            continue
    return tuple(infos)


@functools.lru_cache(maxsize=8)
def _declared_options(registered: tuple[tuple[str, str], ...]) -> tuple[tuple[str, TargetOption], ...]:
    infos = _loadable_infos(registered)
    merged = merge_declarations(((info.name, o) for info in infos for o in info.options), CORE_OPTIONS)
    return tuple(merged.items())
