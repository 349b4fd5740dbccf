"""The CPU a run was judged on: the features that change int8 results or speed.

The same int8 artifact computes differently on two x86 CPUs: without VNNI, u8 x s8 kernels add
neighbouring products in saturating int16 (quant/overflow.py), and int8 is barely faster than
fp32 there; with AVX-512 VNNI or AVX-VNNI they accumulate in int32, and AMX adds tile units.
So every report, manifest and benchmark names the class of CPU it was made on. Read from
/proc/cpuinfo (Linux) or sysctl (macOS); never imports a backend.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from typing import Any

# The flags that change int8 numerics or speed, in /proc/cpuinfo's spelling.
INT8_FLAGS = ("sse4_1", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_tile", "amx_int8", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_DOT_FLAGS = ("asimddp", "i8mm", "sve")  # ARM int8 dot products (exact, int32 accumulation)
# Environment caps the runtimes honour: they make this host compute like an older CPU class.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
X86 = ("x86_64", "amd64", "i386", "i686")


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, flags) from /proc/cpuinfo; ('', []) where there is none."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return "", []
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags") or fields.get("Features") or ""
    return fields.get("model name") or fields.get("CPU part", ""), flags.split()


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def int8_class(machine: str, flags: set[str]) -> str:
    """One phrase naming how this CPU runs int8 dot products."""
    if machine.lower() in X86:
        if flags & set(VNNI_FLAGS):
            return "x86 with VNNI (int8 dot products accumulate in int32: exact)"
        if not flags:
            return "x86, features unknown"
        return "x86 without VNNI (u8 x s8 pair sums saturate in int16)"
    if machine.lower() in ("arm64", "aarch64"):
        return "ARM" + (" with int8 dot products" if flags & set(ARM_DOT_FLAGS) else "")
    return machine or "unknown"


@functools.lru_cache(maxsize=1)
def _static_description() -> dict[str, Any]:
    machine = platform.machine()
    model, flags = _cpuinfo()
    if not model and platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
        flags = (_sysctl("machdep.cpu.features") + " " + _sysctl("machdep.cpu.leaf7_features")).lower().split()
    present = set(flags)
    watched = INT8_FLAGS if machine.lower() in X86 else ARM_DOT_FLAGS
    return {"machine": machine, "model_name": model, "cpus": os.cpu_count(),
            "int8_features": [f for f in watched if f in present], "vnni": bool(present & set(VNNI_FLAGS)),
            "int8_class": int8_class(machine, present)}


def cpu_description() -> dict[str, Any]:
    """This host's CPU: machine, model, the int8-relevant features, their class, and any ISA cap set."""
    caps = {name: os.environ[name] for name in ISA_CAP_VARIABLES if os.environ.get(name)}
    return {**_static_description(), "isa_caps": caps}


def has_vnni() -> bool:
    """True on x86 CPUs with VNNI (or AMX int8), and on every non-x86 CPU (no int16 pair sums there)."""
    info = _static_description()
    return info["vnni"] or info["machine"].lower() not in X86


def one_line(cpu: dict[str, Any] | None = None) -> str:
    """'AMD EPYC, 2 CPUs: x86 with VNNI (...); avx2 fma avx512f ...' for reports and logs."""
    cpu = cpu or cpu_description()
    line = (f"{cpu.get('model_name') or cpu.get('machine')}, {cpu.get('cpus')} CPUs: {cpu.get('int8_class')}; "
            f"{' '.join(cpu.get('int8_features') or []) or 'no int8 features read'}")
    if cpu.get("isa_caps"):
        line += "; capped: " + ", ".join(f"{k}={v}" for k, v in cpu["isa_caps"].items())
    return line


__all__ = ["INT8_FLAGS", "cpu_description", "has_vnni", "int8_class", "one_line"]
