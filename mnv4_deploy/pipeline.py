"""The export pipeline: load once, canonicalize once, convert and validate every target.

`export()` is the Python API the CLI calls. It accepts a model name (resolved through the
zoo) or any `torch.nn.Module` with an explicit `Preprocess` contract.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import canonicalize as canon
from . import data as datasets
from . import models
from .artifacts import ensure_writable_dir, move_into_place, private_workdir, sha256_path, size_bytes
from .errors import EXIT_OTHER, EXIT_PARITY, DeployError, UsageError
from .preprocess import Preprocess
from .recipes import Recipe, load_recipe
from .registry import Artifact, ConvertJob, Converter, ExportOptions, NotRunnable, find_targets, load_target, parse_targets
from .report import (EXPORT_FAILED, NOT_RUN_HERE, PASSED, SKIPPED, VALIDATION_FAILED, Report, TargetResult)

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
                  seed: int = 0, fold: bool = True, recipe: Recipe | None = None, log: Log = print) -> PreparedModel:
    """Load (or take) the model, make random init informative, canonicalize and verify it."""
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
    golden = datasets.golden_batch(contract, data, golden_count, seed, log=log)
    if golden.skipped:
        log(f"warning: skipped {len(golden.skipped)} unreadable images in --data")
    x = torch.from_numpy(golden.tensors)
    if weights is not None:
        info["weights"] = "file"
        info["weights_sha256"] = models.load_weights(module, weights)
        info["weights_file"] = str(weights)
    elif pretrained:
        info["weights"] = "timm pretrained"
    elif info["source"] == "timm":
        scales = models.open_layer_scales(module)
        norms = models.recalibrate_batchnorm(module, [x])
        info["weights"] = f"random init, seed {RANDOM_INIT_SEED}"
        info["random_init"] = {"seed": RANDOM_INIT_SEED, "batchnorm_reestimated": norms,
                               "layer_scales_set_to_1": scales, "on": golden.source}
        log(f"weights: random init (seed {RANDOM_INIT_SEED}); {norms} BatchNorm statistics re-estimated on the "
            f"{golden.source} golden inputs so activations are O(1); no accuracy meaning")
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


def resolve_converters(targets: str | Sequence[str], options: ExportOptions) -> list[Converter]:
    """Load the asked-for targets and refuse, before any work, what they cannot do here."""
    eps = find_targets()
    converters = [load_target(name, eps) for name in parse_targets(targets, eps)]
    for conv in converters:
        conv.info.require_backends()
        check_options = getattr(conv, "check_options", None)
        if check_options is not None:
            check_options(options)
    return converters


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, DeployError):
        return exc.one_line()
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def run_target(conv: Converter, prepared: PreparedModel, out_dir: Path, options: ExportOptions, recipe: Recipe,
               stem: str, log: Log) -> tuple[TargetResult, Artifact | None]:
    """Convert one target into `out_dir` atomically, then validate it against the reference."""
    info = conv.info
    result = TargetResult(target=info.name, precision=info.precision, status=EXPORT_FAILED)
    workdir = private_workdir(out_dir)
    started = time.perf_counter()
    try:
        job = ConvertJob(model=prepared.canonical, contract=prepared.contract, example=prepared.example,
                         workdir=workdir, stem=stem, options=options, recipe=recipe, log=log)
        artifact = conv.convert(job)
        final = move_into_place(artifact.path, out_dir / artifact.path.name)
        artifact = replace(artifact, path=final)
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        result.reason = _one_line(exc)
        result.exit_code = exc.exit_code if isinstance(exc, DeployError) else EXIT_OTHER
        log(f"{info.name}: export failed: {result.reason}")
        return result, None
    finally:
        result.seconds_convert = round(time.perf_counter() - started, 3)
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    result.artifact = artifact.path.name
    result.size_bytes = size_bytes(artifact.path)
    result.sha256 = sha256_path(artifact.path)
    result.metadata = artifact.metadata
    started = time.perf_counter()
    try:
        runner = conv.runner(artifact)
        if isinstance(runner, NotRunnable):
            result.status, result.reason = NOT_RUN_HERE, runner.reason
            return result, artifact
        result.runtime = runner.runtime
        logits = runner.run(prepared.golden.tensors)
    except Exception as exc:
        result.status, result.reason, result.exit_code = VALIDATION_FAILED, f"running the artifact failed: {_one_line(exc)}", EXIT_PARITY
        return result, artifact
    finally:
        result.seconds_validate = round(time.perf_counter() - started, 3)
    from .validate import compare

    metrics = compare(prepared.reference_logits, logits)
    thresholds = recipe.thresholds(info.precision)
    result.parity, result.thresholds = metrics.to_dict(), thresholds.to_dict()
    result.failures = thresholds.failures(metrics)
    if result.failures:
        result.status, result.exit_code = VALIDATION_FAILED, EXIT_PARITY
    else:
        result.status = PASSED
    log(f"{info.name}: {result.status} (cosine {metrics.cosine:.6f}, max abs {metrics.max_abs:.2e}) "
        f"-> {artifact.path}")
    return result, artifact


def export(model: "str | Any", targets: str | Sequence[str] = "onnx", out: str | Path | None = None, *,
           contract: Preprocess | None = None, name: str | None = None, weights: str | Path | None = None,
           pretrained: bool = False, num_classes: int | None = None, img_size: int | None = None,
           data: str | Path | None = None, golden_count: int = 8, seed: int = 0,
           options: ExportOptions | None = None, quant_config: str | Path = "default",
           log: Log = print) -> Report:
    """Export `model` to every target, validate each artifact, write the report and manifest.

    Returns the `Report`; `report.exit_code` says whether every artifact passed. Bad input
    raises a `UsageError` (exit 2) before any file is written; a missing backend raises
    `BackendMissing` (exit 5).
    """
    options = options or ExportOptions()
    recipe = load_recipe(quant_config)
    converters = resolve_converters(targets, options)
    if golden_count < 1:
        raise UsageError(f"--golden-count {golden_count}: must be at least 1")
    label = model if isinstance(model, str) else (name or type(model).__name__)
    out_dir = ensure_writable_dir(Path(out) if out is not None else Path("exports") / label.replace(":", "_"))
    prepared = prepare_model(model, contract=contract, name=name, weights=weights, pretrained=pretrained,
                             num_classes=num_classes, img_size=img_size, data=data, golden_count=golden_count,
                             seed=seed, fold=options.fold, recipe=recipe, log=log)
    report = Report(model=prepared.model_info, contract=prepared.contract.to_dict(),
                    canonical=prepared.canonical_info, golden=prepared.golden.describe(),
                    options=options.to_dict(), recipe={"name": recipe.name, **recipe.to_dict()},
                    out_dir=str(out_dir))
    stem = label.replace(":", "_").replace("/", "_")
    try:
        for conv in converters:
            result, _ = run_target(conv, prepared, out_dir, options, recipe, stem, log)
            report.results.append(result)
    except KeyboardInterrupt:
        report.interrupted = True
        done = {r.target for r in report.results}
        report.results += [TargetResult(target=c.info.name, precision=c.info.precision, status=SKIPPED,
                                        reason="interrupted", exit_code=EXIT_OTHER)
                           for c in converters if c.info.name not in done]
        report.write(out_dir)
        raise
    report.write(out_dir)
    return report
