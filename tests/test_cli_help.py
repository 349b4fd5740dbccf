"""The CLI's conventions: --help of every command read in an 80-column terminal (no `<bool>` after a
flag, PATH / INTEGER / a choice list for values, nothing cut off), --version from package metadata,
and Typer's shell completion."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

from mnv4_deploy.cli import app, export_app
from mnv4_deploy.cli_help import MAX_CHOICE_METAVAR, choice_metavar, metavar_for

runner = CliRunner()


def _command_paths(command, prefix=()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, prefix + (name,))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


def _help(cli, args) -> str:
    result = runner.invoke(cli, [*args, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_covered():
    assert {"export", "validate", "check", "build", "merge-eval", "toolchain install"} <= {" ".join(p) for p in COMMANDS}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "root")
def test_help_reads_well_in_80_columns(path):
    text = _help(app, path)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert not re.search(r"<(bool|str|int|float|path|list\[Path\])>", text), text  # Typer's raw type labels
    assert "…" not in text, text  # a word too long for its column is cut off with an ellipsis
    assert re.search(r"--help\s+Show this message", text)  # a flag: nothing between it and its help


def test_export_help_uses_conventional_metavars():
    text = _help(export_app, [])
    row = {m.group(1): m.group(2) for m in re.finditer(r"│ (--[\w-]+)(?:\s+-\w)?(?:\s+--no-[\w-]+)?\s+(\S+)", text)}
    assert row["--weights"] == "PATH" and row["--img-size"] == "INTEGER" and row["--max-drop"] == "FLOAT"
    assert row["--model"] == "TEXT" and row["--overflow-fix"] == "[auto|all|off]" and row["--output"] == "[table|json]"
    assert row["--io-dtype"] == "[float32|int8|uint8]"  # a target-declared option's choices
    for flag in ("--pretrained", "--fold", "--resume", "--strict", "--dynamic-batch"):
        assert not re.fullmatch(r"[A-Z\[]\S*", row[flag]), (flag, row[flag])  # help text follows the flag directly


def test_arguments_show_their_name_only():
    text = _help(app, ["validate"])
    assert "validate [OPTIONS] {ARTIFACT}" in text or "validate [OPTIONS] ARTIFACT" in text
    assert re.search(r"ARTIFACT\s+an exported artifact", text)


def test_metavar_rules():
    from enum import Enum
    from pathlib import Path
    from typing import Optional

    class Mode(str, Enum):
        a = "a"
        b = "b"

    assert metavar_for(Optional[Path], "out", False) == "PATH"
    assert metavar_for(bool, "strict", False) == ""
    assert metavar_for(Mode, "mode", False) == "[a|b]"
    assert metavar_for(list[Path], "dirs", True) == "DIRS"
    long = [f"choice_{i}" for i in range(8)]
    assert len("|".join(long)) > MAX_CHOICE_METAVAR and choice_metavar(long) == "TEXT"


def test_version_lists_the_installed_backends_without_importing_them():
    code = ("import sys; from mnv4_deploy.cli import version_text; print(version_text()); "
            "print('imported:', sorted(m for m in ('torch', 'onnxruntime', 'tensorflow', 'coremltools', "
            "'executorch', 'openvino') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"mnv4-deploy {version('mnv4-deploy')} (Python ")
    assert f"torch {version('torch')}" in out and f"timm {version('timm')}" in out
    assert re.search(rf"onnx:\s+onnx {re.escape(version('onnx'))}, .*onnxruntime {re.escape(version('onnxruntime'))}", out)
    assert lines[-1] == "imported: []"


def test_version_flag_exits_zero():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("mnv4-deploy ")


def test_shell_completion_completes_commands_and_choices():
    def complete(words: str) -> list[str]:
        env = {**os.environ, "_MNV4_DEPLOY_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        script = os.path.join(os.path.dirname(sys.executable), "mnv4-deploy")  # the prog name is the protocol's key
        return subprocess.run([script], env=env, capture_output=True,
                              text=True, timeout=120).stdout.split()

    assert complete("mnv4-deploy exp") == ["export"]
    assert complete("mnv4-deploy export --overflow-fix ") == ["auto", "all", "off"]
    assert "--install-completion" in _help(app, [])
