"""The command line: `mnv4-deploy {export, models, targets}` and its short form `mnv4-export`.

Thin on purpose: every command calls the Python API. Errors become one line on stderr and
the exit code their type carries (errors.py), in one place: `_guarded`.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from .errors import EXIT_OTHER, EXIT_USAGE, DeployError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Export MobileNet-V4 classifiers to deployable formats and prove each artifact matches PyTorch.")
export_app = typer.Typer(add_completion=False)

DEBUG_ENV = "MNV4_DEPLOY_DEBUG"


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _guarded(fn: Callable[[], int]) -> None:
    """Run a command body; map typed errors to one line and their exit code."""
    try:
        code = fn()
    except DeployError as exc:
        _err(f"error: {exc.one_line()}")
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        raise typer.Exit(exc.exit_code) from None
    except BrokenPipeError:  # `mnv4-deploy inspect x | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")
        raise typer.Exit(0) from None
    except KeyboardInterrupt:
        _err("interrupted: no half-written artifact was left; report.json says what finished")
        raise typer.Exit(130) from None
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
                                                 "[default: seeded synthetic]")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="override the classifier size")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", help="override the input size (square)")]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset")]
CalibDataOpt = Annotated[Optional[Path], typer.Option("--calib-data", help="folder of images for int8 calibration "
                                                      "(recursive)")]
CalibSizeOpt = Annotated[Optional[int], typer.Option("--calib-size", help="calibration images drawn (seeded) "
                                                     "[default: the recipe's, 300]")]
EvalDataOpt = Annotated[Optional[Path], typer.Option("--eval-data", help="labeled images: ImageFolder tree or a "
                                                     "folder with labels.csv (file,class_index)")]
EvalSizeOpt = Annotated[Optional[int], typer.Option("--eval-size", help="evaluate on a seeded sample of N images")]
MaxDropOpt = Annotated[Optional[float], typer.Option("--max-drop", help="fail (exit 4) when top-1 drops more "
                                                     "than this many points")]
QuantOpt = Annotated[str, typer.Option("--quant-config", help="shipped recipe name or a recipe YAML file")]


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


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


def export_command(
    model: ModelOpt = "conv_small",
    to: ToOpt = "onnx",
    out: OutOpt = None,
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = False,
    data: DataOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    opset: OpsetOpt = 17,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="run onnxsim")] = True,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="dynamic batch axis")] = False,
    fold: Annotated[bool, typer.Option("--fold/--no-fold", help="fold BatchNorm/LayerScale")] = True,
    image_input: Annotated[bool, typer.Option("--image-input", help="CoreML: image (pixel) input, the contract's "
                                              "scale/bias inside the model")] = False,
    min_target: Annotated[Optional[str], typer.Option("--min-target", help="CoreML: oldest OS to load on, e.g. "
                                                      "iOS16, macOS14 [default: the oldest the target allows]")] = None,
    golden_count: Annotated[int, typer.Option("--golden-count", help="golden inputs for parity")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="seed for synthetic inputs and sampling")] = 0,
    calib_data: CalibDataOpt = None,
    calib_size: CalibSizeOpt = None,
    eval_data: EvalDataOpt = None,
    eval_size: EvalSizeOpt = None,
    max_drop: MaxDropOpt = None,
    quant_config: QuantOpt = "default",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only the result table")] = False,
    output: Annotated[OutputFormat, typer.Option("--output", help="table or json on stdout")] = OutputFormat.table,
) -> None:
    """Export a model to one or more targets and validate every artifact against PyTorch."""
    options = dict(opset=opset, simplify=simplify, dynamic_batch=dynamic_batch, fold=fold, image_input=image_input,
                   min_target=min_target)
    _guarded(lambda: _export_body(
        model, to, out, quiet, output, options, weights=weights, pretrained=pretrained, num_classes=num_classes,
        img_size=img_size, data=data, golden_count=golden_count, seed=seed, calib_data=calib_data,
        calib_size=calib_size, eval_data=eval_data, eval_size=eval_size, max_drop=max_drop,
        quant_config=quant_config))


app.command("export")(export_command)
export_app.command()(export_command)


@app.command("validate")
def validate_command(
    artifact: Annotated[Path, typer.Argument(help="an exported artifact (.onnx, .tflite, .mlpackage, ...)")],
    model: ModelOpt = "conv_small",
    target: Annotated[Optional[str], typer.Option("--target", help="target name [default: from the file name]")] = None,
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = False,
    data: DataOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    golden_count: Annotated[int, typer.Option("--golden-count")] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    eval_data: EvalDataOpt = None,
    eval_size: EvalSizeOpt = None,
    max_drop: MaxDropOpt = None,
    quant_config: QuantOpt = "default",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="also write report.json/.md here")] = None,
    output: Annotated[OutputFormat, typer.Option("--output")] = OutputFormat.table,
) -> None:
    """Re-validate an existing artifact against the model (e.g. after a vendor tool touched it)."""
    def body() -> int:
        from .pipeline import validate_artifact

        log = (lambda _msg: None) if output is OutputFormat.json else _err
        report = validate_artifact(artifact, model, target=target, weights=weights, pretrained=pretrained,
                                   num_classes=num_classes, img_size=img_size, data=data, golden_count=golden_count,
                                   seed=seed, eval_data=eval_data, eval_size=eval_size, max_drop=max_drop,
                                   quant_config=quant_config, out=out, log=log)
        if output is OutputFormat.json:
            print(json.dumps(report.to_dict(), indent=2, default=str))
        else:
            print(report.format_table())
        return report.exit_code
    _guarded(body)


@app.command("inspect")
def inspect_command(
    artifact: Annotated[Path, typer.Argument(help="an exported artifact")],
    target: Annotated[Optional[str], typer.Option("--target", help="target name [default: from the file name]")] = None,
) -> None:
    """Show what is inside an artifact: format, I/O, op histogram, metadata (JSON)."""
    def body() -> int:
        from .errors import UsageError
        from .registry import load_target, target_for_artifact

        if not artifact.exists():
            raise UsageError(f"{artifact}: no such artifact")
        conv = load_target(target) if target else target_for_artifact(artifact)
        conv.info.require_backends()
        describe = getattr(conv, "describe", None)
        if describe is None:
            raise UsageError(f"target {conv.info.name} cannot describe its artifacts")
        print(json.dumps({"target": conv.info.name, "precision": conv.info.precision, **describe(artifact)},
                         indent=2, default=str))
        return 0
    _guarded(body)


@app.command("models")
def models_command(output: Annotated[OutputFormat, typer.Option("--output")] = OutputFormat.table) -> None:
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


@app.command("targets")
def targets_command(output: Annotated[OutputFormat, typer.Option("--output")] = OutputFormat.table) -> None:
    """List every registered target and whether its backend is installed here."""
    def body() -> int:
        from .registry import target_rows

        rows = target_rows()
        if output is OutputFormat.json:
            print(json.dumps(rows, indent=2))
            return 0
        width = max((len(r["target"]) for r in rows), default=6)
        for r in rows:
            state = "installed" if r["installed"] else f"missing (pip install 'mnv4-deploy[{r['extra']}]')"
            print(f"{r['target'].ljust(width)}  {r['precision']:<5}  {state:<12}  {r['description']}")
        return 0
    _guarded(body)


def main() -> None:
    app()


def export_main() -> None:
    export_app()


if __name__ == "__main__":
    main()
