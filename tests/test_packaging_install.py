"""The package as a user gets it: the sdist builds the wheel, and the wheel works installed into a
fresh venv outside the checkout, run from another folder.

Two venvs, each a real pip install (torch and its CUDA libraries included, ~5 GB and 2-5 minutes each
here), so both tests are slow; .ci/run runs them after the default suite:

- the exact tested set (constraints.txt) with the onnx extra and the example plugin: `targets`,
  `--version`, an export of conv_small to ONNX, `check` against a BPU march table, `build` on
  examples/deploy.yaml;
- the lowest supported versions (constraints-lowest.txt), torch installed first as a user's own:
  the wheel keeps that torch, the bare name `converters` does not import, and conv_small exports.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"

pytestmark = pytest.mark.slow


def _run(args: list, cwd: Path, env: dict | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def scratch():
    # Not tmp_path: pytest keeps the last runs' temp folders, and each venv here is ~5 GB.
    path = Path(tempfile.mkdtemp(prefix="mnv4-packaging-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dist(scratch):
    """sdist and wheel; `python -m build` builds the wheel from the sdist, so the sdist is complete."""
    out = scratch / "dist"
    _run([sys.executable, "-m", "build", "--outdir", out, REPO], cwd=scratch)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    return wheels[0]


class Venv:
    """A fresh venv outside the checkout, whose commands run from a folder of their own."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()
        _run([sys.executable, "-m", "venv", root / "venv"], cwd=root)
        self.bin = root / "venv" / "bin"
        self.work = root / "work"
        self.work.mkdir()
        # find-links: an empty folder, so that torch comes from the package index even where pip is set
        # up to prefer a local CPU-only build (whose torchvision would not load)
        (root / "no-local-wheels").mkdir()
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env.update(PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(root / "venv"),
                        PIP_FIND_LINKS=str(root / "no-local-wheels"), NO_COLOR="1")

    def pip(self, *args) -> subprocess.CompletedProcess:
        return _run([self.bin / "python", "-m", "pip", "install", "--disable-pip-version-check", *args],
                    cwd=self.work, env=self.env)

    def run(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        if check:
            return _run([self.bin / args[0], *args[1:]], cwd=self.work, env=self.env)
        return subprocess.run([str(self.bin / args[0]), *map(str, args[1:])], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=600)

    def version(self, name: str) -> str:
        code = f"from importlib.metadata import version; print(version({name!r}))"
        return self.run("python", "-c", code).stdout.strip()

    def assert_namespaced(self) -> None:
        bare = self.run("python", "-c", "import converters", check=False)
        assert bare.returncode != 0 and "No module named 'converters'" in bare.stderr
        where = self.run("python", "-c", "import mnv4_deploy, mnv4_deploy.converters.onnx, mnv4_deploy.quant_configs; "
                                         "print(mnv4_deploy.__file__)").stdout.strip()
        assert where.startswith(str(self.root)), where  # the installed copy, not the checkout


def _pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.split("==") for line in lines if "==" in line)


def _export_conv_small(venv: Venv) -> dict:
    venv.run("mnv4-export", "--model", "conv_small", "--to", "onnx", "--out", "exports/cs", "--quiet")
    report = json.loads((venv.work / "exports" / "cs" / "report.json").read_text())
    (row,) = report["results"]
    assert row["status"] == "passed" and row["parity"]["cosine"] > 0.9999, row
    return report


def test_the_wheel_installed_outside_the_checkout_works(scratch, dist):
    venv = Venv(scratch / "tested-set")
    venv.pip("-c", REPO / "constraints.txt", f"{dist}[onnx]")
    venv.pip("--no-deps", REPO / "examples" / "plugin")  # a third-party target beside the installed wheel
    venv.assert_namespaced()

    version = venv.run("mnv4-deploy", "--version").stdout
    assert f"torch {_pins(REPO / 'constraints.txt')['torch']}" in version and "onnxruntime" in version
    targets = venv.run("mnv4-deploy", "targets", "--output", "json").stdout
    rows = {row["target"]: row for row in json.loads(targets)}
    assert rows["onnx"]["installed"] and rows["onnx-opt"]["installed"] and not rows["tflite"]["installed"]

    _export_conv_small(venv)
    # a march table shipped as package data, read by the installed copy
    venv.run("mnv4-deploy", "check", "exports/cs/conv_small.onnx", "--target", "bpu-x3")
    venv.run("mnv4-export", "--model", "conv_small", "--to", "onnx-opt", "--img-size", "64", "--out", "exports/opt",
             "--quiet")

    # the example YAML, one pair of it (the rest needs the other extras); its data paths are relative to the
    # file, so without the shared photos a copy without its data block runs instead
    config = REPO / "examples" / "deploy.yaml"
    if not SAMPLES.is_dir():
        spec = yaml.safe_load(config.read_text())
        spec.pop("data")
        spec["thresholds"].pop("max_drop")
        config = venv.work / "deploy.yaml"
        config.write_text(yaml.safe_dump(spec))
    built = venv.run("mnv4-deploy", "build", "--config", config, "--only", "conv_small:onnx", "--out", "build", "--json")
    merged = json.loads(built.stdout)
    assert merged["exit_code"] == 0
    assert [(r["model"], r["target"], r["status"]) for r in merged["rows"]] == [("conv_small", "onnx", "passed")]


def test_the_lowest_supported_versions_keep_the_users_torch_and_export(scratch, dist):
    lowest = _pins(REPO / "constraints-lowest.txt")
    venv = Venv(scratch / "lowest")
    venv.pip(f"torch=={lowest['torch']}", f"torchvision=={lowest['torchvision']}")  # the user's own torch
    others = scratch / "lowest-without-torch.txt"
    others.write_text("".join(f"{k}=={v}\n" for k, v in lowest.items() if k not in ("torch", "torchvision")))
    venv.pip("-c", others, f"{dist}[onnx]")

    installed = {name: venv.version(name) for name in lowest}
    assert installed == lowest, "pip replaced the user's torch or did not take the lowest versions"
    venv.assert_namespaced()
    _export_conv_small(venv)
