"""The command line: `mnv4-deploy {export, validate, inspect, benchmark, build, merge-manifests, models,
targets}` and the short form `mnv4-export`.

Thin on purpose: every command calls the Python API. Errors become one line on stderr and
the exit code their type carries (errors.py), in one place: `_guarded`.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from .cli_help import Command, Group, choice_metavar, with_metavars
from .errors import EXIT_OTHER, EXIT_USAGE, DeployError

if TYPE_CHECKING:
    from .options import TargetOption

app = typer.Typer(cls=Group, no_args_is_help=True,
                  help="Export MobileNet-V4 classifiers to deployable formats and prove each artifact matches PyTorch.")
export_app = typer.Typer(add_completion=False)

DEBUG_ENV = "MNV4_DEPLOY_DEBUG"


def version_text() -> str:
    """`--version`: this tool's version, Python's, and each backend extra's packages as installed."""
    import platform

    from .provenance import backend_versions, own_version

    lines = [f"mnv4-deploy {own_version()} (Python {platform.python_version()})"]
    for group, versions in backend_versions().items():
        lines.append(f"  {group + ':':<11} " + ", ".join(f"{name} {v}" for name, v in versions.items()))
    return "\n".join(lines)


def _print_version(value: bool) -> None:
    if value:
        print(version_text())
        raise typer.Exit(0)


@app.callback()
@with_metavars
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                 help="show the versions of this tool and its "
                                                      "installed backends, then exit")] = False,
          ) -> None:
    # the group's own options; its help text is the Typer(help=...) above
    pass


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _guarded(fn: Callable[[], int]) -> None:
    """Run a command body; map typed errors to one line and their exit code (SIGTERM: as Ctrl-C)."""
    from .signals import exit_code_for, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            code = fn()
    except DeployError as exc:
        _err(f"error: {exc.one_line()}")
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        raise typer.Exit(exc.exit_code) from None
    except BrokenPipeError:  # `mnv4-deploy inspect x | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")
        raise typer.Exit(0) from None
    except KeyboardInterrupt as exc:
        code = exit_code_for(exc)
        what = "interrupted" if code == 130 else "terminated (SIGTERM)"
        _err(f"{what}: no half-written artifact was left; report.json says what finished")
        raise typer.Exit(code) from None
    except typer.Exit:
        raise
    except Exception as exc:  # a bug or an unexpected backend failure
        _err(f"error: {type(exc).__name__}: {exc}".splitlines()[0])
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        else:
            _err(f"(set {DEBUG_ENV}=1 to see the traceback)")
        raise typer.Exit(EXIT_OTHER) from None
    raise typer.Exit(code)


# ---- shared options -------------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="conv_small, conv_medium, conv_large, hybrid_medium, "
                                        "hybrid_large, another MNv4 short name, NAME.TAG, or timm:NAME")]
ToOpt = Annotated[str, typer.Option("--to", "-t", help="target or comma-separated targets (see `mnv4-deploy targets`)")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory [default: ./exports/<model>/]")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="timm-format state dict (.pth/.pt/.safetensors)")]
PretrainedOpt = Annotated[bool, typer.Option("--pretrained", help="download timm's pretrained weights (needs network)")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="folder of images for the golden parity inputs "
                                                 "[default: when --calib-data feeds an int8 target, images of it "
                                                 "held out of the calibration sample; else seeded synthetic]")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="override the classifier size")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", help="override the input size (square)")]
CalibDataOpt = Annotated[Optional[Path], typer.Option("--calib-data", help="folder of images for int8 calibration "
                                                      "(recursive)")]
CalibSizeOpt = Annotated[Optional[int], typer.Option("--calib-size", help="calibration images drawn (seeded) "
                                                     "[default: the recipe's, 300]")]
EvalDataOpt = Annotated[Optional[Path], typer.Option("--eval-data", help="labeled images: ImageFolder tree or a "
                                                     "folder with labels.csv (file,class_index)")]
