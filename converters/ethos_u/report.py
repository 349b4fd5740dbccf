"""Vela's verdict on one model as report data and a printable table.

Operator counts are of the integer TFLite given to Vela (subgraph 0): an operator is on the
CPU when it is still a TFLite operator in the compiled model (everything Vela takes becomes
part of an `ethos-u` custom op), and Vela's printed reason is attached by its output tensor.
Memory, cycles and speed are Vela's summary CSV: estimates of its performance model at the
system config's clock, which Arm says are for the compiler's own decisions and not a
substitute for running on an FVP or a board.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnv4_deploy.report import text_columns

from .configs import VelaSettings, format_size
from .vela import VelaOutput, vela_version

NPU_OP = "CUSTOM:ethos-u"
NO_REASON = "left on the CPU by Vela (it printed no reason)"
RUNS_ON = ("the compiled _vela.tflite runs only on an Arm Corstone FVP or an Ethos-U board (its ethos-u "
           "custom op has no kernel in LiteRT); an export judges the integer TFLite Vela was given")
ESTIMATE = "Vela's performance estimate, not a measurement (Arm: profile on an FVP or a board for real numbers)"
_KIB = 1024
NO_LIMIT = 4 * 1024 ** 3  # Vela's arena cache size when a memory mode sets none (its address space)


@dataclass
class CpuOp:
    """An operator of the input model left on the CPU, with Vela's reasons."""

    index: int  # position in the compiled model's operator list
    op: str
    output: str
    reasons: list[str] = field(default_factory=list)


@dataclass
class VelaReport:
    """Counts, CPU fallbacks, memory against budgets, cycles and speed of one compilation."""

    model: str
    settings: VelaSettings
    ops: int
    cpu_ops: list[CpuOp]
    npu_parts: int
    vela_op_counts: dict[str, int]
    summary: dict[str, Any]
    slowest_layers: list[dict[str, Any]]

    @property
    def on_npu(self) -> int:
        return self.ops - len(self.cpu_ops)

    @property
    def fully_mapped(self) -> bool:
        return self.ops > 0 and not self.cpu_ops

    @property
    def sram_bytes(self) -> int:
        return round(float(self.summary["sram_memory_used"]) * _KIB)

    @property
    def arena_cache_bytes(self) -> int:
        """The arena cache size Vela worked to (its summary CSV gives it in KiB, like the memory columns)."""
        return round(float(self.summary["arena_cache_size"]) * _KIB)

    @property
    def offchip(self) -> tuple[str, int]:
        """The off-chip memory the model occupies: ('flash' | 'DRAM' | 'flash+DRAM', bytes)."""
        flash = float(self.summary["off_chip_flash_memory_used"]) + float(self.summary["on_chip_flash_memory_used"])
        dram = float(self.summary["dram_memory_used"])
        kind = "flash+DRAM" if flash and dram else ("DRAM" if dram else "flash")
        return kind, round((flash + dram) * _KIB)

    def budget_misses(self) -> list[str]:
        """'SRAM 548.5 KiB > --ethos-sram 512.0 KiB', one per budget the model does not fit."""
        misses = []
        if self.settings.sram_budget is not None and self.sram_bytes > self.settings.sram_budget:
            misses.append(f"SRAM {format_size(self.sram_bytes)} > --ethos-sram {format_size(self.settings.sram_budget)}")
        kind, used = self.offchip
        if self.settings.flash_budget is not None and used > self.settings.flash_budget:
            misses.append(f"{kind} {format_size(used)} > --ethos-flash {format_size(self.settings.flash_budget)}")
        return misses

    def headline(self) -> str:
        """One line for the report's note column (which shows 120 characters)."""
        kind, used = self.offchip
        return (f"NPU {self.on_npu}/{self.ops} ops, SRAM {format_size(self.sram_bytes)}, {kind} "
                f"{format_size(used)}, {self.fps:.0f} inf/s at {self.clock_mhz:.0f} MHz (Vela est.); _vela.tflite needs "
                f"FVP/board")

    @property
    def fps(self) -> float:
        """Vela's inferences/s; 0 when nothing runs on the NPU (Vela then writes nan)."""
        value = float(self.summary["inferences_per_second"])
        return value if math.isfinite(value) else 0.0

    @property
    def clock_mhz(self) -> float:
        return float(self.summary["core_clock"]) / 1e6

    def cycles(self) -> dict[str, int]:
        keys = {"npu": "cycles_npu", "sram_access": "cycles_sram_access", "dram_access": "cycles_dram_access",
                "on_chip_flash_access": "cycles_on_chip_flash_access",
                "off_chip_flash_access": "cycles_off_chip_flash_access", "total": "cycles_total"}
        return {name: int(self.summary[key]) for name, key in keys.items()}

    def to_dict(self) -> dict[str, Any]:
        kind, used = self.offchip
        s = self.summary
        return {
            "vela": vela_version(), "model": self.model, "settings": self.settings.to_dict(),
            "fully_mapped": self.fully_mapped,
            "counts": {"ops": self.ops, "on_npu": self.on_npu, "on_cpu": len(self.cpu_ops),
                       "npu_parts": self.npu_parts, "vela_lowered": self.vela_op_counts},
            "cpu_ops": [asdict(op) for op in self.cpu_ops],
            "memory": {"sram_bytes": self.sram_bytes, "sram_budget": self.settings.sram_budget,
                       "offchip_kind": kind, "offchip_bytes": used, "offchip_budget": self.settings.flash_budget,
                       "arena_cache_size": self.arena_cache_bytes, "arena_cache_from": self.settings.arena_cache_from,
                       "weights_original_bytes": int(s["total_original_weights"]),
                       "weights_npu_encoded_bytes": int(s["total_npu_encoded_weights"]),
                       "fits": not self.budget_misses(), "misses": self.budget_misses()},
            "cycles": self.cycles(), "macs": int(s["nn_macs"]), "clock_hz": float(s["core_clock"]),
            "inference_ms": round(float(s["inference_time"]) * 1e3, 4), "inferences_per_second": round(self.fps, 2),
            "slowest_layers": self.slowest_layers, "estimate": ESTIMATE, "runs_on": RUNS_ON,
            "headline": self.headline(), "table": self.format_table(),
        }

    def format_table(self) -> str:
        st = self.settings
        lines = [f"Vela {vela_version()}: {self.model} for {st.describe()}",
                 f"operators: {self.on_npu} of {self.ops} on the NPU in {self.npu_parts} part(s), "
                 f"{len(self.cpu_ops)} on the CPU (Vela's lowering: {self.vela_op_counts.get('npu', '?')} NPU, "
                 f"{self.vela_op_counts.get('cpu', '?')} CPU ops)"]
        if self.cpu_ops:
            lines += ["CPU fallbacks:", *("  " + row for row in text_columns(
                [("#", "op", "output tensor", "Vela's reason"),
                 *((str(o.index), o.op, o.output[-48:], "; ".join(o.reasons)) for o in self.cpu_ops)]))]
        kind, used = self.offchip
        arena = (f"Vela's arena cache limit {format_size(self.arena_cache_bytes)} from {st.arena_cache_from}"
                 if self.arena_cache_bytes < NO_LIMIT else f"no arena cache limit in {st.memory_mode}")
        lines.append(f"memory: SRAM {format_size(self.sram_bytes)} (budget {format_size(st.sram_budget)}; {arena}), "
                     f"{kind} {format_size(used)} (budget {format_size(st.flash_budget)})"
                     + (f"; DOES NOT FIT: {', '.join(self.budget_misses())}" if self.budget_misses() else ""))
        c = self.cycles()
        if not c["total"]:
            lines.append("cycles: nothing runs on the NPU, so Vela estimates no speed")
            return "\n".join(lines + [f"note: {RUNS_ON}"])
        memory = {k: v for k, v in c.items() if k.endswith("_access") and v}
        bound = "compute-bound" if c["npu"] >= max(memory.values(), default=0) else "memory-bound"
        lines.append(f"cycles per inference: {c['total'] / 1e6:.2f} M; NPU {c['npu'] / 1e6:.2f} M, "
                     + ", ".join(f"{k.replace('_', ' ')} {v / 1e6:.2f} M" for k, v in memory.items()) + f" ({bound})")
        lines.append(f"speed: {self.fps:.1f} inferences/s ({float(self.summary['inference_time']) * 1e3:.2f} ms) at "
                     f"{self.clock_mhz:.0f} MHz, {int(self.summary['nn_macs']) / 1e6:.0f} M MACs: {ESTIMATE}")
        if self.slowest_layers:
            lines += ["slowest layers:", *("  " + row for row in text_columns(
                [("op", "cycles", "% of network", "MACs", "name"),
                 *((l["op"], f"{l['cycles']:,}", f"{l['network_pct']:.1f}", f"{l['macs']:,}", l["name"])
                   for l in self.slowest_layers)]))]
        return "\n".join(lines + [f"note: {RUNS_ON}"])


