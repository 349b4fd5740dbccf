"""The `rknn` toolchain: rknn-toolkit2 2.5.0 in its own venv, and worker sessions on it.

rknn-toolkit2 pins torch<=2.4.0, numpy<=1.26.4, onnx<=1.18.0 and protobuf<=4.25.4, so it
cannot share mnv4-deploy's environment. The pins below are the set pip resolved for it on
Python 3.11 (PyPI's torch 2.4.0 is the CUDA build: its NVIDIA libraries are most of the
5.6 GB; the toolkit imports torch, and torch's import needs them).
"""
from __future__ import annotations

from pathlib import Path

from mnv4_deploy.toolchains.session import WorkerSession
from mnv4_deploy.toolchains.venv import VenvToolchain

PYTHON_OPTION = "--rknn-python"
RKNN_TOOLCHAIN = VenvToolchain(
    name="rknn",
    description="Rockchip rknn-toolkit2 2.5.0: ONNX -> .rknn for RK3588/RK3576/RK356x/RK3562/RV110x, and its "
                "x86 simulator",
    requirements=("rknn-toolkit2==2.5.0",),
    pins=("fast-histogram==0.14", "filelock==4.3.2", "flatbuffers==25.12.19", "fsspec==2026.9.0", "Jinja2==3.1.6",
          "MarkupSafe==3.0.4", "mpmath==1.3.0", "networkx==3.6.1", "numpy==1.26.4", "nvidia-cublas-cu12==12.1.3.1",
          "nvidia-cuda-cupti-cu12==12.1.105", "nvidia-cuda-nvrtc-cu12==12.1.105",
          "nvidia-cuda-runtime-cu12==12.1.105", "nvidia-cudnn-cu12==9.1.0.70", "nvidia-cufft-cu12==11.0.2.54",
          "nvidia-curand-cu12==10.3.2.106", "nvidia-cusolver-cu12==11.4.5.107", "nvidia-cusparse-cu12==12.1.0.106",
          "nvidia-nccl-cu12==2.20.5", "nvidia-nvjitlink-cu12==12.9.86", "nvidia-nvtx-cu12==12.1.105",
          "onnx==1.18.0", "onnxruntime==1.26.0", "opencv-python==4.11.0.86", "packaging==26.4", "protobuf==4.25.4",
          "psutil==7.2.2", "rknn-toolkit2==2.5.0", "ruamel.yaml==0.19.1", "scipy==1.17.1", "sympy==1.14.0",
          "torch==2.4.0", "tqdm==4.70.1", "triton==3.0.0", "typing_extensions==4.16.0"),
    probe="rknn.api",
    size_mb=5600,
    python_versions=("3.11", "3.12", "3.10"),
    python_option=PYTHON_OPTION,
)
HANDLER = Path(__file__).with_name("worker.py")


def open_session(owner: str, log_file: Path, python: str | None = None) -> WorkerSession:
    """A worker running converters/rknn/worker.py in the rknn toolchain (refused in one line when absent)."""
    return WorkerSession(RKNN_TOOLCHAIN.locate(python), HANDLER, owner=f"{owner} (rknn-toolkit2 worker)",
                         log_file=log_file)