EvalSizeOpt = Annotated[Optional[int], typer.Option("--eval-size", help="evaluate on a seeded sample of N images")]
MaxDropOpt = Annotated[Optional[float], typer.Option("--max-drop", help="fail (exit 4) when top-1 drops more "
                                                     "than this many points")]
QuantOpt = Annotated[str, typer.Option("--quant-config", help="a shipped recipe (default; adaround: AdaRound "
                                        "rounding, minutes per model, smaller int8 error; bpu) or a recipe YAML file")]
EvalShardOpt = Annotated[Optional[str], typer.Option("--eval-shard", help="evaluate only the K-th of N deterministic "
                                                     "shards, K/N (merge the records with merge-eval)")]
EvalWorkersOpt = Annotated[int, typer.Option("--eval-workers", help="processes decoding labeled images "
                                             "(0: in the main process)")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue an interrupted evaluation from the records "
                                         "in --out/eval/")]
EvalReferenceFromOpt = Annotated[Optional[Path], typer.Option("--eval-reference-from", help="reuse the reference's "
                                                              "per-image records of an earlier run's --out when model, "
                                                              "recipe, contract and images match")]


def _eval_options(shard: Optional[str], workers: int, resume: bool, eval_data: Optional[Path],
                  reference_from: Optional[Path] = None) -> dict:
    from .errors import UsageError

    needing = [flag for flag, given in (("--eval-shard", shard is not None), ("--resume", resume),
                                        ("--eval-reference-from", reference_from is not None)) if given]
    if eval_data is None and needing:
        raise UsageError(f"{needing[0]} needs labeled images", "pass --eval-data DIR")
    if shard is not None:
        from .evaluation import ShardSpec

        ShardSpec.parse(shard)  # a malformed K/N is refused before the model loads
    return {"shard": shard, "workers": workers, "resume": resume, "reference_from": reference_from}


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


OutputOpt = Annotated[OutputFormat, typer.Option("--output", help="table or json on stdout")]


class OverflowFix(str, Enum):
    """--overflow-fix (the values of options.OVERFLOW_FIX_MODES)."""

    auto = "auto"
    all = "all"
    off = "off"


def _export_body(model: str, to: str, out: Optional[Path], quiet: bool, output: OutputFormat,
                 options: dict, **kwargs) -> int:
    from .pipeline import export
    from .registry import ExportOptions

    log = (lambda _msg: None) if quiet or output is OutputFormat.json else _err
    report = export(model, to, out, options=ExportOptions(**options), log=log, **kwargs)
    if output is OutputFormat.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        if not quiet:
            print("\n".join(report.summary_lines()))
            print()
        print(report.format_table())
        print(f"\nwrote {report.out_dir}/ (report.json, report.md, manifest.json, SHA256SUMS); exit code {report.exit_code}")
    return report.exit_code


# ---- export's flags: its own, then every registered target's declared options, by help panel -------
def _in_panel(option: Any, panel: str) -> Any:
    """A shared `Annotated[type, typer.Option(...)]` listed under `panel` in this command's --help."""
    info = copy.copy(option.__metadata__[0])
    info.rich_help_panel = panel
    return Annotated[option.__origin__, info]


def _flag(annotation: Any, *decls: str, help: str, panel: str, metavar: Optional[str] = None) -> Any:
    return Annotated[annotation, typer.Option(*decls, help=help, rich_help_panel=panel, metavar=metavar)]