def _slowest(rows: list[dict[str, Any]], keep: int = 5) -> list[dict[str, Any]]:
    ranked = sorted((r for r in rows if r.get("Target") == "NPU" and isinstance(r.get("Op Cycles"), float)
                     and r["Op Cycles"] > 0), key=lambda r: -r["Op Cycles"])
    return [{"op": str(r["Original Operator"]), "cycles": int(r["Op Cycles"]),
             "network_pct": round(float(r["Network% (cycles)"]), 2), "macs": int(r["MAC Count"]),
             "name": str(r["Name"])[-60:]} for r in ranked[:keep]]


def vela_report(source: Path, output: VelaOutput, settings: VelaSettings) -> VelaReport:
    """Judge one Vela run: which of the source model's operators stayed on the CPU, and why."""
    from mnv4_deploy.converters.tflite.flatbuffer import read_tflite

    source_ops = read_tflite(source).ops
    compiled = read_tflite(output.compiled).ops
    reasons = {fallback.ofm: fallback.reasons for fallback in output.cpu_fallbacks}
    cpu_ops = []
    for op in compiled:
        if op.op == NPU_OP:
            continue
        name = op.outputs[0].name if op.outputs else ""
        cpu_ops.append(CpuOp(op.index, op.op, name, reasons.get(name) or [NO_REASON]))
    return VelaReport(source.name, settings, len(source_ops), cpu_ops, sum(op.op == NPU_OP for op in compiled),
                      output.vela_op_counts, output.summary(), _slowest(output.per_layer()))
