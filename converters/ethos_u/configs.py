"""Which Ethos-U system Vela compiles for: MAC configuration, system config, memory mode, budgets.

Names are Vela's own (`--accelerator-config`, and the sections of the `Arm/vela.ini` that
ethos-u-vela 5.2.0 ships), so a user's Vela knowledge carries over. When a setting is not given,
Vela's own defaults for the NPU family apply, and the report says which were used:

| family | MACs (this project's default) | system config (Vela's default)   | memory mode (Vela's default) |
|--------|-------------------------------|----------------------------------|------------------------------|
| U55    | 256 (Vela's default)          | Ethos_U55_High_End_Embedded      | Shared_Sram                  |
| U65    | 256                           | Ethos_U65_Client_Server          | Dedicated_Sram_384KB         |
| U85    | 256                           | Ethos_U85_SYS_DRAM_Mid           | Dedicated_Sram_384KB         |

(Vela picks these in `architecture_features._set_default_sys_config/_mem_mode` and warns that
the result "may be invalid or non-optimal"; this package passes them explicitly instead.)
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from mnv4_deploy.errors import UsageError
from mnv4_deploy.options import TargetOption

FAMILIES = ("u55", "u65", "u85")
MAC_CONFIGS: dict[str, tuple[int, ...]] = {"u55": (32, 64, 128, 256), "u65": (256, 512),
                                           "u85": (128, 256, 512, 1024, 2048)}
CONFIG_NAMES = tuple(f"{family}-{macs}" for family in FAMILIES for macs in MAC_CONFIGS[family])
DEFAULT_MACS = {"u55": 256, "u65": 256, "u85": 256}
# the sections of ethos-u-vela 5.2.0's Arm/vela.ini (tests/test_ethos_u.py compares them with the installed file)
SYSTEM_CONFIGS = (
    "Ethos_U55_Deep_Embedded", "Ethos_U55_High_End_Embedded",
    "Ethos_U65_Embedded", "Ethos_U65_Mid_End", "Ethos_U65_High_End", "Ethos_U65_Client_Server",
    "Ethos_U85_SYS_Flash_Low", "Ethos_U85_SYS_Flash_High", "Ethos_U85_SYS_DRAM_Low", "Ethos_U85_SYS_DRAM_Mid",
    "Ethos_U85_SYS_DRAM_High",
)
MEMORY_MODES = ("Sram_Only", "Shared_Sram", "Dedicated_Sram", "Dedicated_Sram_256KB", "Dedicated_Sram_384KB",
                "Dedicated_Sram_512KB")
VELA_DEFAULTS = {"u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
                 "u65": ("Ethos_U65_Client_Server", "Dedicated_Sram_384KB"),
                 "u85": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB")}
OPTIMISE = ("Performance", "Size")  # Vela's --optimise; Performance is its default
VELA_INI = "Arm/vela.ini"

_PANEL = "Ethos-U"
ETHOS_CONFIG = TargetOption("ethos_config", str, None, "Ethos-U MAC configuration, one per family, e.g. u55-128 "
                            "or u55-128,u85-512 (default: u55-256, u65-256, u85-256)", panel=_PANEL)
ETHOS_SYSTEM_CONFIG = TargetOption("ethos_system_config", str, None, "Vela system config of Arm/vela.ini, "
                                   "e.g. Ethos_U85_SYS_DRAM_Mid (default: Vela's for the family)", panel=_PANEL, choices=SYSTEM_CONFIGS)
ETHOS_MEMORY_MODE = TargetOption("ethos_memory_mode", str, None, "Vela memory mode of Arm/vela.ini (default: "
                                 "Vela's: U55 Shared_Sram, U65/U85 Dedicated_Sram_384KB)", panel=_PANEL,
                                 choices=MEMORY_MODES)
ETHOS_OPTIMISE = TargetOption("ethos_optimise", str, "Performance", "Vela --optimise: Performance or Size",
                              panel=_PANEL, choices=OPTIMISE)
ETHOS_ARENA_CACHE = TargetOption("ethos_arena_cache_size", str, None, "Vela --arena-cache-size, e.g. 262144 or "
                                 "256KiB (default: the --ethos-sram budget, else the memory mode's)", panel=_PANEL)
ETHOS_SRAM = TargetOption("ethos_sram", str, None, "SRAM budget, e.g. 1MiB: refuse (exit 3) a model Vela places "
                          "in more", panel=_PANEL)
ETHOS_FLASH = TargetOption("ethos_flash", str, None, "off-chip budget (flash, or DRAM in DRAM system configs), "
                           "e.g. 4MiB: refuse (exit 3) a model that needs more", panel=_PANEL)
OPTIONS = (ETHOS_CONFIG, ETHOS_SYSTEM_CONFIG, ETHOS_MEMORY_MODE, ETHOS_OPTIMISE, ETHOS_ARENA_CACHE, ETHOS_SRAM,
           ETHOS_FLASH)

_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024 ** 2, "mib": 1024 ** 2, "mb": 1000 ** 2}


def parse_size(text: str | int | None, flag: str) -> int | None:
    """'512KiB', '1MiB', '2MB', '262144' -> bytes (KiB/MiB binary, KB/MB decimal); a bad value is refused."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match[2].lower() if match else None
    if match is None or unit not in _UNITS or float(match[1]) <= 0:
        raise UsageError(f"{flag} {text!r} is not a size", "give bytes or a number with KiB, MiB, KB or MB, e.g. 1MiB")
    return int(round(float(match[1]) * _UNITS[unit]))