# (name, annotation, default) in --help order; the core's options (fold, dynamic_batch, simplify, overflow_fix)
# among them
_EXPORT_FLAGS: list[tuple[str, Any, Any]] = [
    ("model", _in_panel(ModelOpt, "Model"), "conv_small"),
    ("to", _in_panel(ToOpt, "Model"), "onnx"),
    ("weights", _in_panel(WeightsOpt, "Model"), None),
    ("pretrained", _in_panel(PretrainedOpt, "Model"), False),
    ("num_classes", _in_panel(NumClassesOpt, "Model"), None),
    ("img_size", _in_panel(ImgSizeOpt, "Model"), None),
    ("fold", _flag(bool, "--fold/--no-fold", help="fold BatchNorm/LayerScale", panel="Model"), True),
    ("data", _in_panel(DataOpt, "Data"), None),
    ("golden_count", _flag(int, "--golden-count", help="golden inputs for parity", panel="Data"), 8),
    ("seed", _flag(int, "--seed", help="seed for synthetic inputs and sampling", panel="Data"), 0),
    ("calib_data", _in_panel(CalibDataOpt, "Quantization"), None),
    ("calib_size", _in_panel(CalibSizeOpt, "Quantization"), None),
    ("quant_config", _in_panel(QuantOpt, "Quantization"), "default"),
    ("overflow_fix", _flag(Optional[OverflowFix], "--overflow-fix", panel="Quantization",
                           help="7-bit weights where x86 CPUs without VNNI would saturate int16 pair sums: auto "
                                "(only channels that could), all (every GEMM-run layer) or off; default auto when "
                                "a target runs x86 int8 kernels (onnx-int8, openvino-int8), else off"), None),
    ("eval_data", _in_panel(EvalDataOpt, "Evaluation"), None),
    ("eval_size", _in_panel(EvalSizeOpt, "Evaluation"), None),
    ("max_drop", _in_panel(MaxDropOpt, "Evaluation"), None),
    ("eval_shard", _in_panel(EvalShardOpt, "Evaluation"), None),
    ("eval_workers", _in_panel(EvalWorkersOpt, "Evaluation"), 2),
    ("resume", _in_panel(ResumeOpt, "Evaluation"), False),
    ("eval_reference_from", _in_panel(EvalReferenceFromOpt, "Evaluation"), None),
    ("simplify", _flag(bool, "--simplify/--no-simplify", help="run onnxsim", panel="ONNX"), True),
]
_EXPORT_OUTPUT_FLAGS: list[tuple[str, Any, Any]] = [
    ("out", _in_panel(OutOpt, "Output"), None),
    ("dynamic_batch", _flag(bool, "--dynamic-batch", help="dynamic batch axis", panel="Output"), False),
    ("quiet", _flag(bool, "--quiet", "-q", help="only the result table", panel="Output"), False),
    ("output", _flag(OutputFormat, "--output", help="table or json on stdout", panel="Output"), OutputFormat.table),
]
_CORE_PANELS = ("Model", "Data", "Quantization", "Evaluation", "ONNX", "Output")


def _declared_flag(option: "TargetOption") -> tuple[str, Any, Any]:
    """One target-declared option as a Typer flag (a bool defaulting to True gets --no-NAME)."""
    decl = option.flag
    if option.type is bool and option.default:
        decl = f"{option.flag}/--no-{option.flag[2:]}"
    annotation = Optional[option.type] if option.default is None else option.type
    metavar = choice_metavar(option.choices) if option.choices else None
    return option.name, _flag(annotation, decl, help=option.help, panel=option.panel, metavar=metavar), option.default


def _target_flags() -> tuple[list[tuple[str, Any, Any]], DeployError | None]:
    """The registry's declared options as flags, ordered by panel (the core's panels first).

    A conflicting declaration (e.g. a plugin redeclaring --layout differently) does not break
    the other commands: export then refuses to run, naming the conflict.
    """
    from .registry import declared_options

    try:
        declared = declared_options()
    except DeployError as exc:
        return [], exc
    own = {name for name, _, _ in _EXPORT_FLAGS + _EXPORT_OUTPUT_FLAGS}
    clash = sorted(set(declared) & own)
    if clash:
        return [], DeployError(f"a target declares the option {declared[clash[0]].flag}, which export itself owns",
                               "rename the target's option")
    ordered = sorted(declared.values(), key=lambda o: (_CORE_PANELS.index(o.panel) if o.panel in _CORE_PANELS
                                                       else len(_CORE_PANELS) - 1, o.panel))
    return [_declared_flag(o) for o in ordered], None


