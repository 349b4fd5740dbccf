"""The export pipeline: load once, canonicalize once, convert and validate every target.

`export()` is the Python API the CLI calls. It accepts a model name (resolved through the
zoo) or any `torch.nn.Module` with an explicit `Preprocess` contract.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import canonicalize as canon
from . import data as datasets
from . import models
from .artifact_guard import precheck, reading
from .artifacts import (ensure_writable_dir, move_into_place, output_write_error, private_workdir, sha256_path,
                        size_bytes)
from .batches import torch_logits
from .calibration_stream import calibration_set
from .errors import EXIT_ACCURACY, EXIT_OTHER, EXIT_PARITY, DeployError, OutputNotWritable, UsageError
from .preprocess import Preprocess
from .options import OVERFLOW_FIX_MODES
from .recipes import Recipe, load_recipe
from .registry import (Artifact, ConvertJob, Converter, ExportOptions, NotRunnable, Runner, build_order,
                       declared_options, find_targets, load_target, parse_targets, target_for_artifact)
from .report import (ACCURACY_FAILED, EXPORT_FAILED, NOT_RUN_HERE, PASSED, SKIPPED, STATUS_TEXT, VALIDATION_FAILED,
                     Report, TargetResult)
from .run_lock import output_lock

Log = Callable[[str], None]
RANDOM_INIT_SEED = 0


@dataclass
class PreparedModel:
    """The reference side of every comparison, computed once per run and shared by targets."""

    name: str
    original: Any
    canonical: Any
    contract: Preprocess
    golden: datasets.ImageBatch
    reference_logits: np.ndarray
    model_info: dict[str, Any]
    canonical_info: dict[str, Any]
    example: Any = field(repr=False, default=None)


def _torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def prepare_model(model: "str | Any", *, contract: Preprocess | None = None, name: str | None = None,
                  weights: str | Path | None = None, pretrained: bool = False, num_classes: int | None = None,
                  img_size: int | None = None, data: str | Path | None = None, golden_count: int = 8,
                  seed: int = 0, fold: bool = True, recipe: Recipe | None = None, log: Log = print,
                  calib_data: str | Path | None = None, calib_size: int | None = None) -> PreparedModel:
    """Load (or take) the model, make random init informative, canonicalize and verify it.

    Golden inputs: `data` when given; else, with `calib_data`, images of it held out of the
    calibration sample (`calib_size` or the recipe's, drawn with the recipe's seed); else synthetic.
    """
    import torch

    if weights is not None and pretrained:
        raise UsageError("--weights and --pretrained both given", "pick one source of weights")
    if isinstance(model, str):
        spec = models.resolve(model, num_classes, img_size)
        contract = contract or models.contract_for(spec)
        _torch_seed(RANDOM_INIT_SEED)
        module = models.build(spec, pretrained=pretrained)
        info = {"name": model, "timm_name": spec.timm_name, "source": "timm"}
    elif isinstance(model, torch.nn.Module):
        if contract is None:
            raise UsageError("a torch.nn.Module needs an explicit preprocessing contract",
                             "pass contract=Preprocess(crop_size=..., resize_short=..., mean=..., std=...)")
        module = model.eval()
        info = {"name": name or type(model).__name__, "timm_name": None, "source": "torch.nn.Module"}
    else:
        raise UsageError(f"model must be a name or a torch.nn.Module, not {type(model).__name__}")
    calib_recipe = recipe or load_recipe()
    golden = datasets.golden_batch(contract, data, golden_count, seed, log=log, calib_dir=calib_data,
                                   calib_count=calib_size or calib_recipe.calibration_size,
                                   calib_seed=calib_recipe.calibration_seed)
    if golden.skipped:
        log(f"warning: skipped {len(golden.skipped)} unreadable images in {'--data' if data else '--calib-data'}")
    x = torch.from_numpy(golden.tensors)
    if weights is not None:
        info["weights"] = "file"
        info["weights_sha256"] = models.load_weights(module, weights, log=log)
        info["weights_file"] = str(weights)
    elif pretrained:
        info["weights"] = "timm pretrained"
    elif info["source"] == "timm":
        scales = models.open_layer_scales(module)
        norms = models.recalibrate_batchnorm(module, [x])
        info["weights"] = f"random init, seed {RANDOM_INIT_SEED}"
        info["random_init"] = {"seed": RANDOM_INIT_SEED, "batchnorm_reestimated": norms,
                               "batchnorm_variance_floor": "median of each norm",
                               "layer_scales_set_to_1": scales, "on": golden.source}
        log(f"weights: random init (seed {RANDOM_INIT_SEED}); {norms} BatchNorm statistics re-estimated on the "
            f"{golden.source} golden inputs (variances floored at each norm's median) so activations are O(1) "
            "and well-conditioned; no accuracy meaning")
    else:
        info["weights"] = "as given"
    with torch.no_grad():
        logits = module(x[:1])
    info["num_classes"] = int(logits.shape[-1])
    info["parameters"] = int(sum(p.numel() for p in module.parameters()))
    canonical, stats = canon.canonicalize(module, x[:1], fold=fold)
    stats.verification = canon.verify(module, canonical, golden.tensors)
    if fold:
        thresholds = (recipe or load_recipe()).thresholds("fp32")
        failures = thresholds.failures(stats.verification)
        if failures:
            raise DeployError(f"folding changed the model's function ({'; '.join(failures)})",
                              "re-run with --no-fold and report this model")
    with torch.no_grad():
        reference = canonical(x).numpy()
    log(f"canonical: {stats.norms_folded} norms, {stats.layer_scales_folded} layer scales folded; "
        f"cosine vs original {stats.verification.cosine:.8f}")
    return PreparedModel(info["name"], module, canonical, contract, golden, reference, info, stats.to_dict(),
                         example=x[:1].contiguous())


def resolve_converters(targets: str | Sequence[str],
                       options: ExportOptions | Mapping[str, Any] | None = None) -> list[Converter]:
    """Load the asked-for targets and refuse, before any work, what they cannot do here."""
    options = ExportOptions.of(options)
    eps = find_targets()
    converters = [load_target(name, eps) for name in parse_targets(targets, eps)]
    for conv in converters:
        conv.info.require_backends()
        if options.dynamic_batch and not conv.info.dynamic_batch:
            raise UsageError(f"option --dynamic-batch is not used by target {conv.info.name}: it exports a fixed "
                             "batch of 1", f"drop --dynamic-batch, or export {conv.info.name} in another run")
        conv.check_options(options)
    if options.overflow_fix is not None and options.overflow_fix not in OVERFLOW_FIX_MODES:
        raise UsageError(f"--overflow-fix {options.overflow_fix!r} is not one of {', '.join(OVERFLOW_FIX_MODES)}",
                         "auto: 7-bit weights where x86 int16 pair sums could saturate; all; or off")
    _check_declared_values(converters, options)
    _refuse_unused_options(converters, options)
    return converters


def _check_declared_values(converters: Sequence[Converter], options: ExportOptions) -> None:
    """Each requested target's declared options: the value's type and choices (after the target's own check)."""
    for conv in converters:
        for option in conv.info.options:
            option.check_value(getattr(options, option.name))


def _refuse_unused_options(converters: Sequence[Converter], options: ExportOptions) -> None:
    """An option no requested target honours is a mistake (e.g. --image-input with --to onnx).

    `--no-simplify` is tolerated by every target; `--dynamic-batch` was refused per target above.
    """
    declared = declared_options()
    for name in options.changed():
        if name in ("simplify", "dynamic_batch"):
            continue
        if name == "fold":
            honoured, flag = any(c.info.unfolded for c in converters), "--no-fold"
        elif name == "overflow_fix":  # shapes the run's int8 plan
            honoured, flag = any(c.info.needs_calibration and c.info.shared_plan for c in converters), "--overflow-fix"
        else:
            honoured, flag = any(name in c.info.option_names() for c in converters), declared[name].flag
        if not honoured:
            raise UsageError(f"option {flag} is not used by target(s) {', '.join(c.info.name for c in converters)}",
                             "drop it, or add a target that honours it; `mnv4-deploy export --help` lists each "
                             "target's options")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, DeployError):
        return exc.one_line()
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


