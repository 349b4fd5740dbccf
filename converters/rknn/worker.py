"""Rockchip's rknn-toolkit2, driven inside the toolchain venv (the handler of worker_main.py).

Standalone: the standard library, numpy and `rknn.api` only (the venv has none of
mnv4-deploy's dependencies). One RKNN object lives per worker: `build` makes it from an ONNX
(and writes the .rknn atomically), `open_runtime` starts Rockchip's simulator on it (or, with a
board target, loads the .rknn over adb), `infer` runs batches, `accuracy_analysis` writes the
toolkit's per-layer report. Inputs are NCHW float32 in 0-255 pixel units: mean and std are
folded into the model by `config`, as on the board.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

STATE: dict = {}
_TABLE_TITLE = "Network Layer Information Table"


class UsageProblem(Exception):
    kind = "usage"


def _vendor_line(text: str) -> str:
    """The line of a toolkit message that says what went wrong (its exceptions carry whole tracebacks)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(text).splitlines()]
    lines = [line for line in lines if line]
    said = [line for line in lines if re.match(r"^(E |[A-Za-z]*Error: )", line) and "Traceback" not in line]
    return (said or lines or ["no message"])[-1][:400]


def _log_text(since: int) -> str:
    """What the toolkit wrote to the worker log (its stdout and stderr) after byte `since`."""
    path = os.environ.get("MNV4_WORKER_LOG")
    if not path or not os.path.exists(path):
        return ""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "rb") as fh:
        fh.seek(since)
        return fh.read().decode(errors="replace")


def _log_errors(since: int) -> str:
    """The last toolkit error line ("E ...") written to the worker log after byte `since`."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in _log_text(since).splitlines()]
    errors = [line for line in lines if line.startswith("E ")]
    return errors[-1][:400] if errors else ""


def _log_size() -> int:
    path = os.environ.get("MNV4_WORKER_LOG")
    return os.path.getsize(path) if path and os.path.exists(path) else 0


def _call(what: str, function, *args, **kwargs):
    """A toolkit call that must return 0; its own error line when it does not."""
    since = _log_size()
    try:
        ret = function(*args, **kwargs)
    except Exception as exc:  # the toolkit raises ValueError with a traceback as its message
        raise RuntimeError(f"{what}: {_vendor_line(str(exc))}") from None
    if isinstance(ret, int) and ret != 0:
        raise RuntimeError(f"{what} returned {ret}: {_log_errors(since) or 'see the toolchain log'}")
    return ret


def hello() -> dict:
    from rknn.api import RKNN  # noqa: F401  (fails here, not later, when the venv lacks it)

    return {"rknn_toolkit2": version("rknn-toolkit2"), "numpy": np.__version__}


def _layer_table(log_text: str) -> list[str]:
    """The build log's "Network Layer Information Table" rows, as the toolkit printed them."""
    lines = log_text.splitlines()
    starts = [i for i, line in enumerate(lines) if _TABLE_TITLE in line]
    if not starts:
        return []
    rows, seen_header = [], False
    for line in lines[starts[-1] + 1:]:
        body = re.sub(r"^[A-Z] RKNN: \[[0-9:.]+\] ?", "", line)
        if body.startswith("---"):
            if seen_header and len(rows) > 1:  # the rule under the last row
                break
            continue
        if body.startswith("ID "):
            seen_header = True
        rows.append(body.rstrip())
    return rows


