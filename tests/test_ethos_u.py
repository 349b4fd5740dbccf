"""Arm Ethos-U targets (`ethos-u55`, `ethos-u65`, `ethos-u85`): the plan's int8-I/O TFLite, compiled by Vela.

The integer TFLite is judged here in LiteRT (against float and the plan's emulation, accuracy on
the trained digits net); Vela (ethos-u-vela, installed by the `ethos` extra) really compiles it,
and its verdict (ops on the NPU, CPU fallbacks with Vela's reasons, memory, cycles) is checked
against Vela's own CSVs and the compiled flatbuffer. The compiled `_vela.tflite` itself runs only
on a Corstone FVP or a board, which this machine has not.
"""
from __future__ import annotations

import configparser
import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mnv4_deploy import export
from mnv4_deploy.errors import OpsOffAccelerator, UsageError
from mnv4_deploy.registry import ExportOptions
from mnv4_deploy.run_lock import TMP_PREFIX

from conftest import SMALL, make_images
from target_checks import QUIET, check_missing_backend_names_the_extra, export_digits
from test_int8_pipeline import INT8_BOUND

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("ai_edge_litert", "ai_edge_quantizer", "ethosu")),
    reason="needs mnv4-deploy[ethos]")

ETHOS = ("ethos-u55", "ethos-u65", "ethos-u85")
CONFIGS = "u55-128,u65-512,u85-256"  # one per family, not the defaults: Vela must be told each


def _ops(path: Path) -> list[str]:
    from mnv4_deploy.converters.tflite.flatbuffer import read_tflite

    return [op.op for op in read_tflite(path).ops]


def _summary(path: Path) -> dict:
    with open(path, newline="") as fh:
        return next(csv.DictReader(fh))


@pytest.fixture(scope="module")
def digits_run(trained_digits, digit_folders, tmp_path_factory):
    """tflite-int8 and the three Ethos-U targets of the trained digits net in one run (one plan)."""
    out = tmp_path_factory.mktemp("digits-ethos") / "out"
    report = export_digits(trained_digits, digit_folders, "tflite-int8," + ",".join(ETHOS), out,
                           options=ExportOptions(ethos_config=CONFIGS))
    return report, out


def test_digits_pass_on_all_three_targets_with_the_int8_accuracy_and_plan(digits_run):
    report, out = digits_run
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    tfl = report.result("tflite-int8")
    for name in ETHOS:
        result = report.result(name)
        assert result.accuracy["drop_top1"] <= INT8_BOUND, result.accuracy
        # LiteRT's integer kernels compute what the plan's fake-quant model computes
        assert result.emulation_parity["cosine"] > 0.999 and result.emulation_parity["sqnr_db"] > 30
        assert "this run's tflite-int8 artifact" in result.metadata["full_integer_source"]  # quantized once
        assert result.metadata["io_dtype"] == "int8" and result.metadata["inputs"][0]["dtype"] == "int8"
        assert result.metadata["plan_ranges"] == tfl.metadata["plan_ranges"]
    markdown = (out / "report.md").read_text()  # Vela's table under each target's heading, CPU ops and cycles
    sections = markdown.split("\n## ")[1:]
    assert [s.split("\n")[0] for s in sections] == list(ETHOS), [s.split("\n")[0] for s in sections]
    for name, section in zip(ETHOS, sections):
        on_npu = report.result(name).metadata["vela"]["counts"]["on_npu"]
        assert f"operators: {on_npu} of " in section and "cycles" in section.lower(), section


def test_the_integer_model_is_tflite_int8_with_int8_io(digits_run, trained_digits):
    """The model Vela gets computes the same logits as tflite-int8: only the I/O conversions differ."""
    from mnv4_deploy.converters.tflite import litert_runner

    report, out = digits_run
    x = trained_digits.x_heldout[:32]
    reference = litert_runner(out / report.result("tflite-int8").artifact).run(x)
    for name in ETHOS:
        path = out / report.result(name).artifact
        np.testing.assert_allclose(litert_runner(path).run(x), reference, atol=1e-6)
        assert "QUANTIZE" not in _ops(path) and "DEQUANTIZE" not in _ops(path)


