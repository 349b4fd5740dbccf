"""The EdgeTPU check's errors: one small family, each also a core DeployError so the CLI maps it
to an exit code, and the compiler install hint they carry. A failed compiler run carries the
compiler's parsed log, so its error lives with the log in compiler.py. The two file errors subclass
the TFLite reader's own (mnv4_deploy.converters.tflite.flatbuffer), so either family's `except` catches them."""
from __future__ import annotations

from mnv4_deploy.errors import BackendMissing, DeployError

from ..tflite import flatbuffer as tflite_flatbuffer

INSTALL_HINT = (
    "edgetpu_compiler runs only on 64-bit x86-64 Debian 6.0+/Ubuntu 10.0+ hosts; install it there with: "
    "curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && "
    'echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" '
    "| sudo tee /etc/apt/sources.list.d/coral-edgetpu.list && "
    "sudo apt-get update && sudo apt-get install edgetpu-compiler "
    "(https://coral.ai/docs/edgetpu/compiler/)"
)


class EdgeTpuCheckError(DeployError):
    """Base of everything this package raises."""


class NotAFlatbufferError(EdgeTpuCheckError, tflite_flatbuffer.NotAFlatbufferError):
    """The file is missing, or is not a TFLite flatbuffer (exit 2: the user passed a bad file)."""


class TfliteSchemaMissing(EdgeTpuCheckError, tflite_flatbuffer.TfliteSchemaMissing):
    """Neither ai-edge-litert nor tensorflow is installed, so the flatbuffer cannot be read."""


class EdgeTpuCompilerMissing(EdgeTpuCheckError, BackendMissing):
    """`edgetpu_compiler` is not on PATH here (exit 5); the static check still works."""
