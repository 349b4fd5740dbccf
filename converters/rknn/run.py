"""Running an RKNN bundle: Rockchip's simulator here, or a board over adb; and describing one.

The simulator cannot run a .rknn file (the toolkit refuses `init_runtime()` after
`load_rknn`): it runs a model built in the same worker. Right after an export that is the very
build the bundle's .rknn was written from (`keep_live`); later (validate) the bundle's ONNX is
built again with the manifest's config, which gives the same layers and weights (the .rknn bytes
of two builds differ only in the process addresses the toolkit writes into them). With a board
(`device`), the .rknn file itself is loaded and run on its NPU through adb.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mnv4_deploy.preprocess import Preprocess
from mnv4_deploy.registry import Runner
from mnv4_deploy.toolchains.session import WorkerSession

from . import bundle as bundle_files

QDQ_OPTIMIZATION_LEVEL = 2
BUILD_TIMEOUT_S = 1800.0  # a toolkit build (or its accuracy analysis) of a large model on a loaded host
INFER_TIMEOUT_S = 120.0  # plus PER_IMAGE_S per image of a batch
PER_IMAGE_S = 10.0
_LIVE: dict[str, WorkerSession] = {}  # .rknn sha256 -> the worker that built it
_LOGS = itertools.count()


def session_log(target: str) -> Path:
    """A log file for one worker of this process (outside any artifact)."""
    folder = Path(tempfile.gettempdir()) / "mnv4-deploy-toolchains"
    folder.mkdir(exist_ok=True)
    return folder / f"{target}-{os.getpid()}-{next(_LOGS)}.log"


def toolkit_config(contract: Preprocess, platform: str, int8: bool) -> dict[str, Any]:
    """`rknn.config` values: the contract's mean and std in 0-255 pixel units, the platform, the optimization level.

    A QDQ model is built at optimization level 2: level 3 (the default) fuses each residual Add into
    the convolution before it (ConvAdd) and rounds once where the plan rounds twice (1 LSB on a
    sixth of those outputs; the toolkit itself advises level 2 for QAT models). Its cycle estimate
    is no higher at level 2 (conv_small, 224 px: 603,756 against 617,842).
    """
    mean, scale = contract.pixel_mean_and_scale()
    return {"mean": [round(m, 6) for m in mean], "std": [round(1.0 / s, 6) for s in scale], "platform": platform,
            "optimization_level": QDQ_OPTIMIZATION_LEVEL if int8 else 3}


def to_pixels(batch: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """Normalized NCHW (the contract's) -> 0-255 pixel NCHW, what a model with mean/std inside takes."""
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return (np.asarray(batch, np.float32) * s + m).astype(np.float32)


def keep_live(rknn_sha256: str, session: WorkerSession) -> None:
    """Keep the worker that built a .rknn for its runner (one per artifact; an older one is closed)."""
    old = _LIVE.pop(rknn_sha256, None)
    if old is not None:
        old.close()
    _LIVE[rknn_sha256] = session


def _open(target: str, bundle: Path, manifest: Mapping[str, Any], device: str | None) -> tuple[WorkerSession, str]:
    from .toolchain import open_session

    platform, toolkit = manifest["platform"], manifest.get("toolkit")
    rknn_path = bundle / manifest["rknn"]["file"]
    if device:
        session = open_session(target, session_log(target))
        session.call("open_runtime", {"target": platform, "device_id": device, "rknn_file": str(rknn_path)})
        return session, f"rknn-toolkit2 {toolkit} on a {platform} board (adb device {device}), the bundle's .rknn"
    session = _LIVE.pop(manifest["rknn"]["sha256"], None)
    how = "the build that wrote the bundle's .rknn"
    if session is None or session.proc.poll() is not None:
        session = open_session(target, session_log(target))
        config = manifest["config"]
        session.call("build", {"onnx": str(bundle / manifest["onnx"]["file"]), "input_name": manifest["input"]["name"],
                               "input_shape": manifest["input"]["shape"], "mean": config["mean_values"],
                               "std": config["std_values"], "platform": platform,
                               "optimization_level": config.get("optimization_level", 3)}, timeout=BUILD_TIMEOUT_S)
        how = "rebuilt from the bundle's ONNX with its config"
    session.call("open_runtime", {})
    return session, f"rknn-toolkit2 {toolkit} simulator ({platform}; {how})"


def bundle_runner(target: str, bundle: Path, device: str | None) -> Runner:
    """NCHW normalized batch -> logits, through the simulator (or a board)."""
    bundle = bundle.resolve()  # the worker runs in another folder
    manifest = bundle_files.read_manifest(bundle)
    session, runtime = _open(target, bundle, manifest, device)
    mean, std = manifest["config"]["mean_values"], manifest["config"]["std_values"]
    classes = int(manifest["num_classes"])

    def run(batch: np.ndarray) -> np.ndarray:
        pixels = to_pixels(batch, mean, std)
        _, out = session.call("infer", arrays={"x": pixels}, timeout=INFER_TIMEOUT_S + PER_IMAGE_S * len(batch))
        return out["logits"].reshape(len(batch), classes)

    return Runner(run=run, runtime=runtime)


def describe_bundle(bundle: Path) -> dict[str, Any]:
    """`mnv4-deploy inspect`: the model's I/O as the board sees it, where layers run, what built it."""
    manifest = bundle_files.read_manifest(bundle)
    placed = manifest.get("placement") or {}
    return {"format": "rknn", "platform": manifest["platform"], "toolkit": manifest.get("toolkit"),
            "inputs": [{"name": manifest["input"]["name"], "shape": manifest["input"]["shape"],
                        "dtype": "float32 pixels 0-255 (mean/std inside)"}],
            "outputs": [{"name": "logits", "shape": [1, manifest["num_classes"]], "dtype": "float32"}],
            "op_histogram": {op: sum(counts.values()) for op, counts in (placed.get("by_op") or {}).items()},
            "placement": {k: placed.get(k) for k in ("layers", "on_npu", "dtypes", "off_npu")},
            "files": {"rknn": manifest["rknn"], "onnx": {k: manifest["onnx"].get(k) for k in ("file", "sha256", "source")}},
            "metadata": {"num_classes": manifest["num_classes"], "preprocess": manifest["contract"],
                         "target": manifest["target"], "precision": manifest["precision"],
                         "int8_plan_sha256": manifest["onnx"].get("plan_sha256"),
                         "full_integer": manifest.get("full_integer")}}
