"""The model x target matrix: export, validate and time every pair; a failing pair never stops it.

Per model, one `pipeline.export` call builds every target, so the canonical model, the
calibration tensors, the labeled set's reference logits and the int8 plan are computed once
per model. Targets that cannot run here (backend not installed, no calibration data, a
converter that fails to load) become rows saying so instead of errors. After the export, each
artifact is timed through its Runner (batch 1, warm-up, median) and the extra per-target
gates (`min_cosine`) are applied; then the per-model outputs are merged (merge.py).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import pipeline
from .errors import (EXIT_BACKEND, EXIT_OK, EXIT_OTHER, EXIT_OUTPUT_IN_USE, EXIT_PARITY, EXIT_USAGE, DeployError,
                     UsageError)
from .progress import Progress
from .registry import TargetLoadError, build_order, find_targets, load_target, options_for, parse_targets
from .report import (ACCURACY_FAILED, BACKEND_MISSING, EXPORT_FAILED, NOT_RUN_HERE, PASSED, SKIPPED, STATUS_TEXT,
                     VALIDATION_FAILED, Report, TargetResult)

# Calibration images for the report's per-layer int8 sensitivity: one fake-quant forward per
# layer (59 on conv_small: about 3 s at 224 px on one thread); 0 turns it off.
SENSITIVITY_IMAGES = 2


@dataclass(frozen=True)
class MatrixSpec:
    """What to build and judge; frozen once parsed (from the CLI or a deploy.yaml)."""

    models: tuple[str, ...]
    targets: tuple[str, ...] | str = "all"  # names, or "all" (every registered target)
    out: Path = Path("benchmark")
    img_size: int | None = None
    calib_data: Path | None = None
    calib_size: int | None = None
    eval_data: Path | None = None
    eval_size: int | None = None
    data: Path | None = None  # golden images (default: seeded synthetic)
    golden_count: int = 8
    seed: int = 0
    max_drop: float | None = None
    min_cosine: Mapping[str, float] = field(default_factory=dict)  # extra per-target parity gate
    quant_config: str = "default"
    warmup: int = 3
    runs: int = 20
    sensitivity_images: int = SENSITIVITY_IMAGES
    weights: Mapping[str, Path] = field(default_factory=dict)  # model -> state-dict file (else random init)
    pretrained: bool = False  # timm's hub weights for models without a file (needs network)
    options: Mapping[str, Any] = field(default_factory=dict)  # target options (deploy.yaml options:)

    def target_names(self) -> list[str]:
        return parse_targets("all" if self.targets == "all" else list(self.targets))

    def settings(self) -> dict[str, Any]:
        return {"models": list(self.models), "targets": self.targets if self.targets == "all" else list(self.targets),
                "img_size": self.img_size, "calib_data": str(self.calib_data) if self.calib_data else None,
                "calib_size": self.calib_size, "eval_data": str(self.eval_data) if self.eval_data else None,
                "eval_size": self.eval_size, "max_drop": self.max_drop, "min_cosine": dict(self.min_cosine),
                "quant_config": self.quant_config, "sensitivity_images": self.sensitivity_images,
                "latency": {"warmup": self.warmup, "runs": self.runs, "batch": 1},
                "weights": {m: str(p) for m, p in self.weights.items()}, "pretrained": self.pretrained,
                "options": dict(self.options)}


def host_facts() -> dict[str, Any]:
    """What latency numbers depend on: cores, and how busy the machine was (1-min load average)."""
    import os
    import platform

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "loadavg_1m": round(load, 2) if load else load}


def model_dir_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model)


# ---- which targets can run here ---------------------------------------------------------------
@dataclass
class Selection:
    """The targets an export will build, and rows for those it will not (with the reason)."""

    runnable: list[str]
    rows: dict[str, TargetResult]  # target -> pre-decided row (backend missing, load failure, ...)
    order: list[str]


def select_targets(names: Sequence[str], spec: MatrixSpec, explicit: bool) -> Selection:
    """Sort `names` into buildable ones and rows that say why the rest are not built here.

    A missing backend counts against the exit code (5) only when the target was named
    explicitly; with `all` it is information about this host.
    """
    eps = find_targets()
    runnable, rows = [], {}
    for name in names:
        try:
            conv = load_target(name, eps)
        except TargetLoadError as exc:
            rows[name] = TargetResult(name, "?", EXPORT_FAILED, reason=exc.one_line(), exit_code=EXIT_OTHER)
            continue
        info = conv.info
        missing = info.missing_backends()
        if missing:
            hint = f"pip install 'mnv4-deploy[{info.extra}]'" if info.extra else "install it"
            rows[name] = TargetResult(name, info.precision, BACKEND_MISSING,
                                      reason=f"needs {', '.join(missing)} ({hint})",
                                      exit_code=EXIT_BACKEND if explicit else EXIT_OK)
        elif info.needs_calibration and spec.calib_data is None:
            if explicit:
                raise UsageError(f"target {name} needs calibration images", "pass --calib-data DIR")
            rows[name] = TargetResult(name, info.precision, SKIPPED, reason="needs calibration images (--calib-data)")
        else:
            runnable.append(name)
    return Selection(build_order(runnable, eps), rows, list(names))


# ---- one model --------------------------------------------------------------------------------
def _failed_report(model: str, out_dir: Path, targets: Sequence[str], reason: str, status: str = EXPORT_FAILED,
                   code: int = EXIT_OTHER) -> Report:
    report = Report(model={"name": model, "timm_name": None, "weights": "-", "error": reason}, contract={},
                    canonical={}, golden={}, options={}, recipe={}, out_dir=str(out_dir))
    report.results = [TargetResult(t, "?", status, reason=reason, exit_code=code) for t in targets]
    return report


def _extra_gates(result: TargetResult, min_cosine: Mapping[str, float]) -> None:
    """Apply a deploy.yaml per-target cosine floor on top of the recipe's bounds."""
    floor = min_cosine.get(result.target)
    cosine = (result.parity or {}).get("cosine")
    if floor is None or cosine is None or cosine >= floor:
        return
    result.failures.append(f"cosine {cosine:.6f} < min_cosine {floor} (deploy gate)")
    result.status, result.exit_code = VALIDATION_FAILED, EXIT_PARITY


