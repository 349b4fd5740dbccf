"""Target discovery through entry points, parametrized over the registry."""
from __future__ import annotations

import re
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from mnv4_deploy.errors import BackendMissing, UsageError
from mnv4_deploy.registry import (ENTRY_POINT_GROUP, Converter, TargetInfo, TargetLoadError, find_targets,
                                  load_target, parse_targets, target_rows)

REPO = Path(__file__).resolve().parents[1]


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


@pytest.fixture
def fake_module(monkeypatch):
    """A third-party converter module, importable as `fake_plugin`."""
    from mnv4_deploy.converters.onnx import ONNX_FP32

    module = types.ModuleType("fake_plugin")

    class Fake(Converter):
        info = TargetInfo(name="fake-npu", format="npu", precision="int8", suffix=".npu", description="fake",
                          backend_modules=("surely_not_installed_backend",), extra="npu")
        convert = ONNX_FP32.convert
        runner = ONNX_FP32.runner

    module.FAKE = Fake()
    module.NOT_A_CONVERTER = object()
    module.WRONG_NAME = Fake()
    monkeypatch.setitem(sys.modules, "fake_plugin", module)
    return module


def test_builtin_targets_are_found_through_the_entry_point_group():
    eps = find_targets()
    assert {"onnx", "onnx-fp16"} <= set(eps)
    assert all(ep.value.startswith("mnv4_deploy.converters.") for ep in eps.values())


def test_third_party_targets_load_like_builtins(fake_module):
    eps = find_targets([_ep("fake-npu", "fake_plugin:FAKE"), _ep("onnx", "mnv4_deploy.converters.onnx:ONNX_FP32")])
    assert list(eps) == ["fake-npu", "onnx"]
    assert load_target("fake-npu", eps).info.format == "npu"
    row = next(r for r in target_rows(eps) if r["target"] == "fake-npu")
    assert row["installed"] is False and row["missing"] == ["surely_not_installed_backend"]
    with pytest.raises(BackendMissing, match=r"mnv4-deploy\[npu\]") as err:
        load_target("fake-npu", eps).info.require_backends()
    assert err.value.exit_code == 5


@pytest.mark.parametrize("value, message", [
    ("fake_plugin:NOT_A_CONVERTER", "is not a Converter"),
    ("no_such_module_anywhere:X", "failed to load: ModuleNotFoundError"),
])
def test_a_broken_plugin_is_one_typed_error_naming_it(fake_module, value, message):
    eps = find_targets([_ep("broken", value)])
    with pytest.raises(TargetLoadError, match=message) as err:
        load_target("broken", eps)
    assert "broken" in str(err.value)
    assert target_rows(eps)[0]["installed"] is False  # listing never crashes


def test_a_plugin_declaring_another_name_is_refused(fake_module):
    with pytest.raises(TargetLoadError, match="declares itself as 'fake-npu'"):
        load_target("other", find_targets([_ep("other", "fake_plugin:WRONG_NAME")]))


def test_target_lists_parse_and_unknown_names_suggest():
    assert parse_targets("onnx, onnx-fp16,onnx") == ["onnx", "onnx-fp16"]
    assert set(parse_targets("all")) == set(find_targets())
    with pytest.raises(UsageError, match="did you mean onnx-fp16"):
        parse_targets("onnx-fp61")
    with pytest.raises(UsageError, match="no target given"):
        parse_targets(" , ")


# ---- every registered target, exported and judged (the smallest export each takes) ----------
# One export() call per group shares the model, calibration and int8 plan. The default run
# exports one target per artifact format plus onnx-int8 (emulation parity); the rest is slow
# (all 18 built-in targets in one call: 82 s on the loaded 2-core machine).
COVERAGE_SIZE = 32  # the smallest --img-size; conv_small passes every built-in target there
COVERAGE_DEFAULT_EXTRA = {"onnx-int8"}  # the cheapest int8 target, so the default run judges an emulation


def _installed_targets() -> list[str]:
    return [n for n in sorted(find_targets()) if not load_target(n).info.missing_backends()]


def _default_coverage() -> set[str]:
    """Per artifact format its first fp32 target (else its first), plus COVERAGE_DEFAULT_EXTRA."""
    chosen: dict[str, str] = {}
    for name in _installed_targets():
        info = load_target(name).info
        if info.format not in chosen or (info.precision == "fp32"
                                         and load_target(chosen[info.format]).info.precision != "fp32"):
            chosen[info.format] = name
    return set(chosen.values()) | (COVERAGE_DEFAULT_EXTRA & set(_installed_targets()))


def _coverage_cases() -> list:
    default = _default_coverage()
    cases = []
    for name in sorted(find_targets()):
        marks = [] if name in default else [pytest.mark.slow]
        cases.append(pytest.param(name, marks=marks, id=name))
    return cases


