"""The README of the BPU handoff bundle: what to run in the vendor toolchain, what we measured
here, and how the board must prepare its input.

The vendor engineer has the toolchain (OpenExplorer docker) and a board, we have neither; so
the README gives exact commands, states which numbers are measured on this side and which are
"not measured", and spells out the board-side preprocessing, because a board app that resizes
or converts colour differently from the contract silently loses accuracy. Same inputs give the
same text (no dates, no absolute paths).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from mnv4_deploy.errors import UsageError
from mnv4_deploy.preprocess import Preprocess

from .march import OpCheck
from .yaml_config import format_numbers

# key -> (row label, format). The results dict may hold only these keys.
RESULT_ROWS: dict[str, tuple[str, str]] = {
    "float_top1": ("Float ONNX, contract preprocessing: top-1 (%)", "{:.2f}"),
    "float_top5": ("Float ONNX, contract preprocessing: top-5 (%)", "{:.2f}"),
    "nv12_top1": ("Float ONNX, NV12 BT.601 round trip: top-1 (%)", "{:.2f}"),
    "nv12_cosine": ("NV12 round trip vs contract: logits cosine", "{:.5f}"),
    "int8_top1": ("Emulated int8 (ONNX QDQ, NV12 input): top-1 (%)", "{:.2f}"),
    "int8_contract_top1": ("Emulated int8 (ONNX QDQ, contract preprocessing): top-1 (%)", "{:.2f}"),
    "int8_cosine": ("Emulated int8 vs float: logits cosine", "{:.5f}"),
    "images": ("Labeled images evaluated", "{:d}"),
}
NOT_MEASURED = "not measured"
_SPACE_TEXT = {
    "regular": "BT.601 full range (Y, U, V in 0-255; `input_space_and_range: regular`, the default)",
    "bt601_video": "BT.601 video range (Y 16-235, U/V 16-240; `input_space_and_range: bt601_video`)",
}


def _board_input_step(input_type_rt: str, space: str) -> str:
    if input_type_rt == "nv12":
        return (f"3. Convert to NV12 with {_SPACE_TEXT[space]}. OpenCV's "
                "`cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)` gives video range (and planar U, V that must be "
                "interleaved into NV12's UV plane): with it, set `input_space_and_range: bt601_video` in the config "
                "and rebuild.")
    if input_type_rt == "featuremap":
        return ("3. Normalize with the contract's mean and std yourself and feed float32 NCHW: the config's "
                "`featuremap` input has no preprocessing node.")
    return f"3. Feed 8-bit {input_type_rt.upper()} pixels, NHWC (`input_type_rt: {input_type_rt}`)."


def _results_table(results: Mapping[str, float | int | None]) -> list[str]:
    unknown = sorted(set(results) - set(RESULT_ROWS))
    if unknown:
        raise UsageError(f"unknown result key(s) {', '.join(unknown)}", f"known: {', '.join(RESULT_ROWS)}")
    lines = ["| Measurement | Value |", "|---|---|"]
    for key, (label, fmt) in RESULT_ROWS.items():
        value = results.get(key)
        lines.append(f"| {label} | {NOT_MEASURED if value is None else fmt.format(value)} |")
    lines.append(f"| BPU int8 on the board (`hb_mapper` + `hrt_model_exec`) | {NOT_MEASURED} (vendor side) |")
    return lines


def _op_check_section(check: OpCheck | None) -> list[str]:
    if check is None:
        return ["Not checked on our side: run `hb_mapper checker` (step 1)."]
    problems = check.problems()
    if not problems:
        return [f"Against the published {check.march} operator list every node maps to the BPU, opset "
                f"{check.opset} and IR version {check.ir_version} are accepted. `hb_mapper checker` remains the "
                "judge of per-op constraints (kernel sizes, channel limits)."]
    return [f"Against the published {check.march} operator list we expect these to leave the BPU or be "
            "refused; `hb_mapper checker` will confirm:", ""] + [f"- {line}" for line in problems]


def render_readme(
    *,
    model_name: str,
    onnx_file: str,
    config_file: str,
    march: str,
    input_name: str,
    input_shape: Sequence[int],
    preprocess: Preprocess,
    output_model_file_prefix: str,
    results: Mapping[str, float | int | None] | None = None,
    input_space_and_range: str = "regular",
    cal_data_dir: str = "./calibration_data_rgb_f32",
    calibration_count: int | None = None,
    calibration_sha256: str | None = None,
    op_check: OpCheck | None = None,
    input_type_rt: str = "nv12",
    bundle_dir: str | None = None,
    output_shape: Sequence[int] | None = None,
) -> str:
    """The bundle README (Markdown). Paths are as they sit inside the bundle (`bundle_dir`)."""
    if input_space_and_range not in _SPACE_TEXT:
        raise UsageError(f"unknown input_space_and_range {input_space_and_range!r}",
                         f"use one of {', '.join(_SPACE_TEXT)}")
    if op_check is not None and op_check.march != march:
        raise UsageError(f"the op check is for {op_check.march}, the README for {march}")
    shape = "x".join(str(int(d)) for d in input_shape)
    height, width = preprocess.crop_size
    mean, scale = preprocess.pixel_mean_and_scale()
    calib = f"{calibration_count} files" if calibration_count is not None else "the files"
    calib_hash = f" (sha256 over names and bytes: `{calibration_sha256}`)" if calibration_sha256 else ""
    lines = [
        f"# {model_name}: Horizon BPU handoff ({march})",
        "",
        "This bundle holds what `hb_mapper` needs to build a BPU model; we cannot run the vendor toolchain or "
        "a board here, so the BPU numbers are for you to measure.",
        "",
        "## Contents",
        "",
        f"- `{onnx_file}`: the float model (input `{input_name or '(single input)'}`, shape {shape}, NCHW RGB"
        + (f"; output shape {'x'.join(str(int(d)) for d in output_shape)}" if output_shape else "") + ").",
        f"- `{config_file}`: the `hb_mapper makertbin` config; mean/scale come from the preprocessing contract "
        f"`{preprocess.sha256()[:16]}`.",
        f"- `{cal_data_dir}/`: {calib} of raw float32 (1, 3, {height}, {width}) RGB pixels in 0-255, not "
        f"normalized, one per image{calib_hash}.",
        "",
        "## Commands (inside the OpenExplorer docker)",
        "",
        "```bash",
        *([f"cd {bundle_dir}"] if bundle_dir else []),
        f"hb_mapper checker --model-type onnx --march {march} --model {onnx_file} --input-shape "
        f"{input_name or '<input_name>'} {shape}",
        f"hb_mapper makertbin --config {config_file} --model-type onnx",
        "```",
        "",
        f"The second command writes `{output_model_file_prefix}.bin` into the config's `working_dir`, with the "
        "per-node cosine similarity table in its log (output cosine >= 0.99 is normal). On the board:",
        "",
        "```bash",
        f"hrt_model_exec perf --model_file {output_model_file_prefix}.bin --frame_count 200",
        "```",
        "",
        "## Operators",
        "",
        *_op_check_section(op_check),
        "",
        "## Results measured here",
        "",
        *_results_table(results or {}),
        "",
        "## Board-side preprocessing (must match, or accuracy drops silently)",
        "",
        f"1. Decode to RGB; resize so the short side is {preprocess.resize_short} px ({preprocess.interpolation} "
        "interpolation, keep the aspect ratio).",
        f"2. Centre-crop {height}x{width} (H x W).",
        _board_input_step(input_type_rt, input_space_and_range),
        "4. Do not subtract a mean or divide by a std: the model computes `(pixel - mean_value) * scale_value` "
        f"itself, with mean_value `{format_numbers(mean)}` and scale_value `{format_numbers(scale)}` "
        f"(contract mean {format_numbers(preprocess.mean)}, std {format_numbers(preprocess.std)}).",
        "",
    ]
    return "\n".join(lines)