CALIBRATION_HELD = 256  # streamed calibration sets keep this many images (or the recipe's correction_size) in memory


@dataclass
class Evaluation:
    """Labeled images held in memory with the reference's logits on them (conversion-time checks)."""

    batch: datasets.ImageBatch
    reference_logits: np.ndarray


@dataclass
class RunContext:
    """What every target of one run shares: computed once, never per target."""

    prepared: PreparedModel
    recipe: Recipe
    options: ExportOptions
    out_dir: Path
    stem: str
    calibration: datasets.ImageBatch | None = None
    evaluation: Evaluation | None = None  # the held labeled images conversion-time checks use
    eval_stage: Any = None  # eval_stage.EvalStage: the labeled set streamed after every target is judged
    plan: Any = None  # quantize.PlanStage, built once when an int8 target needs it
    max_drop: float | None = None
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    run_cache: dict[Any, Any] = field(default_factory=dict)  # ConvertJob.run_cache: shared by this run's targets
    log: Log = print


def _convert_atomically(conv: Converter, ctx: RunContext, result: TargetResult) -> Artifact | None:
    info = conv.info
    workdir = private_workdir(ctx.out_dir)
    started = time.perf_counter()
    try:
        job = ConvertJob(model=ctx.prepared.canonical, contract=ctx.prepared.contract, example=ctx.prepared.example,
                         workdir=workdir, stem=ctx.stem, options=ctx.options, recipe=ctx.recipe,
                         calibration=ctx.calibration, upstream=ctx.artifacts.get(info.upstream or ""),
                         plan=ctx.plan.plan if ctx.plan is not None else None, evaluation=ctx.evaluation,
                         model_info=ctx.prepared.model_info, run_cache=ctx.run_cache, log=ctx.log)
        artifact = conv.convert(job)
        companions = tuple(move_into_place(p, ctx.out_dir / p.name) for p in artifact.companions)
        return replace(artifact, path=move_into_place(artifact.path, ctx.out_dir / artifact.path.name),
                       companions=companions)
    except OutputNotWritable:
        raise  # disk full under --out: every later write would fail too; one line, exit 2
    except OSError as exc:
        no_room = output_write_error(exc, ctx.out_dir, f"the {info.name} artifact")
        if no_room is not None:
            raise no_room from None
        result.reason = _one_line(exc)
        result.exit_code = EXIT_OTHER
        ctx.log(f"{info.name}: export failed: {result.reason}")
        return None
    except Exception as exc:
        result.reason = _one_line(exc)
        result.exit_code = exc.exit_code if isinstance(exc, DeployError) else EXIT_OTHER
        ctx.log(f"{info.name}: export failed: {result.reason}")
        return None
    finally:
        result.seconds_convert = round(time.perf_counter() - started, 3)
        shutil.rmtree(workdir, ignore_errors=True)


