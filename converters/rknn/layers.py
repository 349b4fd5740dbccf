"""Where each layer of a built RKNN model runs: the toolkit's "Network Layer Information Table".

rknn-toolkit2 prints the table in its verbose build log (the worker returns its rows): one row
per compiled layer with its op type, data type and target (NPU or CPU). The input and output
operators are always listed on the CPU (they hand tensors to and from the runtime) and are not
counted as fallbacks.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

HANDOFF_OPS = ("InputOperator", "OutputOperator")


def parse_layer_rows(rows: Sequence[str]) -> list[dict[str, str]]:
    """Table rows -> [{id, op, dtype, target, name}] (the header and rows that are not layers skipped)."""
    layers = []
    for row in rows:
        parts = row.split()
        if len(parts) < 5 or not parts[0].isdigit() or parts[3] not in ("NPU", "CPU", "GPU"):
            continue
        layers.append({"id": parts[0], "op": parts[1], "dtype": parts[2], "target": parts[3], "name": parts[-1]})
    return layers


def placement(rows: Sequence[str]) -> dict[str, Any]:
    """Counts per target and data type, and every layer off the NPU (the CPU fallbacks)."""
    layers = parse_layer_rows(rows)
    compute = [layer for layer in layers if layer["op"] not in HANDOFF_OPS]
    off = [layer for layer in compute if layer["target"] != "NPU"]
    by_op: dict[str, Counter] = {}
    for layer in compute:
        by_op.setdefault(layer["op"], Counter())[layer["target"]] += 1
    return {"layers": len(compute), "on_npu": len(compute) - len(off),
            "dtypes": dict(sorted(Counter(layer["dtype"] for layer in compute).items())),
            "by_op": {op: dict(sorted(counts.items())) for op, counts in sorted(by_op.items())},
            "off_npu": [{k: layer[k] for k in ("id", "op", "dtype", "target", "name")} for layer in off],
            "fully_on_npu": not off and bool(compute)}


def placement_table(facts: dict[str, Any], head: str) -> str:
    """Printable summary: the head line, then one line per layer off the NPU."""
    lines = [f"{head}: {facts['on_npu']}/{facts['layers']} layers on the NPU"
             + ("" if facts["off_npu"] else " (none on the CPU)") + f"; data types {facts['dtypes']}"]
    lines += [f"  {layer['target']}: {layer['op']} ({layer['dtype']}) {layer['name']}" for layer in facts["off_npu"]]
    return "\n".join(lines)
