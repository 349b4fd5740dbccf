"""The model x target matrix as rows: flattened from per-model report.json dicts.

Works on plain dicts (the report.json form), so a local benchmark, a parallel build and a CI
merge of many runners' outputs all produce the same table, Markdown and HTML.
"""
from __future__ import annotations

from typing import Any, Sequence

from .errors import EXIT_OK
from .report import STATUS_TEXT, text_columns

HEADER = ["model", "target", "status", "size MB", "cosine", "max abs", "top-1", "top-5", "drop pt (95% CI)",
          "latency ms", "FPS", "note"]


def _note(result: dict[str, Any]) -> str:
    notes = list(result.get("failures") or [])
    if result.get("reason"):
        notes.append(result["reason"])
    latency = result.get("latency") or {}
    if latency.get("note") and result.get("status") not in ("exported_not_run_here",):
        notes.append(latency["note"])
    return "; ".join(notes)


def pair_rows(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per model x target, in report order. `dir` prefixes the artifact path."""
    rows = []
    for rep in reports:
        prefix = rep.get("dir", "")
        for r in rep.get("results", []):
            p, a, lat = r.get("parity") or {}, r.get("accuracy") or {}, r.get("latency") or {}
            artifact = r.get("artifact")
            rows.append({
                "model": rep["model"]["name"], "target": r["target"], "precision": r["precision"],
                "status": r["status"], "status_text": STATUS_TEXT.get(r["status"], r["status"]),
                "note": _note(r), "exit_code": r.get("exit_code", EXIT_OK),
                "size_mb": round(r["size_bytes"] / 1e6, 3) if r.get("size_bytes") is not None else None,
                "cosine": p.get("cosine"), "max_abs": p.get("max_abs"),
                "top1": a.get("top1"), "top5": a.get("top5"), "drop_top1": a.get("drop_top1"),
                "drop_top1_ci95": a.get("drop_top1_ci95"),
                "latency_ms": lat.get("median_ms"), "fps": lat.get("fps"),
                "runtime": lat.get("runtime") or r.get("runtime"),
                "artifact": f"{prefix}/{artifact}".lstrip("/") if artifact and prefix else artifact,
                "sha256": r.get("sha256"),
            })
    return rows


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_cells(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    cells = [list(HEADER)]
    for r in rows:
        ci = r.get("drop_top1_ci95")
        drop = "-" if r["drop_top1"] is None else (
            f"{r['drop_top1']:+.2f} ({ci[0]:+.2f}, {ci[1]:+.2f})" if ci else f"{r['drop_top1']:+.2f}")
        cells.append([r["model"], r["target"], r["status_text"], _num(r["size_mb"], ".2f"), _num(r["cosine"], ".6f"),
                      _num(r["max_abs"], ".2e"), _num(r["top1"], ".2f"), _num(r["top5"], ".2f"), drop,
                      _num(r["latency_ms"], ".2f"), _num(r["fps"], ".0f"), r["note"][:100]])
    return cells


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    return "\n".join(text_columns(table_cells(rows), rule=True))


def summary_lines(reports: Sequence[dict[str, Any]]) -> list[str]:
    """Per model: weights, input, reference accuracy: what every row is compared against."""
    lines = []
    for rep in reports:
        model, contract, ev = rep["model"], rep.get("contract") or {}, rep.get("evaluation")
        text = f"{model['name']}: weights {model.get('weights', '?')}"
        if contract.get("crop_size"):
            text += f", input {contract['crop_size'][0]}x{contract['crop_size'][1]}"
        if ev:
            text += (f", reference (PyTorch) top-1 {ev['reference_top1']:.2f} / top-5 {ev['reference_top5']:.2f} "
                     f"on {ev['count']} labeled images")
        cal = model.get("calibration")
        if cal:
            text += f", {cal['count']} calibration images"
        lines.append(text)
    return lines


def to_markdown(rows: Sequence[dict[str, Any]], reports: Sequence[dict[str, Any]], exit_code: int,
                notes: Sequence[str] = ()) -> str:
    cells = table_cells(rows)
    md = ["# mnv4-deploy benchmark", ""] + [f"- {line}" for line in [*summary_lines(reports), *notes]] + [""]
    md.append("| " + " | ".join(cells[0]) + " |")
    md.append("|" + "---|" * len(cells[0]))
    md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells[1:]]
    md += ["", f"Exit code: {exit_code}", ""]
    return "\n".join(md)