def run_target(conv: Converter, ctx: RunContext) -> TargetResult:
    """Convert one target into the output directory atomically, then judge it."""
    result = TargetResult(target=conv.info.name, precision=conv.info.precision, status=EXPORT_FAILED)
    artifact = _convert_atomically(conv, ctx, result)
    if artifact is None:
        return result
    ctx.artifacts[conv.info.name] = artifact
    result.metadata = artifact.metadata
    result.extra_judgements = list(artifact.extra_judgements)
    result.precision = artifact.precision  # judged as what it is (openvino --openvino-fp16-weights: fp16)
    return judge_artifact(conv, artifact, ctx, result)


def judge_artifact(conv: Converter, artifact: Artifact, ctx: RunContext, result: TargetResult,
                   runner: Runner | NotRunnable | None = None) -> TargetResult:
    """Run an artifact in its runtime and judge parity (and accuracy) against the reference.

    `runner`: one already opened (validate opens it first, so a damaged file is exit 2, not 3).
    """
    result.artifact = artifact.path.name
    result.size_bytes = size_bytes(artifact.path)
    result.sha256 = sha256_path(artifact.path)
    started = time.perf_counter()
    try:
        runner = runner if runner is not None else conv.runner(artifact)
        if isinstance(runner, NotRunnable):
            result.status, result.reason = NOT_RUN_HERE, runner.reason
            return result
        result.runtime = runner.runtime
        logits = runner.run(ctx.prepared.golden.tensors)
        if ctx.eval_stage is not None:  # accuracy comes later, in one pass for every target
            ctx.eval_stage.runners[conv.info.name] = runner.run
        emulated = artifact.emulation(ctx.prepared.golden.tensors) if artifact.emulation is not None else None
        if runner.cross_checks:
            bounds = ctx.recipe.thresholds(artifact.emulation_bounds)
            checks = [_cross_check(c, ctx, logits, emulated, bounds) for c in runner.cross_checks]
            result.metadata["cross_checks"] = checks
            notes = [f"cross-check off the plan ({c['vs_emulation_failures'][0]}): {c['runtime']}"
                     for c in checks if c.get("vs_emulation_failures")]
            if notes:
                result.metadata["notes"] = [*result.metadata.get("notes", []), *notes]
    except Exception as exc:
        result.status, result.exit_code = VALIDATION_FAILED, EXIT_PARITY
        result.reason = f"running the artifact failed: {_one_line(exc)}"
        return result
    finally:
        result.seconds_validate = round(time.perf_counter() - started, 3)
    _judge(result, ctx, logits, emulated, artifact.emulation_bounds)
    ctx.log(f"{conv.info.name}: {STATUS_TEXT[result.status]} (cosine {result.parity['cosine']:.6f}, "
            f"max abs {result.parity['max_abs']:.2e}) -> {artifact.path}")
    return result


