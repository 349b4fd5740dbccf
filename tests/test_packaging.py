"""The installed import names: converters and recipes live inside the project's namespace.

The repository keeps `converters/` and `quant_configs/` as top-level folders; pyproject.toml maps
them to `mnv4_deploy.converters` and `mnv4_deploy.quant_configs`. These tests keep the mapping and
the code in step: every package folder is installed, and nothing imports the folders' bare names
(which work only from a checkout and would shadow, or be shadowed by, another distribution's).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
MAPPED = {"converters": "mnv4_deploy.converters", "quant_configs": "mnv4_deploy.quant_configs"}
LOADERS = {"files", "import_module", "find_spec"}  # calls that take a module name as a string


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_installed_under_the_projects_name():
    config = _setuptools()
    assert config["package-dir"] == {name: folder for folder, name in MAPPED.items()}
    found = set()
    for folder in ("mnv4_deploy", *MAPPED):
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO).parts
            found.add(".".join((MAPPED.get(parts[0], parts[0]), *parts[1:])))
    assert set(config["packages"]) == found, "pyproject.toml [tool.setuptools] packages must list every package"
    assert all(value.startswith("mnv4_deploy.") for group in ("mnv4_deploy.converters", "mnv4_deploy.toolchains")
               for value in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][group].values())


def _bare_imports(path: Path) -> list[str]:
    """`import converters...` / `from quant_configs...` statements (and resource lookups by the bare name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in LOADERS
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]  # e.g. importlib.resources.files("quant_configs")
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in MAPPED]
    return found


def test_no_code_imports_the_folders_by_their_bare_names():
    sources = [p for folder in ("mnv4_deploy", *MAPPED, "tests", "benchmarks", "examples")
               for p in (REPO / folder).rglob("*.py")]
    offending = [hit for path in sources for hit in _bare_imports(path)]
    assert not offending, offending