_TARGET_FLAGS, _OPTIONS_PROBLEM = _target_flags()


def export_command(**params: Any) -> None:
    """Export a model to one or more targets and validate every artifact against PyTorch."""
    def body() -> int:
        if _OPTIONS_PROBLEM is not None:
            raise _OPTIONS_PROBLEM
        options = {name: params.pop(name) for name in ("fold", "dynamic_batch", "simplify")}
        fix = params.pop("overflow_fix")
        options["overflow_fix"] = None if fix is None else fix.value
        options.update({name: params.pop(name) for name, _, _ in _TARGET_FLAGS})
        eval_options = _eval_options(params.pop("eval_shard"), params.pop("eval_workers"), params.pop("resume"),
                                     params["eval_data"], params.pop("eval_reference_from"))
        return _export_body(params.pop("model"), params.pop("to"), params.pop("out"), params.pop("quiet"),
                            params.pop("output"), options, eval_options=eval_options, **params)
    _guarded(body)


export_command.__signature__ = inspect.Signature([  # type: ignore[attr-defined]  # what Typer reads
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, annotation, default in _EXPORT_FLAGS + _TARGET_FLAGS + _EXPORT_OUTPUT_FLAGS])
with_metavars(export_command)
app.command("export", cls=Command)(export_command)
export_app.command(cls=Command)(export_command)


@app.command("validate", cls=Command)
@with_metavars
def validate_command(
    artifact: Annotated[Path, typer.Argument(help="an exported artifact (.onnx, .tflite, .mlpackage, ...)")],
    model: ModelOpt = "conv_small",
    target: Annotated[Optional[str], typer.Option("--target", help="target name [default: from the file name]")] = None,
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = False,
    data: DataOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    golden_count: Annotated[int, typer.Option("--golden-count", help="golden inputs for parity")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="seed for synthetic inputs and sampling")] = 0,
    eval_data: EvalDataOpt = None,
    eval_size: EvalSizeOpt = None,
    max_drop: MaxDropOpt = None,
    quant_config: QuantOpt = "default",
    eval_workers: EvalWorkersOpt = 2,
    eval_reference_from: EvalReferenceFromOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="also write report.json/.md here")] = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Re-validate an existing artifact against the model (e.g. after a vendor tool touched it)."""
    def body() -> int:
        from .pipeline import validate_artifact

        log = (lambda _msg: None) if output is OutputFormat.json else _err
        report = validate_artifact(artifact, model, target=target, weights=weights, pretrained=pretrained,
                                   num_classes=num_classes, img_size=img_size, data=data, golden_count=golden_count,
                                   seed=seed, eval_data=eval_data, eval_size=eval_size, max_drop=max_drop,
                                   quant_config=quant_config, out=out, log=log,
                                   eval_options=_eval_options(None, eval_workers, False, eval_data,
                                                              eval_reference_from))
        if output is OutputFormat.json:
            print(json.dumps(report.to_dict(), indent=2, default=str))
        else:
            print(report.format_table())
        return report.exit_code
    _guarded(body)


@app.command("inspect", cls=Command)
@with_metavars
def inspect_command(
    artifact: Annotated[Path, typer.Argument(help="an exported artifact")],
    target: Annotated[Optional[str], typer.Option("--target", help="target name [default: from the file name]")] = None,
) -> None:
    """Show what is inside an artifact: format, I/O, op histogram, metadata (JSON)."""
    def body() -> int:
        from .errors import UsageError
        from .registry import load_target, target_for_artifact

        from .artifact_guard import precheck, reading

        precheck(artifact)
        conv = load_target(target) if target else target_for_artifact(artifact)
        conv.info.require_backends()
        with reading(artifact, f"{conv.info.name} artifact"):
            described = conv.describe(artifact)
        if described is None:
            raise UsageError(f"target {conv.info.name} cannot describe its artifacts")
        print(json.dumps({"target": conv.info.name, "precision": conv.info.precision, **described},
                         indent=2, default=str))
        return 0
    _guarded(body)


@app.command("check", cls=Command)
@with_metavars
def check_command(
    artifact: Annotated[Path, typer.Argument(help="a model file, e.g. any .tflite")],
    target: Annotated[str, typer.Option("--target", help="whose accelerator rules apply")] = "edgetpu",
    strict: Annotated[bool, typer.Option("--strict", help="exit 3 when any op would leave the accelerator")] = False,
    compiler_log: Annotated[Optional[Path], typer.Option("--compiler-log", help="a vendor compiler log "
                                                         "(edgetpu_compiler -s output) to parse too")] = None,
    platform: Annotated[Optional[str], typer.Option("--platform", help="the chip or configuration, for targets built "
                                                    "for several (rknn: rk3588, ...; ethos-u55: u55-128, ...)")] = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Check a model against an accelerator's op rules, op by op (EdgeTPU: any .tflite; RKNN: Rockchip's toolkit)."""
    def body() -> int:
        import contextlib

        from .errors import EXIT_PARITY, UsageError
        from .registry import load_target

        conv = load_target(target)
        from .artifact_guard import precheck, reading

        for path in (artifact, compiler_log):
            if path is not None and not path.is_file():
                raise UsageError(f"{path}: no such file")
        choices = conv.info.check_platforms
        if platform is not None and platform not in choices:
            raise UsageError(f"--platform {platform!r}: target {target} "
                             + (f"builds for {', '.join(choices)}" if choices else "is built for one chip"),
                             "pick one of those" if choices else "drop --platform")
        precheck(artifact)
        # a vendor toolchain (a compiler run out of process) has its own timeouts and error lines
        guard = contextlib.nullcontext() if conv.info.toolchain else reading(artifact, f"model for the {target} check")
        with guard:
            extra = {"platform": platform} if platform is not None else {}
            result = conv.check(artifact, compiler_log=compiler_log, **extra)
        if result is None:
            raise UsageError(f"target {target} has no static accelerator check", "use --target edgetpu")
        if output is OutputFormat.json:
            print(json.dumps(result, indent=2, default=str))
        else:
            print(result["table"])
            if "compiler_log" in result:
                print("\n" + result["compiler_log"]["table"])
        return EXIT_PARITY if strict and not result["fully_mapped"] else 0
    _guarded(body)


