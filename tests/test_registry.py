"""Target discovery through entry points, parametrized over the registry."""
from __future__ import annotations

import re
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from mnv4_deploy.errors import BackendMissing, UsageError
from mnv4_deploy.registry import (ENTRY_POINT_GROUP, TargetInfo, TargetLoadError, find_targets, load_target,
                                  parse_targets, target_rows)

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


@pytest.fixture
def fake_module(monkeypatch):
    """A third-party converter module, importable as `fake_plugin`."""
    from converters.onnx import ONNX_FP32

    module = types.ModuleType("fake_plugin")

    class Fake:
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
    assert all(ep.value.startswith("converters.") for ep in eps.values())


def test_third_party_targets_load_like_builtins(fake_module):
    eps = find_targets([_ep("fake-npu", "fake_plugin:FAKE"), _ep("onnx", "converters.onnx:ONNX_FP32")])
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


@pytest.mark.parametrize("name", sorted(find_targets()))
def test_every_registered_target_has_a_test(name):
    """A target is only done when some test file exercises it by name."""
    pattern = re.compile(rf"""["'\s,]{re.escape(name)}["',]""")
    users = [p.name for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name and pattern.search(p.read_text())]
    assert users, f"no test mentions target {name!r}"


@pytest.mark.parametrize("name", sorted(find_targets()))
def test_targets_declare_consistent_data(name):
    info = load_target(name).info
    assert info.name == name and info.suffix.startswith(".") and info.description
    assert info.precision in ("fp32", "fp16", "int8") and info.extra


def test_readme_targets_table_matches_the_registry():
    text = (REPO / "README.md").read_text()
    table = text.split("<!-- targets-table -->")[1]
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([\w-]+)` \| ([^|]+)\|", table, re.M)}
    registry = {name: load_target(name).info.precision for name in find_targets()}
    assert set(rows) == set(registry), "README targets table and registry differ"
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