@pytest.mark.parametrize("name, accelerator", [("ethos-u55", "Ethos_U55_128"), ("ethos-u65", "Ethos_U65_512"),
                                               ("ethos-u85", "Ethos_U85_256")])
def test_vela_outputs_sit_beside_the_artifact_and_the_report_reads_them(digits_run, name, accelerator):
    report, out = digits_run
    result = report.result(name)
    vela = result.metadata["vela"]
    files = result.metadata["vela_outputs"]
    assert files == [f"digits.{name}_vela.tflite", f"digits.{name}_summary_{vela['settings']['system_config']}.csv",
                     f"digits.{name}_per-layer.csv"]
    assert all((out / f).is_file() for f in files)
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    summary = _summary(out / files[1])
    assert summary["accelerator_configuration"] == accelerator == vela["settings"]["accelerator"].replace(
        "ethos-u", "Ethos_U").replace("-", "_")
    # every op of the integer model went into the NPU's custom op: nothing is left as a TFLite op
    assert _ops(out / files[0]) == ["CUSTOM:ethos-u"] and vela["fully_mapped"]
    assert vela["counts"]["ops"] == vela["counts"]["on_npu"] == len(_ops(out / result.artifact))
    # the report's numbers are Vela's: memory in KiB, speed = clock / cycles
    assert vela["memory"]["sram_bytes"] == round(float(summary["sram_memory_used"]) * 1024) > 0
    assert vela["memory"]["offchip_bytes"] >= vela["memory"]["weights_npu_encoded_bytes"] > 0
    cycles = vela["cycles"]
    assert cycles["total"] == int(float(summary["cycles_total"])) >= cycles["npu"] > 0
    assert vela["inferences_per_second"] == pytest.approx(vela["clock_hz"] / cycles["total"], rel=1e-3)
    with open(out / files[2]) as fh:
        assert sum(1 for _ in fh) > vela["counts"]["ops"] // 2  # one row per lowered op
    assert result.metadata["notes"][0].startswith(f"NPU {vela['counts']['ops']}/{vela['counts']['ops']} ops")
    assert vela["settings"]["defaulted"] == ["system config", "memory mode"]  # the MAC config was given


def test_vela_compiles_the_same_bytes_again(digits_run, tmp_path):
    from mnv4_deploy.converters.ethos_u import run_vela, settings_for

    report, out = digits_run
    result = report.result("ethos-u65")
    settings = settings_for("u65", ExportOptions(ethos_config=CONFIGS), "ethos-u65")
    again = run_vela(out / result.artifact, tmp_path, settings, "ethos-u65")
    kept = [out / name for name in result.metadata["vela_outputs"]]
    assert [p.read_bytes() for p in (again.compiled, again.summary_csv, again.per_layer_csv)] == [
        p.read_bytes() for p in kept]


def test_defaults_are_velas_own_and_the_sram_budget_becomes_the_arena_cache():
    from ethosu.vela import architecture_features as af

    from mnv4_deploy.converters.ethos_u import VELA_DEFAULTS, settings_for

    for family, (system_config, memory_mode) in VELA_DEFAULTS.items():
        arch = af.ArchitectureFeatures(vela_config_files=None, system_config=af.ArchitectureFeatures.DEFAULT_CONFIG,
                                       memory_mode=af.ArchitectureFeatures.DEFAULT_CONFIG,
                                       accelerator_config=f"ethos-{family}-256", max_blockdep=3, verbose_config=False,
                                       arena_cache_size=None)
        assert (arch.system_config, arch.memory_mode) == (system_config, memory_mode)
        settings = settings_for(family, ExportOptions(), f"ethos-{family}")
        assert (settings.accelerator, settings.system_config, settings.memory_mode) == (
            f"ethos-{family}-256", system_config, memory_mode)
    budget = settings_for("u55", ExportOptions(ethos_sram="256KiB", ethos_flash="4MB"), "ethos-u55")
    assert budget.sram_budget == budget.arena_cache_size == 262144 and budget.flash_budget == 4_000_000
    assert budget.vela_args()[-2:] == ["--arena-cache-size", "262144"]
    explicit = settings_for("u55", ExportOptions(ethos_sram="1MiB", ethos_arena_cache_size="300000"), "ethos-u55")
    assert explicit.arena_cache_size == 300000 and explicit.sram_budget == 1024 ** 2


