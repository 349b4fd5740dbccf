"""`mnv4-deploy build --config deploy.yaml`: the CI form of the benchmark matrix.

The YAML is schema-checked before any work: an unknown key or target is named in a one-line
error (exit 2, like any bad input), thresholds out of range are refused. Relative paths are
read relative to the YAML file, so the same file works locally and on a CI runner.

`--jobs N` runs units in parallel processes. A unit is one model with a group of targets
linked by an upstream (tflite -> tflite-fp16/-dynamic, coreml -> coreml-w8, tflite-int8 ->
edgetpu), so a shared artifact is still built once. The trade-off: every process prepares
its own copy of the model, calibration tensors and int8 plan, so total CPU time grows with N;
it pays off when runners have idle cores and converters dominate (TFLite, CoreML).
"""
from __future__ import annotations

import difflib
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .benchmark import SENSITIVITY_IMAGES, MatrixSpec, model_dir_name
from .errors import UsageError
from .options import unknown_option
from .registry import declared_options, find_targets, load_target, option_owners, parse_targets

TOP_KEYS = {"models", "targets", "img_size", "data", "thresholds", "out", "latency", "quant_config", "seed", "weights",
            "pretrained", "sensitivity_images", "options"}
DATA_KEYS = {"calib", "calib_size", "eval", "eval_size", "golden", "golden_count"}
THRESHOLD_KEYS = {"max_drop", "min_cosine"}
LATENCY_KEYS = {"warmup", "runs"}


def _unknown(keys: Any, allowed: set[str], where: str, path: Path) -> None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), 1, 0.6)
            raise UsageError(f"{path}: unknown key {where}{key!r}",
                             f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(allowed))}")


def _section(raw: Mapping[str, Any], key: str, allowed: set[str], path: Path) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise UsageError(f"{path}: {key} must be a mapping", f"e.g. {key}: {{{sorted(allowed)[0]}: ...}}")
    _unknown(value, allowed, f"{key}.", path)
    return value


def _number(value: Any, name: str, lo: float, hi: float, path: Path, integer: bool = False) -> Any:
    if value is None:
        return None
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise UsageError(f"{path}: {name} = {value!r} is out of range", f"use {kind} in [{lo:g}, {hi:g}]")
    return value


def _names(value: Any, key: str, path: Path) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{path}: {key} must be a non-empty list of names", f"e.g. {key}: [conv_small]")
    return value


def _dir(value: Any, key: str, base: Path, path: Path, check: bool = True) -> Path | None:
    if value is None:
        return None
    found = (base / str(value)).resolve()
    if check and not found.is_dir():
        raise UsageError(f"{path}: {key} {found} is not a directory", "fix the path (relative to the YAML file)")
    return found


def check_targets(names: Sequence[str], where: str) -> list[str]:
    """Target names (or ["all"]) checked against the registry, the unknown one named."""
    eps = find_targets()
    try:
        return parse_targets(list(names), eps)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}", exc.hint) from None


