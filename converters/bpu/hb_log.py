"""Parse `hb_mapper checker` / `makertbin` logs: where each node runs, and the cosine tables.

Both commands end with a node table (the last one in a log is the final placement):

    Node         ON   Subgraph  Type                Cosine Similarity  Threshold  In/Out DataType
    conv1        BPU  id(0)     HzSQuantizedConv    0.999562           1.013355   int8/int8
    ip2_reshape  CPU  --        Reshape

`checker` prints only Node/ON/Subgraph/Type (newer versions add In/Out DataType); `makertbin`
adds the per-node cosine similarity of the quantized against the float model and the
calibration threshold, and then a "The quantify model output:" table with the cosine of each
model output. Cells may be empty or `--`. The format is read from D-Robotics' own docs ("PTQ
principles and steps", "Interpretation of the check results") and published conversion logs;
tests/fixtures/hb_mapper/ holds recorded-style examples.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HEADER = re.compile(r"^\s*Node\s+ON\s+Subgraph\s+Type\b")
_ROW = re.compile(r"^\s*(?P<node>\S+)\s+(?P<on>BPU|CPU)\s+(?P<sub>id\((?P<id>\d+)\)|--)\s+(?P<type>\S+)(?P<rest>.*)$")
_OUTPUT_MARK = "The quantify model output:"
_OUTPUT_HEADER = re.compile(r"^\s*Node\s+Cosine Similarity\b")
_COLUMNS = ("Cosine Similarity", "Threshold", "In/Out DataType", "DataType")
_RULE = re.compile(r"^\s*[=-]{3,}\s*$")


@dataclass(frozen=True)
class NodePlacement:
    """One row of the node table."""

    node: str
    on: str  # "BPU" | "CPU"
    subgraph: int | None
    op_type: str  # the Horizon operator the node maps to (HzSQuantizedConv, ...)
    cosine: float | None = None
    threshold: float | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class HbMapperLog:
    """What a log says: per-node placement and, after makertbin, cosines."""

    nodes: tuple[NodePlacement, ...]
    output_cosine: dict[str, float]

    @property
    def cpu_nodes(self) -> list[NodePlacement]:
        return [n for n in self.nodes if n.on == "CPU"]

    @property
    def subgraphs(self) -> int:
        return len({n.subgraph for n in self.nodes if n.subgraph is not None})

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": len(self.nodes), "bpu_nodes": len(self.nodes) - len(self.cpu_nodes),
                "cpu_nodes": [asdict(n) for n in self.cpu_nodes], "bpu_subgraphs": self.subgraphs,
                "min_node_cosine": min((n.cosine for n in self.nodes if n.cosine is not None), default=None),
                "output_cosine": self.output_cosine}


def _number(text: str | None) -> float | None:
    if text is None or text.strip() in ("", "--"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _column_starts(header: str) -> list[tuple[str, int]]:
    starts, taken = [], set()
    for name in _COLUMNS:
        index = header.find(name)
        if index >= 0 and not any(index in range(s, s + len(n)) for n, s in starts) and index not in taken:
            starts.append((name, index))
            taken.add(index)
    return sorted(starts, key=lambda item: item[1])


def _cells(line: str, rest_at: int, columns: list[tuple[str, int]]) -> dict[str, str]:
    """Assign the cells after Type to columns: by order when all are present, else by position."""
    tokens = [(m.group(), rest_at + m.start()) for m in re.finditer(r"\S+", line[rest_at:])]
    if len(tokens) == len(columns):
        return {name: tok for (name, _), (tok, _) in zip(columns, tokens)}
    cells: dict[str, str] = {}
    for token, at in tokens:  # a blank cell shifts the rest: use the header's column starts
        name = min(columns, key=lambda c: abs(c[1] - at))[0] if columns else None
        if name is not None and name not in cells:
            cells[name] = token
    return cells


def _node_table(lines: list[str], start: int) -> list[NodePlacement]:
    header = lines[start]
    columns = _column_starts(header)
    rows = []
    for line in lines[start + 1:]:
        if _RULE.match(line) or not line.strip() or line.strip() == "...":
            if rows and not line.strip():
                break
            continue
        match = _ROW.match(line)
        if match is None:
            break
        cells = _cells(line, match.start("rest"), columns)
        rows.append(NodePlacement(
            node=match["node"], on=match["on"], subgraph=int(match["id"]) if match["id"] else None,
            op_type=match["type"], cosine=_number(cells.get("Cosine Similarity")),
            threshold=_number(cells.get("Threshold")),
            dtype=cells.get("In/Out DataType") or cells.get("DataType")))
    return rows


def _output_cosines(lines: list[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for i, line in enumerate(lines):
        if _OUTPUT_MARK not in line:
            continue
        for row in lines[i + 1:]:
            if _OUTPUT_HEADER.match(row) or _RULE.match(row):
                continue
            parts = row.split()
            value = _number(parts[1]) if len(parts) >= 2 else None
            if value is None:
                break
            found[parts[0]] = value
    return found


def parse_hb_mapper_log(text: str) -> HbMapperLog:
    """Read the last node table and the output cosine table of a checker or makertbin log."""
    lines = _ANSI.sub("", text).splitlines()
    headers = [i for i, line in enumerate(lines) if _HEADER.match(line)]
    nodes = _node_table(lines, headers[-1]) if headers else []
    return HbMapperLog(tuple(nodes), _output_cosines(lines))
