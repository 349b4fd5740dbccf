"""Report rows, their JSON/Markdown/console forms, the manifest and SHA256SUMS; exit-code precedence."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from .artifacts import write_json_atomic, write_text_atomic
from .checksums import SUMS_FILE, artifact_sums
from .errors import EXIT_ACCURACY, EXIT_BACKEND, EXIT_OK, EXIT_OTHER, EXIT_PARITY
from .host import cpu_description
from .host import one_line as cpu_line
from .judgement import Judgement
from .provenance import package_versions, reproducibility

PASSED = "passed"
VALIDATION_FAILED = "validation_failed"
EXPORT_FAILED = "export_failed"
ACCURACY_FAILED = "accuracy_failed"
NOT_RUN_HERE = "exported_not_run_here"
SKIPPED = "skipped"
BACKEND_MISSING = "backend_missing"

STATUS_TEXT = {
    PASSED: "passed",
    VALIDATION_FAILED: "exported but validation failed",
    ACCURACY_FAILED: "exported but accuracy drop over budget",
    EXPORT_FAILED: "export failed",
    NOT_RUN_HERE: "exported, not run on this host",
    SKIPPED: "not run",
    BACKEND_MISSING: "backend not installed",
}

# Which failure a run's (or a matrix's) exit code reports when several happened: an export that
# failed outright first, then a missing backend, then parity, then accuracy.
EXIT_PRECEDENCE = (EXIT_OTHER, EXIT_BACKEND, EXIT_PARITY, EXIT_ACCURACY)


def worst_exit_code(codes: Iterable[int]) -> int:
    """The one exit code for many outcomes: the first of EXIT_PRECEDENCE present, else the highest."""
    codes = list(codes)
    for code in EXIT_PRECEDENCE:
        if code in codes:
            return code
    return max(codes, default=EXIT_OK)


def text_columns(rows: Sequence[Sequence[str]], rule: bool = False) -> list[str]:
    """Rows of cells as left-aligned text columns; `rule`: a dashed line under the first (header) row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


@dataclass
class TargetResult:
    """One artifact's outcome."""

    target: str
    precision: str
    status: str
    artifact: str | None = None  # path relative to the output directory
    size_bytes: int | None = None
    sha256: str | None = None
    runtime: str | None = None
    parity: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    emulation_parity: dict[str, Any] | None = None  # vs the artifact's own PyTorch emulation
    emulation_thresholds: dict[str, Any] | None = None
    thresholds: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)
    reason: str | None = None
    exit_code: int = EXIT_OK
    seconds_convert: float | None = None
    seconds_validate: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] | None = None  # benchmark timing on the host runtime (batch 1)
    extra_judgements: list[Judgement] = field(default_factory=list)  # e.g. the BPU's board forecasts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TargetResult":
        known = {f.name for f in fields(cls)}
        result = cls(**{k: v for k, v in data.items() if k in known})
        result.extra_judgements = [Judgement.from_dict(j) for j in data.get("extra_judgements") or []]
        return result

    def reproducibility(self) -> dict[str, Any]:
        """What the converter says about re-exporting byte-identically (None: it does not say)."""
        return reproducibility(self.metadata)


def _judgement_row(target: str, j: Judgement, with_emu: bool, with_acc: bool, with_lat: bool) -> list[str]:
    """An extra judged row under its artifact's: parity and accuracy only (no status, size or gate)."""
    p, a = j.parity, j.accuracy or {}
    acc = ([f"{a['top1']:.2f}", f"{a['top5']:.2f}",
            f"{a['drop_top1']:+.2f} ({a['drop_top1_ci95'][0]:+.2f}, {a['drop_top1_ci95'][1]:+.2f})"]
           if a else ["-", "-", "-"]) if with_acc else []
    return [f"{target} [{j.name}]", "emulated here", "-", f"{p['cosine']:.6f}" if "cosine" in p else "-",
            f"{p['max_abs']:.2e}" if "max_abs" in p else "-", f"{p['sqnr_db']:.1f}" if "sqnr_db" in p else "-",
            f"{p['top1_agreement']:.3f}" if "top1_agreement" in p else "-", *(["-"] if with_emu else []), *acc,
            *(["-", "-"] if with_lat else []), j.note()[:120]]


def golden_line(golden: dict[str, Any]) -> str:
    """What parity was judged on, and why those images (held out of calibration, or a synthetic fallback)."""
    if golden.get("held_out_of"):
        line = (f"golden inputs: {golden['count']} images of {golden['source']}, held out of the "
                f"{golden['held_out_of']} sample")
    else:
        line = f"golden inputs: {golden['count']} {golden['source']} images"
    return line + (f" ({golden['note']})" if golden.get("note") else "")


