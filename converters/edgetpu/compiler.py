"""The real `edgetpu_compiler`: run it when present (x86-64 Debian/Ubuntu only,
https://coral.ai/docs/edgetpu/compiler/), and parse what it prints into the same row form."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mnv4_deploy.report import text_columns

from .errors import INSTALL_HINT, EdgeTpuCheckError, EdgeTpuCompilerMissing
from .flatbuffer import read_flatbuffer_bytes

MAPPED_STATUS = "Mapped to Edge TPU"

# Summary lines of `edgetpu_compiler -s` (v2.1 .. v16 print the same labels).
_LOG_FIELDS: dict[str, str] = {
    "compiler_version": r"Edge TPU Compiler version (\S+)",
    "compile_time_ms": r"Model compiled successfully in (\d+) ms\.?",
    "input_model": r"Input(?: model)?: (.+)",
    "input_size": r"Input size: (.+)",
    "output_model": r"Output(?: model)?: (.+)",
    "output_size": r"Output size: (.+)",
    "on_chip_memory_used": r"On-chip memory used for caching model parameters: (.+)",
    "on_chip_memory_remaining": r"On-chip memory remaining for caching model parameters: (.+)",
    "off_chip_memory_used": r"Off-chip memory used for streaming uncached model parameters: (.+)",
    "edgetpu_subgraphs": r"Number of Edge TPU subgraphs: (\d+)",
    "total_operations": r"Total number of operations: (\d+)",
    "operation_log": r"Operation log: (.+)",
    "ops_on_edgetpu": r"Number of operations that will run on Edge TPU: (\d+)",
    "ops_on_cpu": r"Number of operations that will run on CPU: (\d+)",
}
_INT_FIELDS = {"compile_time_ms", "edgetpu_subgraphs", "total_operations", "ops_on_edgetpu", "ops_on_cpu"}
_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}
_TABLE_HEADER = re.compile(r"^Operator\s+Count\s+Status\s*$")
_TABLE_ROW = re.compile(r"^(?P<op>[A-Z][A-Z0-9_]*)\s+(?P<count>\d+)\s+(?P<status>\S.*?)\s*$")
_ERROR_LINE = re.compile(r"^(?:ERROR: .+|Compilation failed.*|Internal compiler error.*)$")


@dataclass
class CompilerLogRow:
    """One line of the compiler's op table: how many ops of a kind got a given status."""

    op: str
    count: int
    status: str

    @property
    def mapped(self) -> bool:
        return self.status == MAPPED_STATUS


@dataclass
class CompilerLog:
    """What `edgetpu_compiler -s` reported; counts are None where the log does not say."""

    rows: list[CompilerLogRow]
    compiler_version: str | None = None
    compile_time_ms: int | None = None
    input_model: str | None = None
    input_size: str | None = None
    output_model: str | None = None
    output_size: str | None = None
    on_chip_memory_used: str | None = None
    on_chip_memory_remaining: str | None = None
    off_chip_memory_used: str | None = None
    edgetpu_subgraphs: int | None = None
    total_operations: int | None = None
    operation_log: str | None = None
    ops_on_edgetpu: int | None = None
    ops_on_cpu: int | None = None
    succeeded: bool = False
    errors: list[str] = field(default_factory=list)
    edgetpu_model: str | None = None  # the kept `_edgetpu.tflite`, set by run_edgetpu_compiler

    @property
    def fully_mapped(self) -> bool:
        return self.succeeded and self.ops_on_cpu == 0

    def memory_bytes(self, which: str = "on_chip_memory_used") -> int | None:
        """A memory line ('1.92MiB') in bytes."""
        return parse_size(getattr(self, which))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [{**asdict(r), "mapped": r.mapped} for r in self.rows]
        out["fully_mapped"] = self.fully_mapped
        return out

    def format_table(self) -> str:
        body = [(r.op, str(r.count), r.status) for r in self.rows]
        lines = [f"edgetpu_compiler {self.compiler_version or '?'}: {self.input_model or '?'}",
                 *text_columns([("Operator", "Count", "Status"), *body]),
                 f"{self.ops_on_edgetpu} ops on the EdgeTPU, {self.ops_on_cpu} on CPU; "
                 f"on-chip memory used {self.on_chip_memory_used}, compile time {self.compile_time_ms} ms"]
        return "\n".join(lines + [f"error: {e}" for e in self.errors])