def _cross_check(second: Any, ctx: RunContext, logits: np.ndarray, emulated: np.ndarray | None,
                 bounds: Any) -> dict[str, Any]:
    """Another runtime on the golden inputs: its parity with PyTorch, the judged runtime and the emulation
    (with the emulation bounds it misses, which the row's note then names; it does not gate)."""
    from .validate import compare

    try:
        other = second.run(ctx.prepared.golden.tensors)
    except Exception as exc:  # informative only: a cross-check that cannot run does not fail the artifact
        return {"runtime": second.runtime, "error": _one_line(exc)}
    check = {"runtime": second.runtime, "parity": compare(ctx.prepared.reference_logits, other).to_dict(),
             "vs_judged_runtime": compare(logits, other).to_dict()}
    if emulated is not None:
        metrics = compare(emulated, other)
        check["vs_emulation"] = metrics.to_dict()
        check["vs_emulation_failures"] = bounds.failures(metrics)
    return check


def _judge(result: TargetResult, ctx: RunContext, logits: np.ndarray, emulated: np.ndarray | None = None,
           emulation_bounds: str = "emulation") -> None:
    """Parity against the float reference and against the artifact's own emulation.

    The emulation bound (when a converter gives one) tells "the converter expressed its recipe"
    apart from "the recipe costs this much against float"; both gate.
    """
    from .validate import compare

    metrics = compare(ctx.prepared.reference_logits, logits)
    thresholds = ctx.recipe.thresholds(result.precision)
    result.parity, result.thresholds = metrics.to_dict(), thresholds.to_dict()
    float_failures = thresholds.failures(metrics)
    emulation_failures: list[str] = []
    if emulated is not None:
        emu_metrics, emu_bounds = compare(emulated, logits), ctx.recipe.thresholds(emulation_bounds)
        result.emulation_parity, result.emulation_thresholds = emu_metrics.to_dict(), emu_bounds.to_dict()
        emulation_failures = [f"vs emulation: {f}" for f in emu_bounds.failures(emu_metrics)]
    result.failures = float_failures + emulation_failures
    if result.failures:
        result.status, result.exit_code = VALIDATION_FAILED, EXIT_PARITY
    else:
        result.status = PASSED


def _judge_accuracy(result: TargetResult, acc: Any, max_drop: float | None) -> None:
    """Record a target's accuracy; over the --max-drop budget fails it unless parity already did."""
    result.accuracy = acc.to_dict()
    if max_drop is not None and acc.drop_top1 > max_drop:
        result.failures.append(f"top-1 drop {acc.drop_top1:.2f} pt > --max-drop {max_drop}")
        if result.status == PASSED:
            result.status, result.exit_code = ACCURACY_FAILED, EXIT_ACCURACY


