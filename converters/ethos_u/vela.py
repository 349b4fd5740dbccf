"""Running Arm's Vela compiler and reading back what it wrote.

Vela runs as `python -m ethosu.vela` in a subprocess of this interpreter (the same venv): its
C++ core (regor) prints its operator warnings straight to file descriptor 1, which only a
subprocess captures, and a crash in it cannot take the export down. One compilation takes
about a second for a MobileNet.

What comes back, per `NAME.tflite` in the output directory:
- `NAME_vela.tflite`: the compiled model, one `ethos-u` custom op per NPU part, CPU ops as they were;
- `NAME_summary_<system config>.csv`: one row of totals (memory used, cycles, inferences/s);
- `NAME_per-layer.csv` (with `--verbose-performance`): one row per operator after Vela's own
  lowering (a fused ReLU becomes its own row), with cycles, MACs and where it runs;
- on stdout, for every operator placed on the CPU, `Warning (supported operators) operator: OP,
  ofm: 'TENSOR'` followed by `Reason: ...` lines (with `--show-cpu-operations`).
"""
from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnv4_deploy.errors import BackendMissing, DeployError

from .configs import VelaSettings

VELA_PACKAGE = "ethos-u-vela"
INSTALL_HINT = "pip install 'mnv4-deploy[ethos]' (ethos-u-vela from PyPI)"
_WARNING = re.compile(r"^Warning \(supported operators\) operator: (?P<op>[^,]+), ofm: '(?P<ofm>.*)'\s*$")
_COUNT = re.compile(r"^(?P<where>CPU|NPU) operators = (?P<n>\d+)")


class VelaFailed(DeployError):
    """Vela ran but wrote no compiled model (exit 1); carries the tail of what it printed."""


@dataclass
class CpuFallback:
    """An operator Vela left on the CPU, as it said so: its type, output tensor and reasons."""

    op: str
    ofm: str
    reasons: list[str] = field(default_factory=list)


@dataclass
class VelaOutput:
    """The files of one Vela run and what its stdout said."""

    compiled: Path
    summary_csv: Path
    per_layer_csv: Path | None
    stdout: str
    cpu_fallbacks: list[CpuFallback]
    vela_op_counts: dict[str, int]  # Vela's own CPU/NPU counts, after its lowering

    def summary(self) -> dict[str, Any]:
        """The summary CSV's one row, numbers as floats."""
        with open(self.summary_csv, newline="") as fh:
            row = next(csv.DictReader(fh))
        return {k: _number(v) for k, v in row.items()}

    def per_layer(self) -> list[dict[str, Any]]:
        """The per-layer CSV's rows; the Name column is last and may itself hold commas."""
        if self.per_layer_csv is None:
            return []
        lines = self.per_layer_csv.read_text().splitlines()
        header = lines[0].split(",")
        rows = []
        for line in lines[1:]:
            cells = line.split(",", len(header) - 1)
            rows.append({k: _number(v) for k, v in zip(header, cells)})
        return rows


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def vela_version() -> str | None:
    from mnv4_deploy.provenance import package_version

    return package_version(VELA_PACKAGE)


def require_vela(target: str) -> None:
    if importlib.util.find_spec("ethosu") is None:
        raise BackendMissing(f"target {target} needs Arm's Vela compiler, which is not installed", INSTALL_HINT)


def parse_cpu_fallbacks(stdout: str) -> list[CpuFallback]:
    """Vela's 'Warning (supported operators)' blocks: the op, its output tensor and the reason lines."""
    found: list[CpuFallback] = []
    current: CpuFallback | None = None
    for line in stdout.splitlines():
        match = _WARNING.match(line.strip())
        if match:
            current = CpuFallback(match["op"].strip(), match["ofm"])
            found.append(current)
        elif current is not None and line.strip():
            text = line.strip()
            current.reasons.append(text[len("Reason:"):].strip() if text.startswith("Reason:") else text)
        else:
            current = None
    return found


def parse_op_counts(stdout: str) -> dict[str, int]:
    counts = {}
    for line in stdout.splitlines():
        match = _COUNT.match(line.strip())
        if match:
            counts[match["where"].lower()] = int(match["n"])
    return counts


def run_vela(model: Path, out_dir: Path, settings: VelaSettings, target: str, timeout_s: float = 600) -> VelaOutput:
    """Compile `model` into `out_dir`; VelaFailed (naming the target) when no compiled model appears."""
    require_vela(target)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ethosu.vela", *settings.vela_args(), "--output-dir", str(out_dir),
           "--verbose-performance", "--show-cpu-operations", str(model)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VelaFailed(f"target {target}: Vela did not finish within {timeout_s:.0f} s on {model.name}") from exc
    stem = model.stem
    compiled = out_dir / f"{stem}_vela.tflite"
    summary = out_dir / f"{stem}_summary_{settings.system_config}.csv"
    if proc.returncode != 0 or not compiled.is_file() or not summary.is_file():
        said = [line.strip() for line in (proc.stderr + "\n" + proc.stdout).splitlines() if line.strip()]
        errors = [line for line in said if "rror" in line] or said[-1:] or [f"exit code {proc.returncode}"]
        raise VelaFailed(f"target {target}: Vela {vela_version()} failed on {model.name}: {errors[-1][:300]}",
                         "run `mnv4-deploy check MODEL --target " + target + "` to see Vela's op table")
    per_layer = out_dir / f"{stem}_per-layer.csv"
    return VelaOutput(compiled, summary, per_layer if per_layer.is_file() else None, proc.stdout,
                      parse_cpu_fallbacks(proc.stdout), parse_op_counts(proc.stdout))