@app.command("models", cls=Command)
@with_metavars
def models_command(output: OutputOpt = OutputFormat.table) -> None:
    """List the model names `--model` accepts."""
    def body() -> int:
        from . import models

        rows = [(short, models.PAPER_VARIANTS.get(short) or models._default_tag(models.MNV4_PREFIX + short))
                for short in models.mnv4_short_names()]
        if output is OutputFormat.json:
            print(json.dumps([{"name": a, "timm": b, "paper_variant": a in models.PAPER_VARIANTS} for a, b in rows], indent=2))
            return 0
        width = max(len(a) for a, _ in rows)
        for short, timm_name in rows:
            mark = "*" if short in models.PAPER_VARIANTS else " "
            print(f"{mark} {short.ljust(width)}  {timm_name}")
        print("\n* the five paper variants. Also: NAME.TAG for another checkpoint, "
              "timm:NAME for MobileNet-V3/EfficientNet-family models.")
        return 0
    _guarded(body)


@app.command("targets", cls=Command)
@with_metavars
def targets_command(output: OutputOpt = OutputFormat.table) -> None:
    """List every registered target and whether its backend is installed here."""
    def body() -> int:
        from .registry import target_rows

        rows = target_rows()
        if output is OutputFormat.json:
            print(json.dumps(rows, indent=2))
            return 0
        width = max((len(r["target"]) for r in rows), default=6)
        for r in rows:
            chains = [m.split(" ", 1)[1] for m in r.get("missing", []) if m.startswith("toolchain ")]
            fix = (f"mnv4-deploy toolchain install {chains[0]}" if chains and len(chains) == len(r["missing"])
                   else f"pip install 'mnv4-deploy[{r['extra']}]'")
            state = "installed" if r["installed"] else f"missing ({fix})"
            print(f"{r['target'].ljust(width)}  {r['precision']:<5}  {state:<12}  {r['description']}")
        return 0
    _guarded(body)