def _stream_evaluation(ctx: RunContext, report: Report, keep_records: bool = True) -> None:
    """The labeled set, once, through the reference and every judged target; accuracy from its records.

    Records go to `--out/eval/`; without `keep_records` they live in a temporary folder.
    """
    import tempfile

    stage = ctx.eval_stage
    if stage is None:
        return
    shas = {r.target: r.sha256 for r in report.results if r.target in stage.runners}
    with tempfile.TemporaryDirectory(prefix="mnv4-eval-") as scratch:
        records = stage.run(ctx.prepared.canonical, ctx.prepared, ctx.recipe, shas,
                            ctx.out_dir if keep_records else Path(scratch), ctx.log)
    report.evaluation = records.describe(ctx.prepared.contract.sha256()) | ({} if keep_records else {"records": None})
    for result in report.results:
        if result.target in records.sides:
            _judge_accuracy(result, records.accuracy(result.target), ctx.max_drop)


def _check_run_inputs(converters: Sequence[Converter], calib_data: Any, eval_data: Any, max_drop: float | None) -> None:
    needing = [c.info.name for c in converters if c.info.needs_calibration]
    if needing and calib_data is None:
        raise UsageError(f"target {', '.join(needing)} needs calibration images",
                         "pass --calib-data DIR (any folder of images, e.g. a few hundred photos)")
    if max_drop is not None:
        if eval_data is None:
            raise UsageError("--max-drop needs labeled images to measure the drop on", "pass --eval-data DIR")
        if not 0.0 <= max_drop <= 100.0:
            raise UsageError(f"--max-drop {max_drop}: must be between 0 and 100 (points of top-1)")


def _find_eval_set(eval_data: Any, eval_size: int | None, seed: int, eval_options: Mapping[str, Any] | None) -> Any:
    """The labeled set found and sampled (not decoded) before the model loads; None without --eval-data.

    A typo in the folder, its labels, the shard spec or the reference folder fails in seconds,
    not after the model is built and the calibration images decoded.
    """
    if eval_data is None:
        return None
    from .eval_stage import EvalRequest

    return EvalRequest.find(eval_data, count=eval_size, seed=seed, **dict(eval_options or {}))


def _eval_stage(request: Any, prepared: PreparedModel) -> Any:
    """The found set (eval_stage.EvalRequest) for the loaded model (its label range checked); None without one."""
    if request is None:
        return None
    from .eval_stage import EvalStage

    return EvalStage.open(request, prepared.contract, prepared.model_info["num_classes"])


def _held_evaluation(stage: Any, prepared: PreparedModel, log: Log) -> Evaluation:
    """The first labeled images in memory, with reference logits, for conversion-time checks."""
    batch = stage.held_batch(log)
    return Evaluation(batch, torch_logits(prepared.canonical, batch.tensors))


def _new_report(ctx: RunContext) -> Report:
    prepared, recipe = ctx.prepared, ctx.recipe
    return Report(model=prepared.model_info, contract=prepared.contract.to_dict(), canonical=prepared.canonical_info,
                  golden=prepared.golden.describe(), options=ctx.options.to_dict(),
                  recipe={"name": recipe.name, **recipe.to_dict()}, out_dir=str(ctx.out_dir),
                  evaluation=None,  # filled from the evaluation records after every target is judged
                  quantization=ctx.plan.summary if ctx.plan is not None else None)