def build(args: dict, arrays: dict, workdir: Path) -> dict:
    """config + load_onnx + build (+ export_rknn): the model the later commands run."""
    from rknn.api import RKNN

    if STATE.get("rknn") is not None:
        STATE.pop("rknn").release()
    since = _log_size()  # the verbose build log (with the layer table) goes to the worker log
    rknn = RKNN(verbose=True)
    STATE["rknn"] = rknn
    quantize = args.get("quantize")  # None: keep the ONNX's numerics (float -> fp16, QDQ -> its int8)
    config = dict(mean_values=[args["mean"]], std_values=[args["std"]], target_platform=args["platform"],
                  optimization_level=int(args.get("optimization_level", 3)))
    if quantize:
        config.update(quantized_algorithm=quantize["algorithm"], quantized_method=quantize.get("method", "channel"))
    _call("rknn.config", rknn.config, **config)
    _call("rknn.load_onnx", rknn.load_onnx, args["onnx"], inputs=[args["input_name"]],
          input_size_list=[list(args["input_shape"])], outputs=args.get("outputs"))
    dataset = None
    if quantize:
        images = arrays["calibration"]
        folder = workdir / "calibration"
        folder.mkdir(exist_ok=True)
        names = []
        for i, image in enumerate(images):
            names.append(str(folder / f"{i:05d}.npy"))
            np.save(names[-1], image[None].astype(np.float32))
        dataset = str(workdir / "dataset.txt")
        Path(dataset).write_text("\n".join(names) + "\n")
    _call("rknn.build", rknn.build, do_quantization=bool(quantize), dataset=dataset)
    facts = {"toolkit": version("rknn-toolkit2")}
    if args.get("rknn_out"):
        final = Path(args["rknn_out"])
        tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
        try:
            _call("rknn.export_rknn", rknn.export_rknn, str(tmp))
            os.replace(tmp, final)  # never a half-written .rknn under its final name
        finally:
            if tmp.exists():
                tmp.unlink()
        facts["rknn_bytes"] = final.stat().st_size
    log_text = _log_text(since)
    facts["layer_table"] = _layer_table(log_text)
    facts["warnings"] = sorted({_vendor_line(line) for line in log_text.splitlines()
                                if re.sub(r"\x1b\[[0-9;]*m", "", line).startswith("W ")})[:40]
    STATE["platform"] = args["platform"]
    return facts


def open_runtime(args: dict, arrays: dict, workdir: Path) -> dict:
    """Rockchip's simulator on the built model (target None), or a board over adb (target + device_id)."""
    from rknn.api import RKNN

    target = args.get("target")
    if target:  # a board runs the .rknn file itself
        if STATE.get("rknn") is not None:
            STATE.pop("rknn").release()
        STATE["rknn"] = RKNN(verbose=False)
        _call("rknn.load_rknn", STATE["rknn"].load_rknn, args["rknn_file"])
    elif STATE.get("rknn") is None:
        raise UsageProblem("open_runtime: nothing built in this worker (call build first)")
    _call(f"rknn.init_runtime(target={target!r}, device_id={args.get('device_id')!r})", STATE["rknn"].init_runtime,
          target=target, device_id=args.get("device_id"))
    STATE["runtime"] = target or "simulator"
    return {"runtime": STATE["runtime"]}


def infer(args: dict, arrays: dict, workdir: Path):
    """Logits of an NCHW pixel batch, one image at a time (the model has batch 1)."""
    if "runtime" not in STATE:
        raise UsageProblem("infer: no runtime (call open_runtime first)")
    rknn, batch = STATE["rknn"], arrays["x"].astype(np.float32)
    outputs = []
    for i in range(len(batch)):
        out = _call("rknn.inference", rknn.inference, inputs=[batch[i:i + 1]], data_format=["nchw"])
        if out is None:
            raise RuntimeError(f"rknn.inference returned no output: {_log_errors(0) or 'see the toolchain log'}")
        outputs.append(np.asarray(out[0], dtype=np.float32).reshape(1, -1))
    return {"images": len(batch)}, {"logits": np.concatenate(outputs)}


def accuracy_analysis(args: dict, arrays: dict, workdir: Path) -> dict:
    """The toolkit's per-layer error report on a few images (its text), or why the toolkit refused it."""
    if STATE.get("rknn") is None:
        raise UsageProblem("accuracy_analysis: nothing built in this worker (call build first)")
    folder, out_dir = workdir / "inputs", workdir / "snapshot"
    folder.mkdir(exist_ok=True)
    inputs = []
    for i, image in enumerate(arrays["x"]):
        inputs.append(str(folder / f"{i:03d}.npy"))
        np.save(inputs[-1], image[None].astype(np.float32))
    try:
        _call("rknn.accuracy_analysis", STATE["rknn"].accuracy_analysis, inputs=inputs, output_dir=str(out_dir),
              target=args.get("target"), device_id=args.get("device_id"))
        report = out_dir / "error_analysis.txt"
        return {"ran": True, "text": report.read_text(errors="replace") if report.exists() else ""}
    except RuntimeError as exc:
        return {"ran": False, "reason": str(exc)}
    finally:  # the per-layer tensor dumps are ~100 MB of text; the report is what is kept
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


COMMANDS = {"build": build, "open_runtime": open_runtime, "infer": infer, "accuracy_analysis": accuracy_analysis}