def test_system_configs_and_memory_modes_are_those_of_the_installed_vela_ini():
    from mnv4_deploy.converters.ethos_u import MEMORY_MODES, SYSTEM_CONFIGS

    package = Path(list(importlib.util.find_spec("ethosu").submodule_search_locations)[0])  # a namespace package
    ini = configparser.ConfigParser()
    assert ini.read(package / "config_files" / "Arm" / "vela.ini")
    sections = ini.sections()
    assert [s.split(".", 1)[1] for s in sections if s.startswith("System_Config.")] == list(SYSTEM_CONFIGS)
    assert [s.split(".", 1)[1] for s in sections if s.startswith("Memory_Mode.")] == list(MEMORY_MODES)


@pytest.mark.parametrize("options, message", [
    (ExportOptions(ethos_config="u65-256"), "--ethos-config u65-256 names no configuration of target ethos-u55"),
    (ExportOptions(ethos_config="u55-96"), "'u55-96' is not an Ethos-U MAC configuration"),
    (ExportOptions(ethos_config="u55-128,u55-256"), "names two U55 configurations"),
    (ExportOptions(ethos_sram="lots"), "--ethos-sram 'lots' is not a size"),
    (ExportOptions(ethos_system_config="Ethos_U55_Low_End"), "--ethos-system-config 'Ethos_U55_Low_End' is not one of"),
    (ExportOptions(io_dtype="int16"), "--io-dtype int16 is not supported by target ethos-u55"),
    (ExportOptions(layout="nchw"), "needs NHWC input"),
])
def test_bad_options_are_refused_before_any_work(options, message, tmp_path):
    make_images(tmp_path / "calib", 4)
    with pytest.raises(UsageError, match=message):
        export("conv_small", "ethos-u55", tmp_path / "out", img_size=SMALL, calib_data=tmp_path / "calib",
               options=options, **QUIET)
    assert not (tmp_path / "out").exists()


def _float_io_copy(digits_run, tmp_path) -> Path:
    """The run's tflite-int8 artifact: float I/O, so Vela leaves its QUANTIZE and DEQUANTIZE on the CPU."""
    report, out = digits_run
    path = tmp_path / "digits.float-io.tflite"
    shutil.copyfile(out / report.result("tflite-int8").artifact, path)
    return path


def test_check_runs_vela_on_any_tflite_and_names_each_cpu_fallback_with_velas_reason(digits_run, tmp_path):
    from mnv4_deploy.cli import app

    path = _float_io_copy(digits_run, tmp_path)
    shown = CliRunner().invoke(app, ["check", str(path), "--target", "ethos-u55"])
    assert shown.exit_code == 0, shown.output
    assert "operators: " in shown.stdout and "2 on the CPU" in shown.stdout and "QUANTIZE" in shown.stdout
    assert "Unsupported DataType Float32" in shown.stdout or "unsupported DataType Float32" in shown.stdout
    strict = CliRunner().invoke(app, ["check", str(path), "--target", "ethos-u85", "--strict", "--output", "json"])
    assert strict.exit_code == 3
    verdict = json.loads(strict.stdout)
    assert not verdict["fully_mapped"] and verdict["settings"]["accelerator"] == "ethos-u85-256"
    small = CliRunner().invoke(app, ["check", str(path), "--target", "ethos-u55", "--platform", "u55-64",
                                     "--output", "json"])
    assert small.exit_code == 0 and json.loads(small.stdout)["settings"]["accelerator"] == "ethos-u55-64"
    other = CliRunner().invoke(app, ["check", str(path), "--target", "ethos-u55", "--platform", "u85-512"])
    assert other.exit_code == 2 and "u55-32, u55-64, u55-128, u55-256" in other.stderr, other.output
    cpu = {op["op"]: op["reasons"] for op in verdict["cpu_ops"]}
    assert set(cpu) == {"QUANTIZE", "DEQUANTIZE"} and all(r and r[0] for r in cpu.values())
    assert verdict["counts"]["on_cpu"] == 2 and verdict["counts"]["on_npu"] == verdict["counts"]["ops"] - 2
    report, out = digits_run
    mapped = CliRunner().invoke(app, ["check", str(out / report.result("ethos-u55").artifact), "--target",
                                      "ethos-u55", "--strict"])
    assert mapped.exit_code == 0 and "0 on the CPU" in mapped.stdout
    refused = CliRunner().invoke(app, ["check", str(path), "--target", "ethos-u55", "--compiler-log", str(path)])
    assert refused.exit_code == 2 and "runs Vela itself" in refused.stderr