def export(model: "str | Any", targets: str | Sequence[str] = "onnx", out: str | Path | None = None, *,
           contract: Preprocess | None = None, name: str | None = None, weights: str | Path | None = None,
           pretrained: bool = False, num_classes: int | None = None, img_size: int | None = None,
           data: str | Path | None = None, golden_count: int = 8, seed: int = 0,
           calib_data: str | Path | None = None, calib_size: int | None = None,
           eval_data: str | Path | None = None, eval_size: int | None = None, max_drop: float | None = None,
           options: ExportOptions | Mapping[str, Any] | None = None, quant_config: str | Path = "default",
           log: Log = print, step: Log | None = None, sensitivity_images: int = 0,
           eval_options: Mapping[str, Any] | None = None) -> Report:
    """Export `model` to every target, validate each artifact, write the report and manifest.

    Returns the `Report`; `report.exit_code` says whether every artifact passed. Bad input
    raises a `UsageError` (exit 2) before any file is written; a missing backend raises
    `BackendMissing` (exit 5). Calibration tensors, the labeled set and the canonical model
    are computed once and shared by every target. `step`, when given, is told the name of each
    long step as it starts (progress bars, phase timers); `sensitivity_images` > 0 adds a
    per-layer int8 sensitivity ranking on that many calibration images to the report.
    `eval_options` (`shard` "K/N", `workers`, `resume`, `reference_from`: an earlier run's --out or
    its eval/ folder whose reference records may be reused) steer the streamed labeled evaluation.
    """
    step = step or (lambda _name: None)
    options = ExportOptions.of(options)
    recipe = load_recipe(quant_config)
    converters = resolve_converters(targets, options)
    _check_run_inputs(converters, calib_data, eval_data, max_drop)
    if golden_count < 2:
        raise UsageError(f"--golden-count {golden_count}: must be at least 2",
                         "random-init BatchNorm re-estimation and the parity statistics need two images or more")
    if calib_size is not None and calib_size < 1:
        raise UsageError(f"--calib-size {calib_size}: must be at least 1")
    eval_request = _find_eval_set(eval_data, eval_size, seed, eval_options)
    label = model if isinstance(model, str) else (name or type(model).__name__)
    out_path = Path(out) if out is not None else Path("exports") / label.replace(":", "_")
    for conv in converters:  # e.g. refuse an --out inside an existing BPU bundle, before writing anything
        conv.check_output_dir(out_path)
    out_dir = ensure_writable_dir(out_path)
    with output_lock(out_dir, log=log):  # one run per --out; stale temp work of killed runs removed
        step("prepare model")
        calibrating = calib_data is not None and any(c.info.needs_calibration for c in converters)
        prepared = prepare_model(model, contract=contract, name=name, weights=weights, pretrained=pretrained,
                                 num_classes=num_classes, img_size=img_size, data=data, golden_count=golden_count,
                                 seed=seed, fold=options.fold, recipe=recipe, log=log,
                                 calib_data=calib_data if calibrating else None, calib_size=calib_size)
        ctx = RunContext(prepared=prepared, recipe=recipe, options=options, out_dir=out_dir,
                         stem=label.replace(":", "_").replace("/", "_"), max_drop=max_drop, log=log)
        if calib_data is not None and any(c.info.needs_calibration for c in converters):
            step("calibration images")
            ctx.calibration = calibration_set(
                calib_data, prepared.contract, calib_size or recipe.calibration_size, recipe.calibration_seed,
                option="--calib-data", log=log, minimum=calib_size or 1, needed_for=f"--calib-size {calib_size}",
                held=max(CALIBRATION_HELD, recipe.section("calibration").get("correction_size", 0)))
            prepared.model_info["calibration"] = ctx.calibration.describe() | {"files": ctx.calibration.files}
            log(f"calibration: {len(ctx.calibration)} images from {calib_data} (sha256 {ctx.calibration.sha256[:12]})")
            datasets.check_held_out(prepared.golden, ctx.calibration.files)
        ctx.eval_stage = _eval_stage(eval_request, prepared)
        if ctx.eval_stage is not None and any(c.info.needs_calibration for c in converters):
            step("held labeled images")
            ctx.evaluation = _held_evaluation(ctx.eval_stage, prepared, log)
        if ctx.calibration is not None and any(c.info.needs_calibration and c.info.shared_plan for c in converters):
            from .quantize import build_plan_stage, overflow_fix_mode

            step("int8 plan")
            ctx.plan = build_plan_stage(prepared.canonical, ctx.calibration, recipe, ctx.evaluation, max_drop, log,
                                        sensitivity_images=sensitivity_images,
                                        overflow_fix=overflow_fix_mode(options.overflow_fix, converters))
        report = _new_report(ctx)
        try:
            for conv in _upstream_first(converters):
                step(f"target {conv.info.name}")
                report.results.append(run_target(conv, ctx))
            _in_user_order(report, converters)
            if ctx.eval_stage is not None:
                step("evaluation (one pass, every target)")
                ctx.evaluation = None  # the held images served the conversions; the pass streams its own
                _stream_evaluation(ctx, report)
        except KeyboardInterrupt:
            report.interrupted = True
            done = {r.target for r in report.results}
            report.results += [TargetResult(target=c.info.name, precision=c.info.precision, status=SKIPPED,
                                            reason="interrupted", exit_code=EXIT_OTHER)
                               for c in converters if c.info.name not in done]
            _in_user_order(report, converters)
            report.write(out_dir)
            raise
        report.write(out_dir)
        return report


