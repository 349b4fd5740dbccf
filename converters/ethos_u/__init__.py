"""Arm Ethos-U microNPU targets (`ethos-u55`, `ethos-u65`, `ethos-u85`), compiled by Arm's Vela.

The Ethos-U55/U65/U85 sit beside Cortex-M and Cortex-A cores in microcontrollers and SoCs
(Alif Ensemble, Himax WE2, NXP i.MX 93, Infineon PSoC Edge, ...). Their compiler, Vela
(`ethos-u-vela` on PyPI), takes a full-integer TFLite, which the run's int8 plan already is.

- configs.py: MAC configurations, Vela's system configs and memory modes, Arm's defaults, budgets;
- vela.py: running Vela (a subprocess of this interpreter) and reading its CSVs and warnings;
- report.py: its verdict as data and a table (ops on the NPU, CPU fallbacks and why, memory,
  cycles, inferences/s);
- target.py: the three converters.

Importing this package imports neither Vela nor TensorFlow.
"""
from __future__ import annotations

from .configs import CONFIG_NAMES, MEMORY_MODES, SYSTEM_CONFIGS, VELA_DEFAULTS, VelaSettings, parse_size, settings_for
from .report import VelaReport, vela_report
from .target import ETHOS_U55, ETHOS_U65, ETHOS_U85, EthosUConverter, MemoryBudgetExceeded
from .vela import CpuFallback, VelaFailed, VelaOutput, parse_cpu_fallbacks, run_vela

__all__ = ["CONFIG_NAMES", "CpuFallback", "ETHOS_U55", "ETHOS_U65", "ETHOS_U85", "EthosUConverter", "MEMORY_MODES",
           "MemoryBudgetExceeded", "SYSTEM_CONFIGS", "VELA_DEFAULTS", "VelaFailed", "VelaOutput", "VelaReport",
           "VelaSettings", "parse_cpu_fallbacks", "parse_size", "run_vela", "settings_for", "vela_report"]