def test_strict_names_the_first_cpu_op_and_a_budget_miss_names_the_sizes(digits_run, tmp_path):
    from mnv4_deploy.converters.ethos_u import MemoryBudgetExceeded, run_vela, settings_for, vela_report
    from mnv4_deploy.converters.ethos_u.target import refuse_if_strict_or_over_budget

    path = _float_io_copy(digits_run, tmp_path)
    settings = settings_for("u55", ExportOptions(ethos_sram="1KiB", ethos_flash="2KiB"), "ethos-u55")
    report = vela_report(path, run_vela(path, tmp_path / "vela", settings, "ethos-u55"), settings)
    with pytest.raises(OpsOffAccelerator, match=r"--strict: Vela left 2 of \d+ ops of ethos-u55 on the CPU; "
                                                r"first #0 QUANTIZE") as strict:
        refuse_if_strict_or_over_budget(report, True, "ethos-u55")
    assert strict.value.exit_code == 3
    with pytest.raises(MemoryBudgetExceeded, match=r"SRAM [\d.]+ KiB > --ethos-sram 1.0 KiB; flash [\d.]+ KiB > "
                                                   r"--ethos-flash 2.0 KiB") as budget:
        refuse_if_strict_or_over_budget(report, False, "ethos-u55")
    assert budget.value.exit_code == 3
    # Vela was told the budget as its arena cache size, and could not get below its minimum
    assert report.to_dict()["memory"]["arena_cache_size"] == 1024 < report.sram_bytes


@pytest.mark.slow  # a second plan and integer conversion (~25 s); the refusal itself is judged above by default
def test_an_export_over_the_sram_budget_fails_with_exit_3_and_leaves_nothing(trained_digits, digit_folders, tmp_path):
    from mnv4_deploy.quant.threads import single_thread

    out, net = tmp_path / "out", trained_digits
    with single_thread():  # 32x32 tensors (target_checks.export_digits); no labeled set: it fails after Vela
        report = export(net.model, "ethos-u55", out, contract=net.contract, name="digits", calib_data=digit_folders[0],
                        calib_size=32, options=ExportOptions(ethos_sram="2KiB"), **QUIET)
    result = report.result("ethos-u55")
    assert result.status == "export_failed" and result.exit_code == report.exit_code == 3
    assert result.reason.startswith("ethos-u55 (ethos-u55-256, Shared_Sram) does not fit: SRAM ")
    assert "> --ethos-sram 2.0 KiB" in result.reason and "\n" not in result.reason
    assert not [p.name for p in out.iterdir() if "ethos" in p.name or p.name.startswith(TMP_PREFIX)]


def test_uint8_io_stays_on_the_npu(digits_run, tmp_path):
    """--io-dtype uint8 (camera pixels): the uint8 -> int8 requantization runs on the NPU too."""
    from mnv4_deploy.converters.ethos_u import ETHOS_U55
    from mnv4_deploy.converters.tflite.io_types import set_io_dtype

    report, out = digits_run
    path = tmp_path / "digits.uint8.tflite"
    shutil.copyfile(out / report.result("ethos-u55").artifact, path)
    set_io_dtype(path, "uint8")
    verdict = ETHOS_U55.check(path)
    assert verdict["fully_mapped"] and verdict["counts"]["ops"] == len(_ops(path))
    assert "QUANTIZE" in _ops(path)