def _upstream_first(converters: Sequence[Converter]) -> list[Converter]:
    """The run order: a target built from another's artifact after it (registry.build_order)."""
    by_name = {c.info.name: c for c in converters}
    return [by_name[n] for n in build_order(list(by_name))]


def _in_user_order(report: Report, converters: Sequence[Converter]) -> None:
    """Rows in the order the targets were asked for, whatever order they were built in."""
    position = {c.info.name: i for i, c in enumerate(converters)}
    report.results.sort(key=lambda r: position.get(r.target, len(position)))


def _check_artifact_io(description: Mapping[str, Any], prepared: PreparedModel, path: Path) -> None:
    """Say precisely how an artifact's I/O differs from the model's, instead of a runtime crash."""
    inputs, outputs = description.get("inputs") or [], description.get("outputs") or []
    if inputs:
        shape = [d for d in inputs[0]["shape"] if isinstance(d, int)]
        expected = [3, *prepared.contract.crop_size]
        spatial = sorted(shape[-3:]) if len(shape) >= 3 else shape
        if len(shape) >= 3 and spatial != sorted(expected):
            raise UsageError(f"{path.name}: input shape {inputs[0]['shape']} does not match the model's "
                             f"{[1, *expected]} (NCHW)", "pass the --img-size the artifact was exported with")
    if outputs:
        dims = [d for d in outputs[0]["shape"] if isinstance(d, int)]
        classes = prepared.model_info["num_classes"]
        if dims and dims[-1] != classes:
            raise UsageError(f"{path.name}: outputs {dims[-1]} classes, the model {classes}",
                             "pass the --num-classes the artifact was exported with")


def validate_artifact(artifact: str | Path, model: "str | Any", *, target: str | None = None,
                      contract: Preprocess | None = None, name: str | None = None,
                      weights: str | Path | None = None, pretrained: bool = False, num_classes: int | None = None,
                      img_size: int | None = None, data: str | Path | None = None, golden_count: int = 8,
                      seed: int = 0, eval_data: str | Path | None = None, eval_size: int | None = None,
                      max_drop: float | None = None, quant_config: str | Path = "default", fold: bool = True,
                      out: str | Path | None = None, log: Log = print,
                      eval_options: Mapping[str, Any] | None = None) -> Report:
    """Re-validate an existing artifact (e.g. after a vendor tool touched it) against the model."""
    path = precheck(artifact)
    eps = find_targets()
    conv = load_target(target, eps) if target else target_for_artifact(path, eps)
    conv.info.require_backends()
    _check_run_inputs([], None, eval_data, max_drop)
    eval_request = _find_eval_set(eval_data, eval_size, seed, eval_options)
    recipe = load_recipe(quant_config)
    prepared = prepare_model(model, contract=contract, name=name, weights=weights, pretrained=pretrained,
                             num_classes=num_classes, img_size=img_size, data=data, golden_count=golden_count,
                             seed=seed, fold=fold, recipe=recipe, log=log)
    artifact_ = Artifact(conv.info.name, path, conv.info.precision)
    with reading(path, f"{conv.info.name} artifact"):  # damaged input: one line, exit 2, before judging
        description = conv.describe(path)
        runner = conv.runner(artifact_)  # opening the runtime reads what describe does not (e.g. weights)
    if description is not None:
        _check_artifact_io(description, prepared, path)
    out_dir = ensure_writable_dir(Path(out)) if out is not None else path.parent
    ctx = RunContext(prepared=prepared, recipe=recipe, options=ExportOptions(fold=fold), out_dir=out_dir,
                     stem=path.stem, max_drop=max_drop, log=log)
    ctx.eval_stage = _eval_stage(eval_request, prepared)
    report = _new_report(ctx)
    # a file may carry another precision than its target's default (openvino --openvino-fp16-weights)
    precision = conv.declared_precision(description or {})
    result = TargetResult(target=conv.info.name, precision=precision, status=EXPORT_FAILED)
    report.results.append(judge_artifact(conv, artifact_, ctx, result, runner=runner))
    _stream_evaluation(ctx, report, keep_records=out is not None)
    report.results[0].artifact = str(path)
    if out is not None:
        with output_lock(out_dir, log=log):
            report.write(out_dir)
    return report