def _export_all(root: Path, targets: list[str]) -> dict[str, dict]:
    """One export of `targets` (conv_small, 32 px, 8 calibration images); report.json rows by target."""
    import json

    from conftest import make_images

    from mnv4_deploy import export

    make_images(root / "calib", 8)
    export("conv_small", targets, root / "out", img_size=COVERAGE_SIZE, golden_count=3, calib_data=root / "calib",
           calib_size=8, log=lambda _: None)
    report = json.loads((root / "out" / "report.json").read_text())
    rows = {row["target"]: row for row in report["results"]}
    assert set(rows) == set(targets), "report.json does not hold one row per requested target"
    for row in rows.values():
        row["artifact_path"] = root / "out" / row["artifact"] if row["artifact"] else None
    return rows


@pytest.fixture(scope="module")
def coverage_exports(tmp_path_factory):
    """Target -> its report.json row; each group (default, slow) is exported once, when first asked for."""
    rows: dict[str, dict] = {}

    def row(name: str) -> dict:
        if name not in rows:
            default = _default_coverage()
            group = sorted(default) if name in default else sorted(set(_installed_targets()) - default)
            rows.update(_export_all(tmp_path_factory.mktemp("coverage"), group))
        return rows[name]

    return row


def test_the_default_coverage_run_spans_every_artifact_format():
    formats = {load_target(n).info.format for n in _installed_targets()}
    default = _default_coverage()
    assert {load_target(n).info.format for n in default} == formats
    assert any(load_target(n).info.precision == "int8" for n in default), "no int8 target judged by default"


def _missed_bounds(parity: dict, bounds: dict) -> list[str]:
    """The bounds `parity` misses, by name (bounds as the recipe states them)."""
    missed = []
    if parity["cosine"] < bounds["min_cosine"]:
        missed.append("min_cosine")
    if parity["max_rel_abs"] > bounds["max_rel_abs"]:
        missed.append("max_rel_abs")
    if parity["sqnr_db"] < bounds["min_sqnr_db"]:
        missed.append("min_sqnr_db")
    if parity["top1_agreement"] < bounds["min_top1_agreement"]:
        missed.append("min_top1_agreement")
    return missed


@pytest.mark.parametrize("name", _coverage_cases())
def test_every_registered_target_exports_and_passes_parity(coverage_exports, name):
    """A target is only done when its smallest export passes: parity, and for int8 its emulation too."""
    missing = load_target(name).info.missing_backends()
    if missing:
        pytest.skip(f"{name}: backend not installed ({', '.join(missing)})")
    row = coverage_exports(name)
    assert row["status"] == "passed" and row["exit_code"] == 0, (row["status"], row["reason"], row["failures"])
    assert row["artifact_path"] is not None and row["artifact_path"].exists(), f"{name}: no artifact on disk"
    assert not _missed_bounds(row["parity"], row["thresholds"]), (row["parity"], row["thresholds"])
    if row["precision"] == "int8":
        assert row["emulation_parity"] is not None, f"{name}: int8 artifact not judged against its emulation"
        assert not _missed_bounds(row["emulation_parity"], row["emulation_thresholds"]), row["emulation_parity"]


@pytest.mark.parametrize("name", sorted(find_targets()))
def test_targets_declare_consistent_data(name):
    info = load_target(name).info
    assert info.name == name and info.suffix.startswith(".") and info.description
    assert info.precision in ("fp32", "fp16", "int8") and info.extra


@pytest.mark.parametrize("page", ["README.md", "docs/targets.md"])
def test_targets_tables_match_the_registry(page):
    text = (REPO / page).read_text()
    table = text.split("<!-- targets-table -->")[1]
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([\w-]+)` \| ([^|]+)\|", table, re.M)}
    registry = {name: load_target(name).info.precision for name in find_targets()}
    assert set(rows) == set(registry), f"{page} targets table and registry differ"
    assert all(rows[n] == registry[n] for n in rows)


@pytest.mark.parametrize("options, targets, flag", [
    (dict(image_input=True), "onnx", "--image-input"),
    (dict(layout="nchw"), "onnx,onnx-fp16", "--layout"),
    (dict(min_target="iOS17"), "onnx", "--min-target"),
])
def test_an_option_no_requested_target_honours_is_refused(options, targets, flag):
    from mnv4_deploy.pipeline import resolve_converters
    from mnv4_deploy.registry import ExportOptions

    with pytest.raises(UsageError, match=f"option {flag} is not used by target"):
        resolve_converters(targets, ExportOptions(**options))


def test_an_option_honoured_by_one_requested_target_is_accepted():
    from mnv4_deploy.pipeline import resolve_converters
    from mnv4_deploy.registry import ExportOptions

    names = [c.info.name for c in resolve_converters("onnx,tflite", ExportOptions(layout="nchw"))]
    assert names == ["onnx", "tflite"]