def test_the_compiled_model_is_refused_here_in_one_line(digits_run, trained_digits):
    from mnv4_deploy.cli import app

    report, out = digits_run
    compiled = out / report.result("ethos-u55").metadata["vela_outputs"][0]
    result = CliRunner().invoke(app, ["inspect", str(compiled)])
    assert result.exit_code == 2 and "uses the custom op 'ethos-u'" in result.stderr
    assert "\n" not in result.stderr.strip()
    again = CliRunner().invoke(app, ["check", str(compiled), "--target", "ethos-u55"])
    assert again.exit_code == 2 and "is already compiled by Vela" in again.stderr


def test_the_integer_artifact_validates_again(digits_run, trained_digits):
    from mnv4_deploy.pipeline import validate_artifact

    report, out = digits_run
    net = trained_digits
    again = validate_artifact(out / report.result("ethos-u85").artifact, net.model, contract=net.contract,
                              name="digits", golden_count=3, **QUIET)
    assert again.exit_code == 0 and again.results[0].target == "ethos-u85"


def test_missing_vela_names_the_extra(monkeypatch):
    from mnv4_deploy.converters.ethos_u import ETHOS_U65

    check_missing_backend_names_the_extra(monkeypatch, ETHOS_U65, "ethosu", "ethos")


def test_sizes_parse_in_binary_and_decimal_units():
    from mnv4_deploy.converters.ethos_u import parse_size

    assert [parse_size(t, "--x") for t in ("512KiB", "1MiB", "2MB", "262144", "1.5 MiB", None)] == [
        524288, 1048576, 2_000_000, 262144, 1572864, None]
    for bad in ("0", "-1KiB", "1GB", "KiB"):
        with pytest.raises(UsageError, match="is not a size"):
            parse_size(bad, "--x")


# ---- full size (slow) --------------------------------------------------------------------------
@pytest.mark.slow  # conv_small at 224 px: ~1.5 min of plan + conversion on 2 cores
def test_conv_small_at_full_size_runs_wholly_on_the_u55_and_u85(tmp_path):
    make_images(tmp_path / "calib", 16, size=(256, 256))
    said: list[str] = []
    report = export("conv_small", "ethos-u55,ethos-u85", tmp_path / "out", golden_count=3,
                    calib_data=tmp_path / "calib", options=ExportOptions(strict=True, ethos_sram="2MiB"),
                    log=said.append)
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    # no tflite-int8 in the run: the integer model is converted once for both targets
    assert sum(line.startswith("full-integer tflite:") for line in said) == 1
    for name in ("ethos-u55", "ethos-u85"):
        assert report.result(name).metadata["full_integer_source"] == "converted for this run's accelerator targets"
        vela = report.result(name).metadata["vela"]
        assert vela["fully_mapped"] and vela["counts"]["on_npu"] >= 59
        assert vela["memory"]["sram_bytes"] <= 2 * 1024 ** 2 and vela["memory"]["offchip_bytes"] > 3e6
        assert vela["macs"] > 150e6 and vela["inferences_per_second"] > 10


@pytest.mark.slow  # hybrid_medium at 224 px: ~4 min of plan + conversion on 2 cores
def test_hybrid_attention_lands_on_the_u85_npu(tmp_path):
    """Mobile MQA: q.k and attn.v (FULLY_CONNECTED on two activations), SOFTMAX and the head TRANSPOSEs."""
    make_images(tmp_path / "calib", 16, size=(256, 256))
    report = export("hybrid_medium", "ethos-u85", tmp_path / "out", golden_count=3, calib_data=tmp_path / "calib",
                    options=ExportOptions(strict=True), **QUIET)
    result = report.result("ethos-u85")
    assert result.status == "passed", (result.reason, result.failures)
    histogram = result.metadata["op_histogram"]
    assert histogram.get("SOFTMAX", 0) >= 8 and histogram.get("TRANSPOSE", 0) > 0
    vela = result.metadata["vela"]
    assert vela["fully_mapped"] and vela["counts"]["on_npu"] == sum(histogram.values())