def check_min_cosine(value: Any, targets: Sequence[str], where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: min_cosine must map target names to numbers", "e.g. min_cosine: {onnx: 0.9999}")
    for name, floor in value.items():
        if name not in targets:
            check_targets([name], f"{where}: min_cosine")  # names an unknown target
            raise UsageError(f"{where}: min_cosine names {name!r}, which is not built here",
                             f"add it to targets, or drop it; targets: {', '.join(targets)}")
        _number(floor, f"min_cosine.{name}", -1.0, 1.0, Path(where))
    return {str(k): float(v) for k, v in value.items()}


def check_target_options(value: Any, targets: Sequence[str], where: str) -> dict[str, Any]:
    """`options:` of a deploy YAML: target options by name (as in `export --help`, with underscores).

    Each must be declared by a registered target and used by one of `targets`; each model's
    export then gets the ones its targets honour (registry.options_for).
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{where}: options must be a mapping of target options", "e.g. options: {io_dtype: int8}")
    declared, owners = declared_options(), option_owners()
    for name, item in value.items():
        if name not in declared:
            err = unknown_option(str(name), declared)
            raise UsageError(f"{where}: options: {err.message}", err.hint)
        try:
            declared[name].check_value(item)
        except UsageError as exc:
            raise UsageError(f"{where}: options.{name}: {exc.message}", exc.hint) from None
        if not set(owners[name]) & set(targets):
            raise UsageError(f"{where}: options.{name} is not used by any target of the config",
                             f"targets that use it: {', '.join(owners[name])}")
    return {str(k): v for k, v in value.items()}


def load_config(path: str | Path, out: str | Path | None = None, check_data: bool = True) -> MatrixSpec:
    """Read and check deploy.yaml into a frozen MatrixSpec (nothing is built yet).

    `check_data=False` skips the data directories' existence (listing pairs for a CI job
    matrix happens on a runner that has no data).
    """
    from . import models

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping at the top level", "see examples/deploy.yaml")
    _unknown(raw, TOP_KEYS, "", path)
    for key in ("models", "targets"):
        if key not in raw:
            raise UsageError(f"{path}: missing key {key!r}", "see examples/deploy.yaml")
    base = path.resolve().parent
    model_names = _names(raw["models"], "models", path)
    for name in model_names:
        try:
            models.resolve(name)
        except UsageError as exc:
            raise UsageError(f"{path}: models: {exc.message}", exc.hint) from None
    target_list = _names(raw["targets"], "targets", path)
    all_targets = target_list == ["all"]
    targets = check_targets(target_list, f"{path}: targets")
    data = _section(raw, "data", DATA_KEYS, path)
    thresholds = _section(raw, "thresholds", THRESHOLD_KEYS, path)
    latency = _section(raw, "latency", LATENCY_KEYS, path)
    max_drop = _number(thresholds.get("max_drop"), "thresholds.max_drop", 0, 100, path)
    eval_dir = _dir(data.get("eval"), "data.eval", base, path, check_data)
    if max_drop is not None and eval_dir is None:
        raise UsageError(f"{path}: thresholds.max_drop needs labeled images", "set data.eval")
    weights = raw.get("weights") or {}
    if not isinstance(weights, dict):
        raise UsageError(f"{path}: weights must map model names to state-dict files",
                         "e.g. weights: {conv_small: a.pth}")
    for name, file in weights.items():
        if name not in model_names:
            raise UsageError(f"{path}: weights names model {name!r}, which is not in models",
                             f"models: {', '.join(model_names)}")
        if check_data and not (base / str(file)).is_file():
            raise UsageError(f"{path}: weights.{name} {(base / str(file)).resolve()} is not a file",
                             "fix the path (relative to the YAML file)")
    if not isinstance(raw.get("pretrained", False), bool):
        raise UsageError(f"{path}: pretrained must be true or false")
    return MatrixSpec(
        models=tuple(model_names), weights={str(k): (base / str(v)).resolve() for k, v in weights.items()},
        pretrained=raw.get("pretrained", False), targets="all" if all_targets else tuple(targets),
        out=Path(out) if out is not None else (base / str(raw.get("out", "build/deploy"))),
        img_size=_number(raw.get("img_size"), "img_size", 32, 1024, path, integer=True),
        calib_data=_dir(data.get("calib"), "data.calib", base, path, check_data),
        calib_size=_number(data.get("calib_size"), "data.calib_size", 1, 100000, path, integer=True),
        eval_data=eval_dir, eval_size=_number(data.get("eval_size"), "data.eval_size", 1, 10**7, path, integer=True),
        data=_dir(data.get("golden"), "data.golden", base, path, check_data),
        golden_count=_number(data.get("golden_count", 8), "data.golden_count", 2, 10000, path, integer=True),
        seed=_number(raw.get("seed", 0), "seed", 0, 2**31 - 1, path, integer=True),
        max_drop=max_drop,
        min_cosine=check_min_cosine(thresholds.get("min_cosine") or {}, targets, str(path)),
        quant_config=str(raw.get("quant_config", "default")),
        sensitivity_images=_number(raw.get("sensitivity_images", SENSITIVITY_IMAGES), "sensitivity_images", 0, 1000,
                                   path, integer=True),
        warmup=_number(latency.get("warmup", 3), "latency.warmup", 0, 1000, path, integer=True),
        runs=_number(latency.get("runs", 20), "latency.runs", 1, 100000, path, integer=True),
        options=check_target_options(raw.get("options"), targets, str(path)),
    )


# ---- selecting and splitting pairs --------------------------------------------------------
def pairs(spec: MatrixSpec) -> list[tuple[str, str]]:
    return [(m, t) for m in spec.models for t in spec.target_names()]


def restrict(spec: MatrixSpec, only: Sequence[str]) -> MatrixSpec:
    """Keep the `model:target` pairs named in `only` (the CI job matrix form)."""
    known = pairs(spec)
    chosen: list[tuple[str, str]] = []
    for item in only:
        model, sep, target = item.partition(":")
        if not sep or (model, target) not in known:
            raise UsageError(f"--only {item!r}: not a model:target pair of this config",
                             "list them with `mnv4-deploy build --config FILE --list`")
        chosen.append((model, target))
    models = tuple(dict.fromkeys(m for m, _ in chosen))
    targets = tuple(dict.fromkeys(t for _, t in chosen))
    if len(models) * len(targets) != len(set(chosen)):
        raise UsageError("--only: pairs must form a full models x targets grid",
                         "run one --only per CI job, or list every pair of the grid")
    return replace(spec, models=models, targets=targets)


def units(spec: MatrixSpec) -> list[tuple[str, tuple[str, ...]]]:
    """(model, target group) units for parallel runs; targets linked by an upstream stay together."""
    names = spec.target_names()
    eps = find_targets()
    group: dict[str, str] = {}

    def root(name: str) -> str:
        try:
            up = load_target(name, eps).info.upstream
        except Exception:
            up = None
        return root(up) if up in names and up != name else name

    for name in names:
        group.setdefault(root(name), "")
    groups = {r: tuple(n for n in names if root(n) == r) for r in group}
    return [(m, g) for m in spec.models for g in groups.values()]


# ---- running ----------------------------------------------------------------------------
STOP_FILE = ".stop"  # in the units' work directory once interrupted: units not started yet return at once


def units_stopped(out: str) -> bool:
    return (Path(out).parent / STOP_FILE).exists()


def _run_unit(spec: MatrixSpec, model: str, targets: tuple[str, ...], out: str, quiet: bool, threads: int) -> str:
    """Worker: one unit into its own directory (plain log lines: many processes share stderr)."""
    if units_stopped(out):  # the pool had already handed this unit to a worker when the run was stopped
        return out
    import torch

    from .benchmark import run_matrix
    from .progress import PLAIN, QUIET, Progress

    torch.set_num_threads(threads)
    progress = Progress(mode=QUIET if quiet else PLAIN)
    run_matrix(replace(spec, models=(model,), targets=targets, out=Path(out)), progress)
    return out


def _gather(spec: MatrixSpec, todo: Sequence[tuple[str, tuple[str, ...], str]], interrupted: bool) -> list[Path]:
    """Move each unit's artifacts into out/<model>/ and write one report per model there."""
    import json

    from .artifacts import ensure_writable_dir, move_into_place
    from .report import Report

    order = {t: i for i, t in enumerate(spec.target_names())}
    model_dirs = []
    for model in spec.models:
        parts = [Path(d) / model_dir_name(model) for m, _, d in todo if m == model]
        parts = [p for p in parts if (p / "report.json").exists()]
        if not parts:
            continue
        target = ensure_writable_dir(Path(spec.out) / model_dir_name(model))
        reports = [Report.from_dict(json.loads((p / "report.json").read_text())) for p in parts]
        for part, rep in zip(parts, reports):
            for r in rep.results:
                if r.artifact and (part / r.artifact).exists():
                    move_into_place(part / r.artifact, target / r.artifact)
        merged = next((rep for rep in reports if rep.contract), reports[0])
        merged.results = sorted((r for rep in reports for r in rep.results), key=lambda r: order.get(r.target, 1e9))
        merged.interrupted = interrupted or any(rep.interrupted for rep in reports)
        merged.out_dir = str(target)
        merged.quantization = next((rep.quantization for rep in reports if rep.quantization), None)
        merged.write(target)
        model_dirs.append(target)
    return model_dirs