# ---- matrix commands: benchmark, build, merge-manifests ------------------------------------------
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines, only the result table")]
JsonOpt = Annotated[bool, typer.Option("--json", help="same as --output json")]


def _progress(quiet: bool, as_json: bool):
    from .progress import AUTO, QUIET, Progress

    return Progress(mode=QUIET if quiet or as_json else AUTO)


def _print_matrix(merged: dict, as_json: bool, quiet: bool, out: Path) -> int:
    from .matrix import format_table, summary_lines

    if as_json:
        keep = ("exit_code", "passed", "interrupted", "problems", "settings", "wall_seconds", "phases", "rows")
        print(json.dumps({k: merged.get(k) for k in keep} | {"out": str(out)}, indent=2, default=str))
        return int(merged["exit_code"])
    if not quiet:
        print("\n".join(summary_lines(merged.get("reports", []))))
        print()
    print(format_table(merged["rows"]))
    for problem in merged.get("problems") or []:
        _err(f"problem: {problem}")
    wall = f" in {merged['wall_seconds']:.0f} s" if merged.get("wall_seconds") is not None else ""
    print(f"\nwrote {out}/ (report.html, report.md, report.json, manifest.json, SHA256SUMS){wall}; "
          f"exit code {merged['exit_code']}")
    return int(merged["exit_code"])


def _min_cosine(text: Optional[str]) -> dict:
    from .errors import UsageError

    found = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, sep, value = item.partition("=")
        try:
            found[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--min-cosine {item!r}: expected TARGET=NUMBER",
                             "e.g. --min-cosine onnx-int8=0.99") from None
        if not sep:
            raise UsageError(f"--min-cosine {item!r}: expected TARGET=NUMBER", "e.g. --min-cosine onnx-int8=0.99")
    return found


@app.command("benchmark", cls=Command)
@with_metavars
def benchmark_command(
    models: Annotated[str, typer.Option("--models", help="comma-separated model names")] = "conv_small",
    targets: Annotated[str, typer.Option("--targets", help="comma-separated targets, or all (every registered "
                                         "target; those whose backend is missing are listed as such)")] = "all",
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("benchmark"),
    img_size: ImgSizeOpt = None,
    data: DataOpt = None,
    golden_count: Annotated[int, typer.Option("--golden-count", help="golden inputs for parity")] = 8,
    calib_data: CalibDataOpt = None,
    calib_size: CalibSizeOpt = None,
    eval_data: EvalDataOpt = None,
    eval_size: EvalSizeOpt = None,
    max_drop: MaxDropOpt = None,
    min_cosine: Annotated[Optional[str], typer.Option("--min-cosine", help="extra parity gates, "
                                                      "TARGET=COSINE comma-separated, e.g. onnx-int8=0.99")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="comma-separated MODEL=FILE "
                                                   "state dicts, e.g. conv_small=a.pth")] = None,
    pretrained: PretrainedOpt = False,
    sensitivity_images: Annotated[int, typer.Option("--sensitivity-images", help="calibration images for the "
                                                    "report's per-layer int8 sensitivity (0: off)")] = 2,
    warmup: Annotated[int, typer.Option("--warmup", help="untimed runs before timing")] = 3,
    runs: Annotated[int, typer.Option("--runs", help="timed runs (the median is reported)")] = 20,
    quant_config: QuantOpt = "default",
    seed: Annotated[int, typer.Option("--seed", help="seed for synthetic inputs and sampling")] = 0,
    quiet: QuietOpt = False,
    output: OutputOpt = OutputFormat.table,
    as_json: JsonOpt = False,
) -> None:
    """Export, validate and time every model x target pair; write report.html/.md/.json and a manifest."""
    def body() -> int:
        from .benchmark import MatrixSpec, run_matrix
        from .build import check_min_cosine, check_targets

        as_json_ = as_json or output is OutputFormat.json
        names = check_targets([t.strip() for t in targets.split(",") if t.strip()], "--targets")
        model_names = _model_names(models)
        spec = MatrixSpec(models=model_names, targets="all" if targets.strip() == "all" else tuple(names),
                          out=out, img_size=img_size, calib_data=calib_data, calib_size=calib_size,
                          eval_data=eval_data, eval_size=eval_size, data=data, golden_count=golden_count, seed=seed,
                          max_drop=_check_max_drop(max_drop, eval_data),
                          min_cosine=check_min_cosine(_min_cosine(min_cosine), names, "--min-cosine"),
                          weights=_weights(weights, model_names), pretrained=pretrained,
                          quant_config=quant_config, warmup=_at_least(warmup, 0, "--warmup"),
                          runs=_at_least(runs, 1, "--runs"),
                          sensitivity_images=_at_least(sensitivity_images, 0, "--sensitivity-images"))
        run = run_matrix(spec, _progress(quiet, as_json_))
        return _print_matrix(run.merged, as_json_, quiet, out)
    _guarded(body)