def format_size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "-"
    if n_bytes >= 1024 ** 3:
        return f"{n_bytes / 1024 ** 3:.2f} GiB"
    return f"{n_bytes / 1024 ** 2:.2f} MiB" if n_bytes >= 1024 ** 2 else f"{n_bytes / 1024:.1f} KiB"


@dataclass(frozen=True)
class VelaSettings:
    """One Vela compilation's settings, with which of them were Vela's defaults (for the report)."""

    family: str  # u55 | u65 | u85
    accelerator: str  # Vela's name, e.g. ethos-u55-256
    system_config: str
    memory_mode: str
    optimise: str
    arena_cache_size: int | None  # bytes passed to --arena-cache-size; None: the memory mode's own
    arena_cache_from: str  # where that came from, in words
    sram_budget: int | None
    flash_budget: int | None
    defaulted: tuple[str, ...]  # the settings not given, filled with the defaults above

    @property
    def macs(self) -> int:
        return int(self.accelerator.rsplit("-", 1)[1])

    def vela_args(self) -> list[str]:
        args = ["--config", VELA_INI, "--accelerator-config", self.accelerator, "--system-config",
                self.system_config, "--memory-mode", self.memory_mode, "--optimise", self.optimise]
        return args + (["--arena-cache-size", str(self.arena_cache_size)] if self.arena_cache_size else [])

    def describe(self) -> str:
        said = f"{self.accelerator}, {self.system_config}, {self.memory_mode}, optimise {self.optimise}"
        return said + (f" (defaults: {', '.join(self.defaulted)})" if self.defaulted else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "defaulted": list(self.defaulted), "macs": self.macs}


def family_configs(text: str | None) -> dict[str, str]:
    """'u55-128,u85-512' -> {'u55': 'u55-128', 'u85': 'u85-512'}; unknown names and two of one family refused."""
    configs: dict[str, str] = {}
    for item in (x.strip() for x in (text or "").split(",")):
        if not item:
            continue
        if item not in CONFIG_NAMES:
            raise UsageError(f"--ethos-config {item!r} is not an Ethos-U MAC configuration",
                             f"use one of: {', '.join(CONFIG_NAMES)}")
        family = item.split("-")[0]
        if configs.setdefault(family, item) != item:
            raise UsageError(f"--ethos-config names two {family.upper()} configurations ({configs[family]}, {item})",
                             "give one configuration per family")
    if text is not None and not configs:
        raise UsageError("--ethos-config is empty", f"use one of: {', '.join(CONFIG_NAMES)}")
    return configs


def settings_for(family: str, options: Any, target: str) -> VelaSettings:
    """The Vela settings of one target from the run's options; refuses another family's MAC config."""
    defaulted = []
    configs = family_configs(options.ethos_config)
    if options.ethos_config is None:
        config = f"{family}-{DEFAULT_MACS[family]}"
        defaulted.append("ethos-config")
    elif family not in configs:
        mine = ", ".join(c for c in CONFIG_NAMES if c.startswith(family + "-"))
        raise UsageError(f"--ethos-config {options.ethos_config} names no configuration of target {target}",
                         f"add one of {mine} (one configuration per family, comma-separated)")
    else:
        config = configs[family]
    system_config, memory_mode = options.ethos_system_config, options.ethos_memory_mode
    if system_config is None:
        system_config = VELA_DEFAULTS[family][0]
        defaulted.append("system config")
    if memory_mode is None:
        memory_mode = VELA_DEFAULTS[family][1]
        defaulted.append("memory mode")
    sram = parse_size(options.ethos_sram, "--ethos-sram")
    flash = parse_size(options.ethos_flash, "--ethos-flash")
    arena = parse_size(options.ethos_arena_cache_size, "--ethos-arena-cache-size")
    if arena is not None:
        arena_from = "--ethos-arena-cache-size"
    elif sram is not None:
        arena, arena_from = sram, "the --ethos-sram budget"
    else:
        arena_from = f"the memory mode {memory_mode}"
    return VelaSettings(family, f"ethos-{config}", system_config, memory_mode, options.ethos_optimise, arena,
                        arena_from, sram, flash, tuple(defaulted))
