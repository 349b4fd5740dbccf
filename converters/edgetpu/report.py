"""The per-op static check report: each op's verdict, where the EdgeTPU partition ends, and the
table that goes into an artifact's metadata."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mnv4_deploy.report import text_columns

from .flatbuffer import OpInfo, TfliteGraph, read_tflite
from .rules import OP_TABLE, op_reasons

FALLS_BACK = "falls back: after first unsupported op"
BOUNDARY = ("float model I/O conversion at the graph boundary: runs on CPU without ending the "
            "EdgeTPU partition (convert with int8/uint8 I/O to avoid it)")


@dataclass
class OpRow:
    """One operator's verdict. `status`: edgetpu, unsupported, falls_back, or cpu_boundary."""

    index: int
    op: str
    maps_to_edgetpu: bool
    reasons: list[str]
    status: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class EdgeTpuReport:
    """Per-op verdicts for subgraph 0 and where the EdgeTPU partition ends."""

    model: str
    rows: list[OpRow]
    first_unmapped_index: int | None
    n_subgraphs: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        by_status = {s: sum(r.status == s for r in self.rows)
                     for s in ("edgetpu", "unsupported", "falls_back", "cpu_boundary")}
        return {"ops": len(self.rows), "on_edgetpu": by_status["edgetpu"],
                "on_cpu": len(self.rows) - by_status["edgetpu"], **by_status}

    @property
    def fully_mapped(self) -> bool:
        return bool(self.rows) and all(r.maps_to_edgetpu for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "n_subgraphs": self.n_subgraphs,
                "first_unmapped_index": self.first_unmapped_index,
                "fully_mapped": self.fully_mapped, "counts": self.counts, "notes": list(self.notes),
                "ops": [asdict(r) for r in self.rows]}

    def format_table(self) -> str:
        header = ("#", "op", "tpu", "tensors (first input -> output)", "options", "reasons / notes")
        body = [(str(r.index), r.op, "yes" if r.maps_to_edgetpu else "no",
                 f"{(r.inputs or ['-'])[0]} -> {(r.outputs or ['-'])[0]}",
                 _format_options(r.options), _shorten(r.reasons + r.notes)) for r in self.rows]
        c = self.counts
        verdict = "fully mapped" if self.fully_mapped else (
            f"first unsupported op: #{self.first_unmapped_index}" if self.first_unmapped_index is not None
            else "only float I/O conversions at the graph boundary stay on CPU")
        lines = [f"EdgeTPU static check: {self.model} (subgraph 0 of {self.n_subgraphs}, {c['ops']} ops)",
                 *text_columns([header, *body]),
                 f"{c['on_edgetpu']}/{c['ops']} ops on the EdgeTPU, {c['on_cpu']} on CPU; {verdict}"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _format_options(options: dict[str, Any]) -> str:
    parts = []
    for key, value in options.items():
        if key in ("stride", "dilation", "filter"):
            if key != "filter" and tuple(value) == (1, 1):
                continue
            value = f"{value[0]}x{value[1]}"
        elif key == "fused_activation":
            if value == "NONE":
                continue
            key = "act"
        elif key == "groups" and value == 1:
            continue
        elif key not in ("depth_multiplier", "groups", "axis", "keep_dims", "weights_format"):
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)


def _shorten(reasons: Sequence[str], keep: int = 2) -> str:
    """The first reasons for the table; to_dict() keeps them all."""
    more = len(reasons) - keep
    return "; ".join(reasons[:keep]) + (f" (+{more} more)" if more > 0 else "")


def _is_float_boundary(op: OpInfo, graph: TfliteGraph) -> bool:
    """A float->int QUANTIZE fed by a graph input, or an int->float DEQUANTIZE feeding a graph
    output: the compiler leaves these on CPU without ending the EdgeTPU partition (float I/O)."""
    if op.op == "QUANTIZE":
        return op.inputs[0].index in graph.input_indices and op.inputs[0].dtype == "FLOAT32"
    if op.op == "DEQUANTIZE":
        return all(t.index in graph.output_indices for t in op.outputs)
    return False


def check_tflite(path: str | Path) -> EdgeTpuReport:
    """Judge every op of subgraph 0 against the EdgeTPU table (sources: rules.py)."""
    graph = read_tflite(path)
    rows: list[OpRow] = []
    first_unmapped: int | None = None
    for op in graph.ops:
        reasons = op_reasons(op)
        if first_unmapped is not None:
            status, reasons = "falls_back", [*reasons, FALLS_BACK]
        elif reasons and _is_float_boundary(op, graph):
            status, reasons = "cpu_boundary", [BOUNDARY]
        elif reasons:
            status, first_unmapped = "unsupported", op.index
        else:
            status = "edgetpu"
        rule = OP_TABLE.get(op.op)
        rows.append(OpRow(op.index, op.op, status == "edgetpu", reasons, status,
                          [t.describe() for t in op.inputs if not t.is_constant] or
                          [t.describe() for t in op.inputs],
                          [t.describe() for t in op.outputs], dict(op.options),
                          list(rule.notes) if rule else []))
    notes = []
    if graph.n_subgraphs > 1:
        notes.append(f"model has {graph.n_subgraphs} subgraphs; only subgraph 0 was checked")
    if not graph.ops:
        notes.append("subgraph 0 has no operators")
    return EdgeTpuReport(graph.path, rows, first_unmapped, graph.n_subgraphs, notes)
