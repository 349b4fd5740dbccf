"""Rockchip RKNN targets: `rknn-int8` (the run's plan, our numerics on the NPU) and `rknn` (fp16).

Built and run by Rockchip's own rknn-toolkit2 in its own venv (the `rknn` toolchain:
`mnv4-deploy toolchain install rknn`, or `--rknn-python PATH`), through a worker process
(toolchain.py, worker.py):

- `rknn-int8`: the plan's QDQ ONNX (`export_qdq_onnx`, int8 weights) built with
  `do_quantization=False`, so the toolkit keeps the plan's scales; on RV1103/RV1106 (no fp16)
  the plan's full-integer variant, whose logits are quantized too.
- `rknn`: the canonical model's float ONNX, built in fp16.

Mean and std come from the model's contract and go into the model (`config(mean_values,
std_values)`): the board feeds 0-255 pixels. The artifact is a bundle directory (bundle.py);
it is judged in Rockchip's x86 simulator, or on a board over adb with `--rknn-device ID` (or
`MNV4_DEPLOY_RKNN_DEVICE` for validate). Module import stays light.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mnv4_deploy.errors import UsageError
from mnv4_deploy.options import TargetOption
from mnv4_deploy.registry import Artifact, ConvertJob, Converter, ExportOptions, Runner, TargetInfo

from .platforms import DEFAULT, PLATFORMS, get_platform

DEVICE_ENV = "MNV4_DEPLOY_RKNN_DEVICE"
PLATFORM = TargetOption("rknn_platform", str, DEFAULT, f"Rockchip NPU the model is built for: {', '.join(PLATFORMS)}",
                        panel="Rockchip",
                        choices=tuple(PLATFORMS))
PYTHON = TargetOption("rknn_python", str, None, "a Python (or venv folder) with rknn-toolkit2 (default: the "
                      "toolchain that `mnv4-deploy toolchain install rknn` installs)", panel="Rockchip")
DEVICE = TargetOption("rknn_device", str, None, f"adb id of a board: judge there, not in the simulator (validate: "
                      f"{DEVICE_ENV})", panel="Rockchip")
# declared alike by the EdgeTPU and BPU targets (the registry checks the declarations agree)
STRICT = TargetOption("strict", bool, False, "fail when any op would leave the accelerator (EdgeTPU, BPU, RKNN)",
                      panel="Accelerators")


class RknnConverter(Converter):
    """One RKNN target: int8 from the run's plan, or fp16 from the float model."""

    def __init__(self, info: TargetInfo, int8: bool):
        self.info = info
        self.int8 = int8

    def check_options(self, options: ExportOptions) -> None:
        from .toolchain import RKNN_TOOLCHAIN

        platform = get_platform(options.rknn_platform)
        if not self.int8 and not platform.float16:
            raise UsageError(f"target {self.info.name}: {platform.name} has no float16 unit (int8 only)",
                             f"use --to rknn-int8 for {platform.name}")
        RKNN_TOOLCHAIN.locate(options.rknn_python)  # refused here (exit 5), before any work

    def convert(self, job: ConvertJob) -> Artifact:
        from .convert import convert

        return convert(self, job)

    def runner(self, artifact: Artifact) -> Runner:
        from .run import bundle_runner

        device = (artifact.metadata.get("rknn_device") if artifact.metadata else None) or os.environ.get(DEVICE_ENV)
        return bundle_runner(self.info.name, Path(artifact.path), device)

    def describe(self, path: Path) -> dict[str, Any]:
        from .run import describe_bundle

        return describe_bundle(Path(path))

    def check(self, path: Path, compiler_log: Path | None = None, platform: str | None = None) -> dict[str, Any]:
        """`mnv4-deploy check model.onnx --target rknn [--platform rk3576]`: the toolkit builds the ONNX
        as given (QDQ stays int8, float becomes fp16) and says where each layer runs."""
        from .check import check_onnx

        if compiler_log is not None:
            raise UsageError("--compiler-log is not read for RKNN targets: the toolkit itself runs here",
                             "drop --compiler-log")
        return check_onnx(self.info.name, Path(path), get_platform(platform or DEFAULT).name)


COMMON = (PLATFORM, PYTHON, DEVICE, STRICT)
RKNN_INT8 = RknnConverter(TargetInfo(
    name="rknn-int8", format="rknn", precision="int8", suffix=".int8.rknn-bundle", backend_modules=("onnx",),
    extra="onnx", needs_calibration=True, options=COMMON, toolchain="rknn", check_platforms=tuple(PLATFORMS),
    description="Rockchip NPU int8 (.rknn bundle): the run's plan as QDQ, built by rknn-toolkit2, judged in "
                "its simulator"), int8=True)
RKNN_FP16 = RknnConverter(TargetInfo(
    name="rknn", format="rknn", precision="fp16", suffix=".rknn-bundle", backend_modules=("onnx", "onnxsim"),
    extra="onnx", options=COMMON, toolchain="rknn", check_platforms=tuple(PLATFORMS),
    description="Rockchip NPU fp16 (.rknn bundle) built by rknn-toolkit2, judged in its simulator"), int8=False)
