"""The `hb_mapper makertbin` YAML, rendered from the preprocessing contract, and its schema.

The board feeds raw pixels (NV12 by default); the toolchain compiles `(pixel - mean) * scale`
into the model, so `mean_value`/`scale_value` must come from the same `Preprocess` contract
that calibration and evaluation use. A hand-typed mean is how the published X5 numbers ended up
3 points under timm's. The text is rendered by hand in a fixed key order so that two renders
of the same inputs are byte-identical (bundle archives hash the same).

Keys, enums and the train/runtime type table follow D-Robotics' "PTQ principles and steps"
(yaml parameter tables and "Conversion internal process"):
https://github.com/D-Robotics/rdk_doc/blob/main/i18n/en/docusaurus-plugin-content-docs/current/07_Advanced_development/04_toolchain_development/intermediate/ptq_process.md
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from mnv4_deploy.errors import UsageError
from mnv4_deploy.preprocess import Preprocess

from .march import load_march_table

INPUT_TYPES_RT = ("nv12", "yuv444", "rgb", "bgr", "gray", "featuremap")
INPUT_TYPES_TRAIN = ("rgb", "bgr", "yuv444", "gray", "featuremap")
LAYOUTS = ("NCHW", "NHWC")
NORM_TYPES = ("data_mean_and_scale", "data_mean", "data_scale", "no_preprocess")
INPUT_SPACES = ("regular", "bt601_video")  # NV12 full range [0,255] | BT.601 video range [16,235]
CAL_DATA_TYPES = ("float32", "uint8")
CALIBRATION_TYPES = ("default", "mix", "kl", "max", "load", "skip")
COMPILE_MODES = ("latency", "bandwidth")
OPTIMIZE_LEVELS = ("O0", "O1", "O2", "O3")
OUTPUT_OPTIMIZATIONS = ("set_model_output_int8", "set_model_output_int16")
INPUT_SOURCES = ("ddr", "pyramid", "resizer")

# input_type_rt -> the input_type_train values the toolchain converts it to ("Conversion
# internal process" table): every other pairing is refused by hb_mapper.
RT_TO_TRAIN = {
    "nv12": ("yuv444", "rgb", "bgr"),
    "yuv444": ("yuv444", "rgb", "bgr"),
    "rgb": ("rgb", "bgr"),
    "bgr": ("rgb", "bgr"),
    "gray": ("gray",),
    "featuremap": ("featuremap",),
}

_TEXT = (str,)
_NUMBER_OR_TEXT = (str, int, float)
# section -> key -> allowed python types, or a tuple of allowed string values (';'-separated
# lists of them are accepted: one value per model input).
SCHEMA: dict[str, dict[str, Any]] = {
    "model_parameters": {
        "onnx_model": _TEXT, "caffe_model": _TEXT, "prototxt": _TEXT, "march": None,  # march: from the table
        "output_model_file_prefix": _TEXT, "working_dir": _TEXT, "layer_out_dump": (bool,),
        "output_nodes": _TEXT, "remove_node_type": _TEXT, "remove_node_name": _TEXT,
        "set_node_data_type": _TEXT, "debug_mode": ("dump_calibration_data",), "node_info": (str, dict),
    },
    "input_parameters": {
        "input_name": _TEXT, "input_type_train": INPUT_TYPES_TRAIN, "input_layout_train": LAYOUTS,
        "input_type_rt": INPUT_TYPES_RT, "input_layout_rt": LAYOUTS, "input_space_and_range": INPUT_SPACES,
        "input_shape": _TEXT, "input_batch": (int,), "norm_type": NORM_TYPES,
        "mean_value": _NUMBER_OR_TEXT, "scale_value": _NUMBER_OR_TEXT,
    },
    "calibration_parameters": {
        "cal_data_dir": _TEXT, "cal_data_type": CAL_DATA_TYPES, "preprocess_on": (bool,),
        "calibration_type": CALIBRATION_TYPES, "max_percentile": (int, float), "per_channel": (bool,),
        "run_on_cpu": _TEXT, "run_on_bpu": _TEXT, "optimization": OUTPUT_OPTIMIZATIONS,
    },
    "compiler_parameters": {
        "compile_mode": COMPILE_MODES, "debug": (bool,), "core_num": (int,), "optimize_level": OPTIMIZE_LEVELS,
        "input_source": (dict, str), "max_time_per_fc": (int,), "jobs": (int,),
    },
    "custom_op": {"custom_op_method": ("register",), "op_register_files": _TEXT, "custom_op_dir": _TEXT},
}
REQUIRED = {
    "model_parameters": ("march", "output_model_file_prefix"),
    "input_parameters": ("input_type_train", "input_layout_train", "input_type_rt", "norm_type"),
    "calibration_parameters": ("calibration_type",),
    "compiler_parameters": ("compile_mode", "optimize_level"),
}


def _values(raw: Any) -> list[str]:
    """'nv12; nv12' -> ['nv12', 'nv12']: hb_mapper separates per-input values with ';'."""
    return [part.strip() for part in str(raw).split(";") if part.strip()]


def _check_value(section: str, key: str, value: Any, allowed: Any) -> None:
    where = f"{section}.{key}"
    if isinstance(allowed, tuple) and allowed and all(isinstance(a, str) for a in allowed):
        bad = [v for v in _values(value) if v not in allowed] if isinstance(value, str) else [value]
        if bad or not _values(value):
            raise UsageError(f"hb_mapper config: {where} = {value!r} is not one of {', '.join(allowed)}")
        return
    if isinstance(value, bool) and bool not in allowed:
        raise UsageError(f"hb_mapper config: {where} must be {'/'.join(t.__name__ for t in allowed)}, got {value!r}")
    if not isinstance(value, allowed):
        raise UsageError(f"hb_mapper config: {where} must be {'/'.join(t.__name__ for t in allowed)}, got {value!r}")


def validate_hb_config(config: Mapping[str, Any], marches: Sequence[str] | None = None) -> None:
    """Refuse what hb_mapper would refuse: unknown sections/keys, bad enum values, missing
    required keys, runtime/train input types it cannot convert between.

    `marches` defaults to the names in the shipped march table. Raises `UsageError` naming the
    key and the allowed values.
    """
    march_names = tuple(sorted(load_march_table())) if marches is None else tuple(marches)
    if not isinstance(config, Mapping):
        raise UsageError("hb_mapper config: must be a mapping of parameter groups")
    for section in config:
        if section not in SCHEMA:
            raise UsageError(f"hb_mapper config: unknown section {section}", f"allowed: {', '.join(SCHEMA)}")
    for section in REQUIRED:
        if section not in config:
            raise UsageError(f"hb_mapper config: missing section {section}", "all four parameter groups must exist")
    for section, body in config.items():
        if not isinstance(body, Mapping):
            raise UsageError(f"hb_mapper config: {section} must be a mapping")
        for key, value in body.items():
            if key not in SCHEMA[section]:
                raise UsageError(f"hb_mapper config: unknown key {section}.{key}",
                                 f"allowed in {section}: {', '.join(SCHEMA[section])}")
            allowed = march_names if (section, key) == ("model_parameters", "march") else SCHEMA[section][key]
            _check_value(section, key, value, allowed)
        for key in REQUIRED.get(section, ()):
            if key not in body:
                raise UsageError(f"hb_mapper config: missing key {section}.{key}")
    _check_cross_fields(config)


def _check_cross_fields(config: Mapping[str, Any]) -> None:
    inputs = config["input_parameters"]
    rts, trains = _values(inputs["input_type_rt"]), _values(inputs["input_type_train"])
    if len(rts) != len(trains):
        raise UsageError("hb_mapper config: input_parameters.input_type_rt and input_type_train list "
                         f"{len(rts)} and {len(trains)} inputs")
    for rt, train in zip(rts, trains):
        if train not in RT_TO_TRAIN[rt]:
            raise UsageError(f"hb_mapper config: input_parameters.input_type_rt = {rt!r} cannot feed "
                             f"input_type_train = {train!r}", f"{rt} converts to: {', '.join(RT_TO_TRAIN[rt])}")
    if "input_space_and_range" in inputs and "nv12" not in rts:
        raise UsageError("hb_mapper config: input_parameters.input_space_and_range applies only to "
                         "input_type_rt = 'nv12'")
    for norm in _values(inputs["norm_type"]):
        for part, key in (("mean", "mean_value"), ("scale", "scale_value")):
            if part in norm and key not in inputs:
                raise UsageError(f"hb_mapper config: norm_type {norm!r} needs input_parameters.{key}")
    source = config["compiler_parameters"].get("input_source")
    sources = source.values() if isinstance(source, Mapping) else ([source] if source is not None else [])
    for value in sources:
        if value not in INPUT_SOURCES:
            raise UsageError(f"hb_mapper config: compiler_parameters.input_source value {value!r} is not one of "
                             f"{', '.join(INPUT_SOURCES)}")
    core_num = config["compiler_parameters"].get("core_num")
    if core_num is not None and core_num not in (1, 2):
        raise UsageError(f"hb_mapper config: compiler_parameters.core_num = {core_num!r} is not one of 1, 2")
    calib = config["calibration_parameters"]
    if calib["calibration_type"] not in ("load", "skip") and "cal_data_dir" not in calib:
        raise UsageError("hb_mapper config: calibration_parameters.cal_data_dir is required unless "
                         "calibration_type is load or skip")


# ---- rendering --------------------------------------------------------------------------
class _Raw(str):
    """A value written as-is (unquoted), like the published `mean_value: 123.675 116.28 103.53`."""


def format_numbers(values: Sequence[float]) -> str:
    """Space-separated, 7 significant digits (what float32 holds): 0.017124753... -> 0.01712475."""
    for v in values:
        if not math.isfinite(v):
            raise UsageError(f"mean/scale value {v!r} is not a finite number")
    return " ".join(format(float(v), ".7g") for v in values)


def _scalar(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def hb_config_dict(
    preprocess: Preprocess,
    onnx_model: str,
    march: str,
    *,
    input_name: str = "",
    input_shape: Sequence[int] | None = None,
    input_type_rt: str = "nv12",
    cal_data_dir: str = "./calibration_data_rgb_f32",
    compile_mode: str = "latency",
    optimize_level: str = "O3",
    output_model_file_prefix: str | None = None,
    working_dir: str | None = None,
    input_space_and_range: str | None = None,
    calibration_type: str = "default",
) -> dict[str, dict[str, Any]]:
    """The config as an ordered mapping (the order `render_hb_config` writes), validated.

    `input_type_train` and the layout come from the contract; for `featuremap` input the model
    takes already-normalized tensors, so norm_type is `no_preprocess` and no mean/scale is set.
    `input_space_and_range` is written only when given (the toolchain's default is `regular`).
    """
    shape = tuple(int(d) for d in (input_shape if input_shape is not None else preprocess.input_shape))
    if len(shape) != 4 or shape[0] != 1:
        raise UsageError(f"input shape {shape} must be 4-D with batch 1 (hb_mapper takes fixed 1xCxHxW)")
    height, width = (shape[2], shape[3]) if preprocess.layout == "NCHW" else (shape[1], shape[2])
    prefix = output_model_file_prefix or f"{Path(onnx_model).stem}_{height}x{width}_{input_type_rt}"
    featuremap = input_type_rt == "featuremap"
    inputs: dict[str, Any] = {
        "input_name": input_name,
        "input_type_rt": input_type_rt,
        "input_type_train": "featuremap" if featuremap else preprocess.channel_order.lower(),
        "input_layout_train": preprocess.layout,
    }
    if input_type_rt != "nv12":  # nv12 has a fixed layout; the others need one stated
        inputs["input_layout_rt"] = preprocess.layout if featuremap else "NHWC"
    if input_space_and_range is not None:
        inputs["input_space_and_range"] = input_space_and_range
    inputs["input_shape"] = "x".join(map(str, shape))
    if featuremap:
        inputs["norm_type"] = "no_preprocess"
    else:
        mean, scale = preprocess.pixel_mean_and_scale()
        inputs.update(norm_type="data_mean_and_scale", mean_value=_Raw(format_numbers(mean)),
                      scale_value=_Raw(format_numbers(scale)))
    config = {
        "model_parameters": {
            "onnx_model": onnx_model,
            "march": march,
            "layer_out_dump": False,
            "working_dir": working_dir or prefix,
            "output_model_file_prefix": prefix,
        },
        "input_parameters": inputs,
        "calibration_parameters": {
            "cal_data_dir": cal_data_dir,
            "cal_data_type": "float32",
            "calibration_type": calibration_type,
        },
        "compiler_parameters": {
            "compile_mode": compile_mode,
            "debug": False,
            "optimize_level": optimize_level,
        },
    }
    validate_hb_config(config)
    return config


def render_hb_config(preprocess: Preprocess, onnx_model: str, march: str, **options: Any) -> str:
    """The `hb_mapper makertbin --config` YAML text; same inputs give the same bytes.

    Options are those of `hb_config_dict`. A header comment records which contract the
    mean/scale came from.
    """
    config = hb_config_dict(preprocess, onnx_model, march, **options)
    lines = [
        "# hb_mapper makertbin config, generated by mnv4-deploy.",
        f"# mean_value/scale_value derive from the preprocessing contract {preprocess.sha256()[:16]}:",
        f"#   mean = {format_numbers(preprocess.mean)}, std = {format_numbers(preprocess.std)} (0-1 units);",
        "#   the model computes (pixel - mean_value) * scale_value on 0-255 pixels.",
    ]
    for section, body in config.items():
        lines.append(f"{section}:")
        lines += [f"  {key}: {_scalar(value)}" for key, value in body.items()]
    return "\n".join(lines) + "\n"