def _weights(text: Optional[str], models: tuple) -> dict:
    from .errors import UsageError

    found = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, sep, file = item.partition("=")
        if not sep or name not in models:
            raise UsageError(f"--weights {item!r}: expected MODEL=FILE for a model in --models",
                             "e.g. --weights conv_small=ckpt.safetensors")
        if not Path(file).is_file():
            raise UsageError(f"--weights {item!r}: {file} is not a file")
        found[name] = Path(file)
    return found


def _at_least(value: int, lo: int, flag: str) -> int:
    from .errors import UsageError

    if value < lo:
        raise UsageError(f"{flag} {value}: must be at least {lo}")
    return value


def _check_max_drop(max_drop: Optional[float], eval_data: Optional[Path]) -> Optional[float]:
    from .errors import UsageError

    if max_drop is not None and not 0.0 <= max_drop <= 100.0:
        raise UsageError(f"--max-drop {max_drop}: must be between 0 and 100 (points of top-1)")
    if max_drop is not None and eval_data is None:
        raise UsageError("--max-drop needs labeled images to measure the drop on", "pass --eval-data DIR")
    return max_drop


def _model_names(text: str) -> tuple:
    from . import models
    from .errors import UsageError

    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise UsageError("no model given", "pass --models conv_small,conv_medium")
    for name in names:
        models.resolve(name)  # an unknown name is refused before any work
    return names


@app.command("build", cls=Command)
@with_metavars
def build_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="deploy YAML (see examples/deploy.yaml)")],
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="parallel processes (each prepares its own model "
                                      "copy, calibration and int8 plan)")] = 1,
    only: Annotated[Optional[str], typer.Option("--only", help="comma-separated model:target pairs of the "
                                                "config (one CI job's share)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory [default: the "
                                                "config's out]")] = None,
    list_pairs: Annotated[bool, typer.Option("--list", help="print the config's model:target pairs as JSON "
                                             "(a CI job matrix) and exit")] = False,
    quiet: QuietOpt = False,
    output: OutputOpt = OutputFormat.table,
    as_json: JsonOpt = False,
) -> None:
    """Build and gate every model x target of a deploy YAML; the exit code says whether every gate held."""
    def body() -> int:
        from .build import load_config, pairs, restrict, run_build

        spec = load_config(config, out, check_data=not list_pairs)
        if only:
            spec = restrict(spec, [p.strip() for p in only.split(",") if p.strip()])
        if list_pairs:
            print(json.dumps([{"model": m, "target": t, "pair": f"{m}:{t}"} for m, t in pairs(spec)]))
            return 0
        as_json_ = as_json or output is OutputFormat.json
        merged = run_build(spec, _at_least(jobs, 1, "--jobs"), _progress(quiet, as_json_), quiet or as_json_)
        if merged is None:
            raise DeployError("no unit of the build wrote a report", f"set {DEBUG_ENV}=1 and re-run with --jobs 1")
        return _print_matrix(merged, as_json_, quiet, spec.out)
    _guarded(body)


