"""Run Horizon's hb_mapper on a bundle: on PATH (inside the OpenExplorer docker), or through its image.

It is never installable here, so this is optional: without it the bundle is still complete and
the report says, in one line, why the BPU build was not run. Where `hb_mapper` is on PATH it
runs directly; else, where docker and the OpenExplorer image named by
`MNV4_DEPLOY_HB_MAPPER_IMAGE` are present, it runs in a container with the bundle mounted
(the `hb_mapper` toolchain, `mnv4_deploy.toolchains.docker`). `checker` and `makertbin` run
inside the bundle directory (their logs and the compiled `.bin` stay there) and their node
tables are parsed into the report: per-node BPU/CPU placement and cosine.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from mnv4_deploy.toolchains.docker import DockerToolchain
from mnv4_deploy.toolchains.process import run_tool

from .hb_log import parse_hb_mapper_log

EXECUTABLE = "hb_mapper"
TIMEOUT_S = 3 * 3600  # makertbin of a large model with 300 calibration images takes a while
HB_MAPPER = DockerToolchain(
    name="hb_mapper", description="Horizon hb_mapper (checker, makertbin) in the OpenExplorer docker image",
    executable=EXECUTABLE, image_env="MNV4_DEPLOY_HB_MAPPER_IMAGE",
    default_image="openexplorer/ai_toolchain_ubuntu_20_x5_cpu:v1.2.8",
    get_image="download the OpenExplorer image for your board from D-Robotics (RDK X5: OE x5; RDK X3: OE XJ3) and "
              "`docker load` it")


def hb_mapper_command() -> tuple[Callable[[list[str], Path], list[str]] | None, str]:
    """How to run hb_mapper here (a command builder and its description), or (None, why not)."""
    exe = shutil.which(EXECUTABLE)
    if exe is not None:
        return (lambda args, _cwd: [exe, *args]), exe
    reason = HB_MAPPER.unavailable()
    if reason is None:
        return HB_MAPPER.command, f"docker image {HB_MAPPER.image()}"
    return None, f"hb_mapper not on PATH and {reason} (set {HB_MAPPER.image_env}): checker/makertbin not run"


def run_hb_mapper(bundle: Path, onnx_file: str, config_file: str, march: str, input_name: str,
                  input_shape: Sequence[int], log: Callable[[str], None]) -> dict[str, Any] | None:
    """`checker` then `makertbin` in `bundle`; None when hb_mapper can run neither way here."""
    command, where = hb_mapper_command()
    if command is None:
        return None
    shape = "x".join(str(int(d)) for d in input_shape)
    checker = run_tool(command(["checker", "--model-type", "onnx", "--march", march, "--model", onnx_file,
                                "--input-shape", input_name, shape], bundle), bundle, "bpu (hb_mapper)",
                       "hb_mapper checker", TIMEOUT_S, "hb_mapper_checker.log")
    checked = parse_hb_mapper_log(checker)
    log(f"hb_mapper checker: {len(checked.nodes)} nodes, {len(checked.cpu_nodes)} on the CPU")
    built = parse_hb_mapper_log(run_tool(command(["makertbin", "--config", config_file, "--model-type", "onnx"],
                                                 bundle), bundle, "bpu (hb_mapper)", "hb_mapper makertbin",
                                         TIMEOUT_S, "hb_mapper_makertbin.log"))
    log(f"hb_mapper makertbin: output cosine {built.output_cosine or 'not reported'}")
    return {"executable": where, "checker": checked.to_dict(), "makertbin": built.to_dict()}