class EdgeTpuCompilerFailed(EdgeTpuCheckError):
    """The compiler ran but produced no `_edgetpu.tflite`; `.log` holds what it printed."""

    def __init__(self, message: str, hint: str | None = None, log: CompilerLog | None = None):
        super().__init__(message, hint)
        self.log = log


def parse_size(text: str | None) -> int | None:
    """'7.67MiB' -> bytes; None when absent or unreadable."""
    match = re.fullmatch(r"\s*([\d.]+)\s*(B|KiB|MiB|GiB)\s*", text or "")
    return round(float(match[1]) * _SIZE_UNITS[match[2]]) if match else None


def parse_compiler_log(text: str) -> CompilerLog:
    """Parse `edgetpu_compiler -s` output (or its .log file) into rows and summary numbers."""
    fields: dict[str, Any] = {}
    for key, pattern in _LOG_FIELDS.items():
        match = re.search(rf"^\s*{pattern}\s*$", text, flags=re.MULTILINE)
        if match:
            value = match[1].strip()
            fields[key] = int(value) if key in _INT_FIELDS else value
    rows = _parse_op_table(text.splitlines())
    if rows and "ops_on_edgetpu" not in fields:  # the .log file has the table but no totals
        fields["ops_on_edgetpu"] = sum(r.count for r in rows if r.mapped)
        fields["ops_on_cpu"] = sum(r.count for r in rows if not r.mapped)
    errors = [line.strip() for line in text.splitlines() if _ERROR_LINE.match(line.strip())]
    succeeded = bool(re.search(r"Model compiled successfully|Compilation succeeded", text)) and not any(
        e.startswith("Compilation failed") for e in errors)
    return CompilerLog(rows=rows, succeeded=succeeded, errors=errors, **fields)


def _parse_op_table(lines: Sequence[str]) -> list[CompilerLogRow]:
    rows: list[CompilerLogRow] = []
    in_table = False
    for line in lines:
        if _TABLE_HEADER.match(line.strip()):
            in_table = True
            continue
        match = _TABLE_ROW.match(line.strip()) if in_table else None
        if match:
            rows.append(CompilerLogRow(match["op"], int(match["count"]), match["status"]))
    return rows


def find_edgetpu_compiler() -> str | None:
    """Path of `edgetpu_compiler` on PATH, or None (then only the static check can run here)."""
    return shutil.which("edgetpu_compiler")


def run_edgetpu_compiler(tflite_path: str | Path, out_dir: str | Path, timeout_s: float = 600) -> CompilerLog:
    """Compile with `edgetpu_compiler -s -o OUT_DIR model.tflite`; keep the `_edgetpu.tflite`.

    Raises EdgeTpuCompilerMissing when the compiler is not installed here, and
    EdgeTpuCompilerFailed (with the parsed log) when it runs but writes no compiled model.
    """
    exe = find_edgetpu_compiler()
    if exe is None:
        raise EdgeTpuCompilerMissing("edgetpu_compiler is not installed here", hint=INSTALL_HINT)
    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    read_flatbuffer_bytes(tflite_path)  # refuse a bad file before spending a compiler run
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([exe, "-s", "-o", str(out_dir), str(tflite_path)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EdgeTpuCompilerFailed(f"edgetpu_compiler timed out after {timeout_s:.0f} s on {tflite_path}") from exc
    log = parse_compiler_log(proc.stdout + "\n" + proc.stderr)
    compiled = out_dir / f"{tflite_path.stem}_edgetpu.tflite"
    if proc.returncode != 0 or not compiled.is_file():
        why = log.errors[0] if log.errors else f"exit code {proc.returncode}"
        raise EdgeTpuCompilerFailed(f"edgetpu_compiler failed on {tflite_path}: {why}",
                                    hint="run the static check (check_tflite) to see which ops block it",
                                    log=log)
    log.edgetpu_model = str(compiled)
    return log
