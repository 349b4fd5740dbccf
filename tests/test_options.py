"""Options owned by targets: declarations, their agreement, ExportOptions, and the core's refusals."""
from __future__ import annotations

import pickle
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from mnv4_deploy.errors import UsageError
from mnv4_deploy.options import OptionConflict, TargetOption, merge_declarations
from mnv4_deploy.registry import (CORE_OPTIONS, ENTRY_POINT_GROUP, Converter, ExportOptions, TargetInfo,
                                  declared_options, find_targets, load_target, option_owners, target_rows)

LAYOUT = TargetOption("layout", str, "nhwc", "input layout", panel="TFLite", choices=("nhwc", "nchw"))


def test_agreeing_declarations_merge_and_the_first_gives_help_and_panel():
    same = TargetOption("layout", str, "nhwc", "other words", panel="Elsewhere", choices=("nhwc", "nchw"))
    merged = merge_declarations([("tflite", LAYOUT), ("plugin", same)])
    assert merged == {"layout": LAYOUT}


@pytest.mark.parametrize("other, message", [
    (TargetOption("layout", str, "nchw", "h", panel="P", choices=("nhwc", "nchw")),
     "targets tflite and plugin declare option layout differently: --layout (str, default 'nhwc', choices nhwc, "
     "nchw) vs --layout (str, default 'nchw', choices nhwc, nchw)"),
    (TargetOption("layout", bool, False, "h", panel="P"), "declare option layout differently"),
    (TargetOption("fold", bool, True, "h", panel="P"), "target plugin declares option --fold, which the core owns"),
    (TargetOption("input_layout", str, "nhwc", "h", panel="P", flag="--layout"),
     "options layout and input_layout both use the flag --layout"),
])
def test_disagreeing_declarations_are_refused_naming_both(other, message):
    with pytest.raises(OptionConflict) as err:
        merge_declarations([("tflite", LAYOUT), ("plugin", other)], CORE_OPTIONS)
    assert message in str(err.value)


def test_declarations_are_checked_as_data():
    with pytest.raises(OptionConflict, match="not a Python identifier"):
        TargetOption("io-dtype", str, "x", "h", panel="P")
    with pytest.raises(OptionConflict, match="is not one of bool, int, float, str"):
        TargetOption("shape", tuple, (), "h", panel="P")
    assert TargetOption("io_dtype", str, "x", "h", panel="P").flag == "--io-dtype"


@pytest.mark.parametrize("option, value, message", [
    (LAYOUT, "NHWC", "--layout 'NHWC' is not one of nhwc, nchw"),
    (LAYOUT, 3, "--layout 3: expected type str"),
    (TargetOption("opset", int, 17, "h", panel="ONNX"), True, "--opset True: expected type int"),
    (TargetOption("archive", bool, False, "h", panel="BPU"), 1, "--archive 1: expected type bool"),
])
def test_a_value_of_the_wrong_type_or_outside_the_choices_is_one_line(option, value, message):
    with pytest.raises(UsageError) as err:
        option.check_value(value)
    assert str(err.value) == message
    option.check_value(option.default)


def test_every_builtin_target_declares_its_options_as_data():
    declared = declared_options()
    assert set(declared) >= {"opset", "layout", "io_dtype", "image_input", "min_target", "strict", "bpu_input",
                             "archive", "openvino_fp16_weights"}
    assert not set(declared) & set(CORE_OPTIONS)
    owners = option_owners()
    ethos = {"ethos-u55", "ethos-u65", "ethos-u85"}
    rknn = {"rknn", "rknn-int8"}
    assert set(owners["strict"]) == {"edgetpu", "bpu-x3", "bpu-x5"} | ethos | rknn  # one option, four families, one meaning
    assert set(owners["io_dtype"]) == {"tflite-int8", "edgetpu"} | ethos
    assert {"onnx", "onnx-int8", "bpu-x5"} <= set(owners["opset"])
    for name in find_targets():
        info = load_target(name).info
        assert all(isinstance(o, TargetOption) and o.panel for o in info.options)
    assert {n for n in find_targets() if load_target(n).info.dynamic_batch} == {"onnx", "onnx-fp16"}
    rows = {r["target"]: r for r in target_rows()}  # `mnv4-deploy targets --output json` says the same
    assert rows["edgetpu"]["options"] == ["--io-dtype", "--strict"] and rows["executorch"]["options"] == []
    assert rows["onnx"]["dynamic_batch"] is True and rows["tflite"]["dynamic_batch"] is False


def test_export_options_hold_defaults_and_refuse_unknown_names():
    opts = ExportOptions(io_dtype="int8")
    assert opts.io_dtype == "int8" and opts.layout == "nhwc" and opts.min_target is None and opts.fold is True
    assert opts == ExportOptions.of({"io_dtype": "int8"}) and ExportOptions.of(opts) is opts
    assert ExportOptions.of(None) == ExportOptions() and opts != ExportOptions()
    assert opts.changed() == ["io_dtype"] and ExportOptions(fold=False).changed() == ["fold"]
    assert pickle.loads(pickle.dumps(opts)) == opts  # build --jobs hands options to worker processes
    assert opts.to_dict()["io_dtype"] == "int8" and set(opts.to_dict()) == set(CORE_OPTIONS) | set(declared_options())
    with pytest.raises(AttributeError, match="frozen"):
        opts.layout = "nchw"
    with pytest.raises(AttributeError, match="no option 'colour'"):
        opts.colour
    with pytest.raises(UsageError, match="unknown export option 'io_dype' .did you mean io_dtype"):
        ExportOptions(io_dype="int8")


