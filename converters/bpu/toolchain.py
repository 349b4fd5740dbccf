"""Run the vendor toolchain on a bundle when `hb_mapper` is on PATH (inside the OpenExplorer docker).

It is never installable here, so this is optional: without it the bundle is still complete and
the report says the BPU build was not run. With it, `checker` and `makertbin` run inside the
bundle directory (their logs and the compiled `.bin` stay there) and their node tables are
parsed into the report: per-node BPU/CPU placement and cosine.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

from mnv4_deploy.errors import DeployError

from .hb_log import parse_hb_mapper_log

EXECUTABLE = "hb_mapper"
TIMEOUT_S = 3 * 3600  # makertbin of a large model with 300 calibration images takes a while


def _run(args: Sequence[str], cwd: Path, log_name: str) -> str:
    try:
        done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DeployError(f"{' '.join(args[:2])} ran longer than {TIMEOUT_S} s",
                          "run it by hand as the bundle README says") from None
    text = done.stdout + done.stderr
    log_file = cwd / log_name  # hb_mapper writes its own log there too; prefer it when present
    if log_file.exists():
        text = log_file.read_text(errors="replace") + "\n" + text
    if done.returncode != 0:
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        raise DeployError(f"{' '.join(args[:2])} failed (exit {done.returncode}): {last[:200]}",
                          f"see {log_name} in the bundle")
    return text


def run_hb_mapper(bundle: Path, onnx_file: str, config_file: str, march: str, input_name: str,
                  input_shape: Sequence[int], log: Callable[[str], None]) -> dict[str, Any] | None:
    """`checker` then `makertbin` in `bundle`; None when hb_mapper is not installed here."""
    exe = shutil.which(EXECUTABLE)
    if exe is None:
        return None
    shape = "x".join(str(int(d)) for d in input_shape)
    checker = _run([exe, "checker", "--model-type", "onnx", "--march", march, "--model", onnx_file,
                    "--input-shape", input_name, shape], bundle, "hb_mapper_checker.log")
    checked = parse_hb_mapper_log(checker)
    log(f"hb_mapper checker: {len(checked.nodes)} nodes, {len(checked.cpu_nodes)} on the CPU")
    built = parse_hb_mapper_log(_run([exe, "makertbin", "--config", config_file, "--model-type", "onnx"], bundle,
                                     "hb_mapper_makertbin.log"))
    log(f"hb_mapper makertbin: output cosine {built.output_cosine or 'not reported'}")
    return {"executable": exe, "checker": checked.to_dict(), "makertbin": built.to_dict()}