def _time_results(report: Report, out_dir: Path, spec: MatrixSpec, progress: Progress) -> None:
    from .latency import artifact_latency

    crop = tuple(report.contract.get("crop_size") or (224, 224))
    for r in report.results:
        if not r.artifact or r.status not in (PASSED, VALIDATION_FAILED, ACCURACY_FAILED, NOT_RUN_HERE):
            continue
        progress.step(f"latency {r.target}")
        try:
            conv = load_target(r.target)
            r.latency = artifact_latency(conv, out_dir / r.artifact, r.precision, r.metadata, crop,
                                         spec.warmup, spec.runs)
        except Exception as exc:  # timing is information: it never fails a pair
            r.latency = {"note": f"timing failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}


def _pair_text(model: str, r: TargetResult) -> str:
    bits = [f"{model} {r.target}: {STATUS_TEXT.get(r.status, r.status)}"]
    if r.parity:
        bits.append(f"cosine {r.parity['cosine']:.6f}")
    if r.accuracy:
        bits.append(f"top-1 {r.accuracy['top1']:.2f}")
    if r.latency and "median_ms" in r.latency:
        bits.append(f"{r.latency['median_ms']:.2f} ms")
    note = "; ".join(r.failures) or r.reason
    return ", ".join(bits) + (f" ({note[:160]})" if note and r.status != PASSED else "")


def run_model(model: str, spec: MatrixSpec, selection: Selection, out_dir: Path, progress: Progress,
              export: Callable[..., Report] = pipeline.export) -> Report:
    """Export, judge and time every selected target of one model; never raises for a bad pair."""
    progress.context(model)
    report: Report | None = None
    if selection.runnable:
        try:
            weights = spec.weights.get(model)
            report = export(model, selection.runnable, out_dir, img_size=spec.img_size, data=spec.data,
                            weights=weights, pretrained=spec.pretrained and weights is None,
                            golden_count=spec.golden_count, seed=spec.seed, calib_data=spec.calib_data,
                            calib_size=spec.calib_size, eval_data=spec.eval_data, eval_size=spec.eval_size,
                            max_drop=spec.max_drop, options=options_for(spec.options, selection.runnable),
                            quant_config=spec.quant_config,
                            log=progress.log, step=progress.step, sensitivity_images=spec.sensitivity_images)
        except DeployError as exc:
            if exc.exit_code in (EXIT_USAGE, EXIT_OUTPUT_IN_USE):  # bad input / a busy --out: stop, as export would
                raise
            report = _failed_report(model, out_dir, selection.runnable, exc.one_line(), code=exc.exit_code)
        except Exception as exc:
            report = _failed_report(model, out_dir, selection.runnable, pipeline._one_line(exc))
    if report is None:
        report = _failed_report(model, out_dir, [], "no target can run here")
    by_target = {r.target: r for r in report.results} | selection.rows
    report.results = [by_target[t] for t in selection.order if t in by_target]
    if not report.interrupted:
        _time_results(report, out_dir, spec, progress)
    for r in report.results:
        _extra_gates(r, spec.min_cosine)
        progress.pair_done(_pair_text(model, r))
    progress.step("write reports")
    report.write(out_dir)
    return report


# ---- the matrix -------------------------------------------------------------------------------
@dataclass
class MatrixRun:
    merged: dict[str, Any]
    reports: list[Report]
    wall_seconds: float
    phases: list[tuple[str, float]]

    @property
    def exit_code(self) -> int:
        return int(self.merged["exit_code"])


def run_matrix(spec: MatrixSpec, progress: Progress | None = None,
               export: Callable[..., Report] = pipeline.export) -> MatrixRun:
    """Every model x target of `spec`, then one merged manifest/report in `spec.out`.

    Ctrl-C: what finished (whole models, and the finished targets of the current one) goes
    into the merged report, the rest is listed as not run, the report is marked interrupted,
    and KeyboardInterrupt propagates (the CLI exits 130).
    """
    from .artifacts import ensure_writable_dir
    from .run_lock import output_lock

    names = spec.target_names()
    selection = select_targets(names, spec, explicit=spec.targets != "all")
    out = ensure_writable_dir(Path(spec.out))
    progress = progress or Progress()
    progress.total = progress.total or len(spec.models) * len(names)
    started, started_wall = time.perf_counter(), time.time()
    reports: list[Report] = []
    with output_lock(out, log=progress.log), progress:
        try:
            for model in spec.models:
                reports.append(run_model(model, spec, selection, out / model_dir_name(model), progress, export))
        except KeyboardInterrupt:
            _finish(spec, out, names, started, started_wall, progress, interrupted=True)
            raise
        merged = _finish(spec, out, names, started, started_wall, progress, interrupted=False)
    return MatrixRun(merged, reports, time.perf_counter() - started, progress.phase_seconds())


def _finish(spec: MatrixSpec, out: Path, names: Sequence[str], started: float, started_wall: float,
            progress: Progress, interrupted: bool) -> dict[str, Any]:
    """Merge this run's per-model outputs; on interrupt, list what did not finish as not run."""
    from .merge import merge

    wall, phases = time.perf_counter() - started, progress.phase_seconds()
    dirs = []
    for model in spec.models:
        d = out / model_dir_name(model)
        manifest = d / "manifest.json"
        if not (manifest.exists() and manifest.stat().st_mtime >= started_wall - 1):  # absent or from an older run
            if not interrupted:
                continue
            rep = _failed_report(model, d, names, "interrupted before this model finished", SKIPPED)
            rep.interrupted = True
            d.mkdir(parents=True, exist_ok=True)
            rep.write(d)
        dirs.append(d)
    extra = {"settings": spec.settings(), "wall_seconds": round(wall, 2), "interrupted": interrupted,
             "host": host_facts(), "phases": [{"step": s, "seconds": t} for s, t in phases]}
    return merge(dirs, out, extra)