@pytest.fixture
def conflicting_plugin(monkeypatch):
    module = types.ModuleType("conflicting_plugin")

    class Plugin(Converter):
        info = TargetInfo(name="npu", format="npu", precision="fp32", suffix=".npu", description="d", extra="npu",
                          options=(TargetOption("layout", str, "nchw", "h", panel="NPU"),))
        convert = runner = None

    module.PLUGIN = Plugin()
    monkeypatch.setitem(sys.modules, "conflicting_plugin", module)
    return {name: EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
            for name, value in (("npu", "conflicting_plugin:PLUGIN"), ("tflite", "mnv4_deploy.converters.tflite:TFLITE_FP32"))}


def test_a_plugin_redeclaring_a_builtin_option_differently_is_refused(conflicting_plugin):
    with pytest.raises(OptionConflict, match="targets npu and tflite declare option layout differently"):
        declared_options(conflicting_plugin)


def test_export_names_an_option_conflict_and_other_commands_still_work(monkeypatch):
    from typer.testing import CliRunner

    import mnv4_deploy.cli as cli
    import mnv4_deploy.registry as registry

    conflict = OptionConflict("targets npu and tflite declare option layout differently")
    monkeypatch.setattr(registry, "declared_options", lambda: (_ for _ in ()).throw(conflict))
    assert cli._target_flags() == ([], conflict)
    monkeypatch.setattr(cli, "_OPTIONS_PROBLEM", conflict)
    result = CliRunner().invoke(cli.app, ["export", "--to", "onnx"])
    assert result.exit_code == 1 and "error: targets npu and tflite declare option layout" in result.stderr
    assert CliRunner().invoke(cli.app, ["targets"]).exit_code == 0


@pytest.mark.parametrize("targets, options, message", [
    ("onnx,coreml-w8", {"dynamic_batch": True},
     "option --dynamic-batch is not used by target coreml-w8: it exports a fixed batch of 1"),
    ("executorch", {"dynamic_batch": True}, "option --dynamic-batch is not used by target executorch"),
    ("onnx-int8", {"fold": False}, "option --no-fold is not used by target(s) onnx-int8"),
    ("onnx", {"io_dtype": "int8"}, "option --io-dtype is not used by target(s) onnx"),
    ("bpu-x5", {"bpu_input": "yuv"}, "--bpu-input 'yuv' is not one of nv12, rgb, bgr, featuremap"),
])
def test_the_core_refuses_what_no_requested_target_declares(targets, options, message):
    from mnv4_deploy.pipeline import resolve_converters

    with pytest.raises(UsageError) as err:
        resolve_converters(targets, options)
    assert message in str(err.value)


def test_a_mapping_of_options_is_accepted_by_the_api():
    from mnv4_deploy.pipeline import resolve_converters

    names = [c.info.name for c in resolve_converters("onnx,onnx-int8", {"fold": False, "opset": 13})]
    assert names == ["onnx", "onnx-int8"]
    assert [c.info.name for c in resolve_converters("onnx", {"dynamic_batch": True})] == ["onnx"]


def _deploy_yaml(tmp_path, targets: str, options: str) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(f"models: [conv_small]\ntargets: [{targets}]\n{options}\n")
    return path


def test_a_deploy_config_takes_target_options_and_each_export_gets_those_its_targets_honour(tmp_path):
    from mnv4_deploy.benchmark import Selection, run_model
    from mnv4_deploy.build import load_config
    from mnv4_deploy.progress import QUIET, Progress

    spec = load_config(_deploy_yaml(tmp_path, "onnx, tflite", "options: {layout: nchw}"), check_data=False)
    assert spec.options == {"layout": "nchw"} and spec.settings()["options"] == {"layout": "nchw"}
    seen = {}

    def fake_export(model, targets, out, *, options, **kwargs):
        seen[tuple(targets)] = options
        raise UsageError("stop here")

    for targets in (["onnx"], ["onnx", "tflite"]):
        with pytest.raises(UsageError, match="stop here"):
            run_model("conv_small", spec, Selection(targets, {}, targets), tmp_path / "out", Progress(mode=QUIET),
                      export=fake_export)
    assert seen == {("onnx",): {}, ("onnx", "tflite"): {"layout": "nchw"}}


@pytest.mark.parametrize("targets, options, message", [
    ("onnx, tflite", "options: {io_dype: int8}", "options: unknown export option 'io_dype' (did you mean io_dtype?)"),
    ("onnx", "options: {io_dtype: int8}",
     "options.io_dtype is not used by any target of the config (targets that use it: edgetpu, ethos-u55, ethos-u65, "
     "ethos-u85, tflite-int8)"),
    ("tflite", "options: {layout: NHWC}", "options.layout: --layout 'NHWC' is not one of nhwc, nchw"),
    ("tflite", "options: [layout]", "options must be a mapping of target options"),
])
def test_a_deploy_config_with_a_bad_option_is_one_line(tmp_path, targets, options, message):
    from mnv4_deploy.build import load_config

    with pytest.raises(UsageError) as err:
        load_config(_deploy_yaml(tmp_path, targets, options), check_data=False)
    assert message in str(err.value)
