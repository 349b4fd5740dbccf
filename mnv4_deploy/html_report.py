"""A self-contained report.html: the matrix table and hand-written SVG plots.

No network, no JavaScript, no plotting library: a release engineer can attach the file to a
ticket and open it anywhere. Plots: accuracy (or parity cosine) vs host latency per target,
and per-layer int8 sensitivity per model. Tooltips are SVG <title> elements.
"""
from __future__ import annotations

import math
from html import escape
from typing import Any, Sequence

from .matrix import summary_lines, table_cells

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
STATUS_CLASS = {"passed": "ok", "validation_failed": "bad", "accuracy_failed": "bad", "export_failed": "bad",
                "exported_not_run_here": "warn", "skipped": "warn", "backend_missing": "warn"}
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 380, 70, 200, 30, 50

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+3){text-align:left}td:last-child{text-align:left;max-width:420px}
tr.ok td:nth-child(3){color:#176117}tr.bad td:nth-child(3){color:#a40000;font-weight:600}
tr.warn td:nth-child(3){color:#8a5a00}svg{font-size:11px;margin:8px 0}.muted{color:#666}
"""


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _linear_ticks(lo: float, hi: float) -> list[float]:
    step = _nice_step(hi - lo)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10 ** e for m in (1, 2, 5) if lo <= m * 10 ** e <= hi]
    return ticks or [lo, hi]


class _Axis:
    """Maps data to pixels; log scale when the values span more than a factor of 8."""

    def __init__(self, values: Sequence[float], pixels: tuple[float, float], allow_log: bool):
        lo, hi = min(values), max(values)
        self.log = allow_log and lo > 0 and hi / lo > 8
        if self.log:
            lo, hi = lo / 1.25, hi * 1.25
        else:
            pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
            lo, hi = lo - pad, hi + pad
        self.lo, self.hi, self.pixels = lo, hi, pixels

    def __call__(self, v: float) -> float:
        f = ((math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo)) if self.log
             else (v - self.lo) / (self.hi - self.lo))
        return self.pixels[0] + f * (self.pixels[1] - self.pixels[0])

    def ticks(self) -> list[float]:
        return _log_ticks(self.lo, self.hi) if self.log else _linear_ticks(self.lo, self.hi)


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _marker(shape: int, x: float, y: float, color: str, title: str) -> str:
    t, shape = f"<title>{escape(title)}</title>", shape % 4
    if shape == 0:
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}">{t}</circle>'
    if shape == 1:
        return f'<rect x="{x - 5.5:.1f}" y="{y - 5.5:.1f}" width="11" height="11" fill="{color}">{t}</rect>'
    points = {2: [(0, -7), (6.5, 5), (-6.5, 5)], 3: [(0, -7), (7, 0), (0, 7), (-7, 0)]}[shape]
    pts = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in points)
    return f'<polygon points="{pts}" fill="{color}">{t}</polygon>'


def scatter_svg(rows: Sequence[dict[str, Any]]) -> str:
    """Accuracy (top-1, else parity cosine) against median host latency, one marker per pair."""
    timed = [r for r in rows if r.get("latency_ms")]
    metric = "top1" if any(r.get("top1") is not None for r in timed) else "cosine"
    if metric == "top1" and len({r.get("top1") for r in timed}) == 1:  # e.g. random init: no spread to show
        metric = "cosine"
    points = [r for r in timed if r.get(metric) is not None]
    if not points:
        return '<p class="muted">No artifact was both judged and timed on this host: nothing to plot.</p>'
    targets = list(dict.fromkeys(r["target"] for r in points))
    models = list(dict.fromkeys(r["model"] for r in points))
    x = _Axis([r["latency_ms"] for r in points], (LEFT, W - RIGHT), allow_log=True)
    y = _Axis([r[metric] for r in points], (H - BOTTOM, TOP), allow_log=False)
    label = "top-1 (%)" if metric == "top1" else "parity cosine vs PyTorch"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
           f'aria-label="{escape(label)} vs latency">',
           f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
           'fill="none" stroke="#999"/>']
    for t in x.ticks():
        px = x(t)
        out.append(f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{H - BOTTOM}" stroke="#eee"/>'
                   f'<text x="{px:.1f}" y="{H - BOTTOM + 15}" text-anchor="middle">{_fmt(t)}</text>')
    for t in y.ticks():
        py = y(t)
        out.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{W - RIGHT}" y2="{py:.1f}" stroke="#eee"/>'
                   f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">median latency, ms, batch 1'
               f'{" (log scale)" if x.log else ""}</text>')
    out.append(f'<text transform="translate(16 {(TOP + H - BOTTOM) / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(label)}</text>')
    for r in points:
        color = PALETTE[targets.index(r["target"]) % len(PALETTE)]
        title = (f"{r['model']} / {r['target']}: {label} {r[metric]:.6g}, {r['latency_ms']:.2f} ms "
                 f"({r.get('runtime') or 'runtime ?'})")
        out.append(_marker(models.index(r["model"]), x(r["latency_ms"]), y(r[metric]), color, title))
    ly = TOP + 6
    for i, t in enumerate(targets):
        out.append(f'<circle cx="{W - RIGHT + 18}" cy="{ly + 14 * i}" r="5" fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{W - RIGHT + 28}" y="{ly + 14 * i + 4}">{escape(t)}</text>')
    ly += 14 * len(targets) + 10
    for i, m in enumerate(models):
        out.append(_marker(i, W - RIGHT + 18, ly + 14 * i, "#444", m)
                   + f'<text x="{W - RIGHT + 28}" y="{ly + 14 * i + 4}">{escape(m)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def sensitivity_svg(model: str, items: Sequence[dict[str, Any]], limit: int = 15) -> str:
    """Horizontal bars: output SQNR gained by keeping each layer in float (most harmful first)."""
    items = [s for s in items if s.get("gain_db") is not None][:limit]
    if not items:
        return ""
    bar_h, label_w, width = 18, 300, 720
    height = TOP + bar_h * len(items) + 40
    peak = max(max(s["gain_db"] for s in items), 1e-9)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="int8 layer sensitivity of {escape(model)}">',
           f'<text x="0" y="16" font-weight="600">{escape(model)}: output SQNR gained by keeping one layer in '
           f'float (dB)</text>']
    for i, s in enumerate(items):
        y = TOP + i * bar_h
        w = max(s["gain_db"], 0.0) / peak * (width - label_w - 60)
        name = s["unit"] if len(s["unit"]) <= 42 else "..." + s["unit"][-39:]
        out.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{escape(name)} ({escape(s["op"])})</text>'
                   f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 5}" fill="#1f77b4">'
                   f'<title>{escape(s["unit"])}: +{s["gain_db"]:.2f} dB; int8 SQNR with it float '
                   f'{s.get("sqnr_db")}</title></rect>'
                   f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{s["gain_db"]:+.2f}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _table(rows: Sequence[dict[str, Any]]) -> str:
    cells = table_cells(rows)
    head = "".join(f"<th>{escape(c)}</th>" for c in cells[0])
    body = []
    for r, row in zip(rows, cells[1:]):
        tds = "".join(f"<td>{escape(c)}</td>" for c in row[:-1]) + f"<td>{escape(r['note'])}</td>"
        body.append(f'<tr class="{STATUS_CLASS.get(r["status"], "")}">{tds}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render(merged: dict[str, Any]) -> str:
    """The whole page from a merged report.json dict (rows, reports, settings)."""
    rows, reports = merged["rows"], merged.get("reports", [])
    facts = [*summary_lines(reports)]
    if merged.get("wall_seconds") is not None:
        facts.append(f"wall time {merged['wall_seconds']:.1f} s")
    host = merged.get("host") or {}
    if host:
        facts.append(f"host: {host.get('cpus')} cores ({host.get('machine')}), 1-min load average at the end "
                     f"{host.get('loadavg_1m')}")
    if merged.get("interrupted"):
        facts.append("INTERRUPTED: rows marked 'not run' did not finish")
    facts.append(f"exit code {merged['exit_code']}")
    versions = next((r.get("versions") for r in reports if r.get("versions")), {})
    sens = "".join(sensitivity_svg(r["model"]["name"], (r.get("quantization") or {}).get("sensitivity") or [])
                   for r in reports)
    sens = sens or ('<p class="muted">No per-layer sensitivity in this run (it needs an int8 target and '
                    'calibration images).</p>')
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>mnv4-deploy benchmark</title>",
        f"<style>{CSS}</style></head><body>", "<h1>mnv4-deploy benchmark</h1>",
        "<ul>" + "".join(f"<li>{escape(f)}</li>" for f in facts) + "</ul>",
        "<h2>Matrix</h2>", _table(rows),
        "<h2>Accuracy vs latency</h2>",
        '<p class="muted">Host latency: each artifact in its runtime here (median of N runs, batch 1). An int8 '
        "model's speed on a phone or NPU is not measured here. Hover a marker for details.</p>",
        scatter_svg(rows),
        "<h2>Per-layer int8 sensitivity</h2>", sens,
        "<h2>Versions</h2>",
        "<p>" + escape(", ".join(f"{k} {v}" for k, v in versions.items())) + "</p>",
        "</body></html>", ""])
