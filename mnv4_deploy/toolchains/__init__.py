"""Vendor toolchains that cannot share this package's environment, run out of process.

Some vendor compilers pin dependencies this package cannot live with (Rockchip's rknn-toolkit2
needs torch<=2.4 and numpy<=1.26; Horizon's hb_mapper ships as a docker image). A *toolchain*
is such an environment, named and declared as data by the converter that needs it:

- `VenvToolchain` (venv.py): a pinned requirement set installed into its own virtual
  environment in a cache folder (`mnv4-deploy toolchain install NAME`), or a venv the user
  points at; converters talk to it through a worker script run by that venv's Python, over a
  small versioned protocol (session.py host side, worker_main.py worker side).
- `DockerToolchain` (docker.py): a vendor image whose executables are run in a container
  with the working folder mounted (process.py runs the command, with a timeout).

Toolchains are found like targets, through entry points (group `mnv4_deploy.toolchains`,
name = toolchain name), so the core never imports a converter. Nothing here imports a vendor
package.
"""
from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Any, Protocol

from ..errors import BackendMissing, DeployError, UsageError

ENTRY_POINT_GROUP = "mnv4_deploy.toolchains"


class ToolchainMissing(BackendMissing):
    """The toolchain a target needs is not installed (exit 5), with the command that installs it."""


class Toolchain(Protocol):
    """What `mnv4-deploy toolchain` needs of any toolchain."""

    name: str
    description: str

    def status(self) -> dict[str, Any]:
        """Where it is, whether it is usable, and (when not) the one-line reason."""

    def install(self, log: Any, force: bool = False) -> dict[str, Any]:
        """Make it usable here (or say in one line why this kind cannot be installed by us)."""


def find_toolchains() -> dict[str, Any]:
    """Registered toolchains by name; reads metadata only."""
    return {ep.name: ep for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)}


def load_toolchain(name: str) -> Toolchain:
    """The toolchain object registered as `name`, or a usage error naming the known ones."""
    found = find_toolchains()
    if name not in found:
        close = difflib.get_close_matches(name, list(found), 3, 0.5)
        raise UsageError(f"unknown toolchain {name!r}",
                         f"did you mean {', '.join(close)}?" if close else f"known toolchains: {', '.join(found)}")
    try:
        return found[name].load()
    except Exception as exc:
        raise DeployError(f"toolchain {name} ({found[name].value}) failed to load: {type(exc).__name__}: {exc}") from exc


def toolchain_usable(name: str) -> bool:
    """Whether the toolchain `name` can run here as installed (no option naming another path)."""
    try:
        return bool(load_toolchain(name).status()["usable"])
    except DeployError:
        return False


__all__ = ["ENTRY_POINT_GROUP", "Toolchain", "ToolchainMissing", "find_toolchains", "load_toolchain", "toolchain_usable"]