@dataclass
class Report:
    """Everything a run did; the Python API returns it and the files are made from it."""

    model: dict[str, Any]
    contract: dict[str, Any]
    canonical: dict[str, Any]
    golden: dict[str, Any]
    options: dict[str, Any]
    recipe: dict[str, Any]
    out_dir: str
    versions: dict[str, str] = field(default_factory=package_versions)
    host: dict[str, Any] = field(default_factory=cpu_description)  # the CPU it was judged on (int8 differs)
    results: list[TargetResult] = field(default_factory=list)
    interrupted: bool = False
    evaluation: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None  # the run's int8 plan, sensitivity, fallback

    @property
    def exit_code(self) -> int:
        """Export failures first, then missing backends, parity, accuracy (EXIT_PRECEDENCE)."""
        return worst_exit_code(r.exit_code for r in self.results)

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK and not self.interrupted

    def result(self, target: str) -> TargetResult:
        return next(r for r in self.results if r.target == target)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """Rebuild a report from its report.json form (merging parallel or CI parts)."""
        known = {f.name for f in fields(cls)} - {"results"}
        report = cls(**{k: data[k] for k in known if k in data})
        report.results = [TargetResult.from_dict(r) for r in data.get("results", [])]
        return report

    def to_dict(self) -> dict[str, Any]:
        return {"tool": "mnv4-deploy", "exit_code": self.exit_code, "passed": self.passed,
                "interrupted": self.interrupted, "model": self.model, "contract": self.contract,
                "canonical": self.canonical, "golden": self.golden, "options": self.options,
                "recipe": self.recipe, "versions": self.versions, "host": self.host, "out_dir": self.out_dir,
                "evaluation": self.evaluation, "quantization": self.quantization,
                "results": [r.to_dict() for r in self.results]}

    # ---- human forms --------------------------------------------------------------------
    def table_rows(self) -> list[list[str]]:
        with_acc = any(r.accuracy for r in self.results)
        with_emu = any(r.emulation_parity for r in self.results)
        with_lat = any(r.latency for r in self.results)
        head = ["target", "status", "size MB", "cosine", "max abs", "SQNR dB", "top-1 agree"]
        rows = [head + (["cos vs emulation"] if with_emu else [])
                + (["top-1", "top-5", "drop pt (95% CI)"] if with_acc else [])
                + (["latency ms", "FPS"] if with_lat else []) + ["note"]]
        for r in self.results:
            p, a = r.parity or {}, r.accuracy or {}
            note = "; ".join(r.failures) or (r.reason or "") or "; ".join(r.metadata.get("notes", []))
            emu_cells = ([f"{r.emulation_parity['cosine']:.6f}" if r.emulation_parity else "-"] if with_emu else [])
            acc_cells = ([f"{a['top1']:.2f}", f"{a['top5']:.2f}",
                          f"{a['drop_top1']:+.2f} ({a['drop_top1_ci95'][0]:+.2f}, {a['drop_top1_ci95'][1]:+.2f})"]
                         if a else ["-", "-", "-"]) if with_acc else []
            lat = r.latency or {}
            lat_cells = ([f"{lat['median_ms']:.2f}", f"{lat['fps']:.0f}"] if "median_ms" in lat else ["-", "-"]
                         ) if with_lat else []
            rows.append([
                r.target, STATUS_TEXT.get(r.status, r.status),
                f"{r.size_bytes / 1e6:.2f}" if r.size_bytes is not None else "-",
                f"{p['cosine']:.6f}" if "cosine" in p else "-",
                f"{p['max_abs']:.2e}" if "max_abs" in p else "-",
                f"{p['sqnr_db']:.1f}" if "sqnr_db" in p else "-",
                f"{p['top1_agreement']:.3f}" if "top1_agreement" in p else "-",
                *emu_cells,
                *acc_cells,
                *lat_cells,
                note[:120],
            ])
            rows += [_judgement_row(r.target, j, with_emu, with_acc, with_lat) for j in r.extra_judgements]
        return rows

    def format_table(self) -> str:
        return "\n".join(text_columns(self.table_rows(), rule=True))

    def summary_lines(self) -> list[str]:
        if not self.contract:  # the model never loaded: only the rows say what happened
            return [f"model: {self.model.get('name')}: {self.model.get('error', 'not prepared')}"]
        ver = self.canonical.get("verification") or {}
        lines = [
            f"model: {self.model['name']} ({self.model['timm_name']}), weights: {self.model['weights']}",
            f"input: {tuple(self.contract['crop_size'])} resize {self.contract['resize_short']} "
            f"{self.contract['interpolation']}, mean {self.contract['mean']}, std {self.contract['std']}",
            f"canonical: {self.canonical.get('norms_folded', 0)} norms and "
            f"{self.canonical.get('layer_scales_folded', 0)} layer scales folded"
            + (f", {self.canonical['pads_rewritten']} SAME/zero pads rewritten at {tuple(self.contract['crop_size'])}"
               if self.canonical.get("pads_rewritten") else "")
            + (f"; vs original: max abs {ver['max_abs']:.2e}, cosine {ver['cosine']:.8f}" if ver else ""),
            golden_line(self.golden),
            f"judged on: {cpu_line(self.host)}",
        ]
        if self.evaluation:
            ev = self.evaluation
            lines.append(f"evaluation: {ev['count']} labeled images from {ev['source']}; reference top-1 "
                         f"{ev['reference_top1']:.2f}, top-5 {ev['reference_top5']:.2f}")
        overflow = ((self.quantization or {}).get("plan") or {}).get("overflow")
        x86 = any("x86_without_vnni" in r.metadata for r in self.results)  # a target ran x86 int8 kernels
        if overflow and (x86 or overflow["mode"] != "off"):
            lines.append(f"int8 plan, overflow fix {overflow['mode']}: {overflow['seven_bit_channels']} of "
                         f"{overflow['channels']} GEMM-run channels at 7 bits; {overflow['verdict']}")
        fallback = (self.quantization or {}).get("fallback")
        if fallback:
            lines.append(f"int8 fallback: {len(fallback['kept_float'])} layers kept in float "
                         f"(simulated drop {fallback['initial_drop']:.2f} -> {fallback['final_drop']:.2f} pt)")
            lines += [f"kept in float: {t['unit']} ({t['op']}): {t['reason']}" for t in fallback["tries"] if t["kept"]]
        wide = ((self.quantization or {}).get("plan") or {}).get("calibrated_softmax_grids")
        if wide:
            lines.append(f"int8 plan: {len(wide)} softmax(es) wider than the fixed 1/256 grid resolves keep a calibrated "
                         f"grid ({', '.join(f'{u}: {n} wide' for u, n in list(wide.items())[:4])}); a target whose int8 "
                         f"softmax has a fixed grid notes how it computes them")
        if self.model.get("calibration"):
            cal = self.model["calibration"]
            lines.append(f"calibration: {cal['count']} images from {cal['source']} (sha256 {cal['sha256'][:16]})")
        return lines

    def to_markdown(self) -> str:
        rows = self.table_rows()
        md = ["# mnv4-deploy report", ""] + [f"- {line}" for line in self.summary_lines()] + [""]
        md.append("| " + " | ".join(rows[0]) + " |")
        md.append("|" + "---|" * len(rows[0]))
        md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows[1:]]
        for r in self.results:  # what a target's converter reports beyond one row (report.json has it too)
            if r.metadata.get("details_table"):
                md += ["", f"## {r.target}", "", "```", str(r.metadata["details_table"]).rstrip(), "```"]
        md += ["", f"Exit code: {self.exit_code}", ""]
        return "\n".join(md)

    # ---- files --------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The CI-facing inventory: what was built, from what, with which tools, and verdicts."""
        return {
            "tool": "mnv4-deploy", "versions": self.versions, "host": self.host,
            "model": self.model, "contract_sha256": self.contract.get("sha256"), "contract": self.contract,
            "golden_sha256": self.golden.get("sha256"), "calibration": self.model.get("calibration"),
            "options": self.options, "recipe": self.recipe.get("name"),
            "artifacts": [{"target": r.target, "precision": r.precision, "file": r.artifact, "sha256": r.sha256,
                           "size_bytes": r.size_bytes, "status": r.status, "reason": r.reason,
                           "exit_code": r.exit_code, "thresholds": r.thresholds, "parity": r.parity,
                           "accuracy": r.accuracy, "latency": r.latency, "reproducibility": r.reproducibility()}
                          for r in self.results],
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
        }

    def sha256sums(self, out_dir: Path) -> str:
        """`sha256sum -c`-compatible lines for every artifact file (directory artifacts file by file)."""
        return artifact_sums((out_dir / r.artifact for r in self.results if r.artifact), out_dir)

    def write(self, out_dir: Path) -> list[Path]:
        written = [
            write_json_atomic(out_dir / "report.json", self.to_dict()),
            write_text_atomic(out_dir / "report.md", self.to_markdown()),
            write_json_atomic(out_dir / "manifest.json", self.manifest()),
        ]
        written.append(write_text_atomic(out_dir / SUMS_FILE, self.sha256sums(out_dir)))
        return written