def run_build(spec: MatrixSpec, jobs: int = 1, progress: Any = None, quiet: bool = False) -> dict[str, Any] | None:
    """The whole build: the matrix (in `jobs` processes), then the merged manifest and report."""
    from .artifacts import ensure_writable_dir
    from .benchmark import run_matrix
    from .run_lock import output_lock

    if jobs <= 1:
        return run_matrix(spec, progress).merged
    out = ensure_writable_dir(Path(spec.out))
    with output_lock(out, log=progress.log if progress is not None else (lambda _m: None)):
        return _run_units(spec, jobs, out, quiet)


def _honour_ctrl_c() -> None:
    """Pool initializer: a unit turns SIGINT into KeyboardInterrupt, however this run was started.

    A shell without job control starts background commands (`cmd &` in a CI script, `nohup`)
    with SIGINT ignored; spawned workers inherit that, and the Ctrl-C `_stop_units` passes them
    on SIGTERM would be lost (each running unit would go on to its end).
    """
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)


def unit_pool(jobs: int) -> ProcessPoolExecutor:
    """The worker pool `build --jobs N` runs its units in (spawned: no forked runtime threads)."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_honour_ctrl_c)


def _stop_units(pool: ProcessPoolExecutor, exc: KeyboardInterrupt, work: Path) -> None:
    """Stop queued units; on SIGTERM (which only this process got) pass running ones a Ctrl-C.

    Ctrl-C reaches the workers by itself (same process group); SIGTERM does not, and without
    this the pool would wait for every running unit to finish. SIGINT, not SIGTERM, so each
    worker still writes its report of what finished. The pool hands a unit to a worker before
    it starts, so cancelling futures is not enough: the stop file makes those return at once.
    """
    (work / STOP_FILE).touch()
    import signal

    from .signals import Terminated

    workers = list((getattr(pool, "_processes", None) or {}).values())  # no public API; shutdown clears it
    pool.shutdown(wait=False, cancel_futures=True)
    if isinstance(exc, Terminated):
        for proc in workers:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGINT)


def _run_units(spec: MatrixSpec, jobs: int, out: Path, quiet: bool) -> dict[str, Any] | None:
    """`run_build` with --jobs > 1, while holding `out`: each unit writes its own directory."""
    import time

    from .merge import merge

    work = out / ".units"
    shutil.rmtree(work, ignore_errors=True)
    todo = [(m, g, str(work / f"{model_dir_name(m)}--{'+'.join(g)}")) for m, g in units(spec)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    started = time.perf_counter()
    interrupted = False
    try:
        with unit_pool(jobs) as pool:
            try:
                for f in [pool.submit(_run_unit, spec, m, g, d, quiet, threads) for m, g, d in todo]:
                    f.result()
            except KeyboardInterrupt as exc:
                _stop_units(pool, exc, work)
                raise
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        dirs = _gather(spec, todo, interrupted)
        shutil.rmtree(work, ignore_errors=True)
        extra = {"settings": {**spec.settings(), "jobs": jobs, "threads_per_job": threads},
                 "wall_seconds": round(time.perf_counter() - started, 2), "interrupted": interrupted}
        merged = merge(dirs, out, extra) if dirs else None
    return merged