@app.command("merge-manifests", cls=Command)
@with_metavars
def merge_command(
    dirs: Annotated[list[Path], typer.Argument(help="directories holding manifest.json files (searched recursively)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where the merged manifest and reports go")] = Path("."),
    quiet: QuietOpt = False,
    output: OutputOpt = OutputFormat.table,
    as_json: JsonOpt = False,
) -> None:
    """Merge manifests of many runs (e.g. one per CI job), re-checking every artifact's sha256."""
    def body() -> int:
        from .artifacts import ensure_writable_dir
        from .merge import merge
        from .run_lock import output_lock

        with output_lock(ensure_writable_dir(out), log=_err):
            merged = merge(dirs, out)
        return _print_matrix(merged, as_json or output is OutputFormat.json, quiet, out)
    _guarded(body)


@app.command("merge-eval", cls=Command)
@with_metavars
def merge_eval_command(
    dirs: Annotated[list[Path], typer.Argument(help="--out folders of the sharded runs (each holds eval/)")],
    out: Annotated[Path, typer.Option("--out", "-o",
                                      help="output directory for the merged eval/ and summary")] = Path("."),
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="fail (exit 4) when a target's top-1 "
                                                      "drop over all shards exceeds this many points")] = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Merge the per-image records of `--eval-shard K/N` runs: the numbers of one unsharded run."""
    def body() -> int:
        from .artifacts import ensure_writable_dir
        from .eval_merge import merge_eval

        summary = merge_eval(dirs, ensure_writable_dir(out), _check_max_drop(max_drop, Path(".")))
        if output is OutputFormat.json:
            print(json.dumps(summary, indent=2))
        else:
            print(summary["table"])
            print(f"\nwrote {out}/eval/ and {out}/eval_summary.json; exit code {summary['exit_code']}")
        return summary["exit_code"]
    _guarded(body)


toolchain_app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True,
                            help="Vendor toolchains that run outside this environment (e.g. rknn-toolkit2).")
app.add_typer(toolchain_app, name="toolchain")


@toolchain_app.command("install", cls=Command)
@with_metavars
def toolchain_install_command(
    name: Annotated[str, typer.Argument(help="toolchain name (see `mnv4-deploy toolchain status`)")],
    force: Annotated[bool, typer.Option("--force", help="reinstall even when installed with the same pins")] = False,
) -> None:
    """Install a toolchain into its own venv in the cache folder ($MNV4_DEPLOY_TOOLCHAINS); says the size first."""
    def body() -> int:
        from .toolchains import load_toolchain

        load_toolchain(name).install(log=_err, force=force)
        return 0
    _guarded(body)


@toolchain_app.command("status", cls=Command)
@with_metavars
def toolchain_status_command(
    name: Annotated[Optional[str], typer.Argument(help="one toolchain [default: all]")] = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Where each toolchain is and whether it can run here (exit 5 when the one named cannot)."""
    def body() -> int:
        from .errors import EXIT_BACKEND
        from .toolchains import find_toolchains, load_toolchain

        rows = [load_toolchain(n).status() for n in ([name] if name else find_toolchains())]
        if output is OutputFormat.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                where = row.get("python") or row.get("image") or row.get("home")
                print(f"{row['name']:<10} {'usable' if row['usable'] else 'missing':<8} {where}"
                      + (f"\n           {row['reason']}" if row.get("reason") else ""))
        return EXIT_BACKEND if name and not rows[0]["usable"] else 0
    _guarded(body)


def main() -> None:
    app()


def export_main() -> None:
    export_app()


if __name__ == "__main__":
    main()
