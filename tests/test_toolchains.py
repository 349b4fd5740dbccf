"""The out-of-venv toolchain mechanism: worker protocol, venv location and install, docker images.

The worker side runs here with this venv's own Python and a stand-in handler (worker_main.py
needs only the standard library and numpy), so every failure path of the protocol is exercised
without a vendor toolkit: the handler's error, an unknown command, a crash (SIGSEGV), a hang
past the timeout, a worker that cannot start.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mnv4_deploy.cli import app
from mnv4_deploy.errors import DeployError, UsageError
from mnv4_deploy.toolchains import ToolchainMissing, load_toolchain
from mnv4_deploy.toolchains.docker import DockerToolchain
from mnv4_deploy.toolchains.session import WorkerSession
from mnv4_deploy.toolchains.venv import MARKER, ROOT_ENV, VenvToolchain

HANDLER = '''
import os, time
import numpy as np

def hello():
    return {"numpy": np.__version__}

def double(args, arrays, workdir):
    print("vendor noise on stdout")  # must not disturb the protocol
    return {"n": args["n"] * 2, "workdir_exists": workdir.is_dir()}, {"y": arrays["x"] * 2}

def fail(args, arrays, workdir):
    raise ValueError("the vendor says no\\nsecond line")

def usage(args, arrays, workdir):
    class Problem(Exception):
        kind = "usage"
    raise Problem("bad input")

def crash(args, arrays, workdir):
    print("E segfaulting now", flush=True)
    os.kill(os.getpid(), 11)

def hang(args, arrays, workdir):
    time.sleep(60)

COMMANDS = {"double": double, "fail": fail, "usage": usage, "crash": crash, "hang": hang}
'''


@pytest.fixture
def handler(tmp_path) -> Path:
    path = tmp_path / "handler.py"
    path.write_text(HANDLER)
    return path


def _session(handler: Path, tmp_path: Path) -> WorkerSession:
    return WorkerSession(Path(sys.executable), handler, owner="test-target (fake worker)",
                         log_file=tmp_path / "worker.log")


def test_arrays_and_json_round_trip_and_vendor_output_goes_to_the_log(handler, tmp_path):
    with _session(handler, tmp_path) as session:
        assert session.hello == {"numpy": np.__version__}
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        result, arrays = session.call("double", {"n": 21}, {"x": x})
        assert result == {"n": 42, "workdir_exists": True}
        np.testing.assert_array_equal(arrays["y"], x * 2)
        exchange = session.exchange
        assert not list(exchange.glob("*.npy"))  # request and reply files are removed after each call
    assert "vendor noise on stdout" in (tmp_path / "worker.log").read_text()
    assert not exchange.exists()


def test_a_session_kept_open_until_the_interpreter_exits_leaves_no_folder(handler, tmp_path):
    """The rknn runner keeps the build's worker alive past the export and never closes it: at exit the worker
    ends and its exchange folder (where the vendor toolkit drops its files) goes with it."""
    import subprocess

    script = (f"import sys; from pathlib import Path; from mnv4_deploy.toolchains.session import WorkerSession\n"
              f"kept = WorkerSession(Path(sys.executable), Path({str(handler)!r}), owner='t', "
              f"log_file=Path({str(tmp_path / 'w.log')!r}))\n"
              f"(kept.exchange / 'check0_base_optimize.onnx').write_bytes(b'x')\nprint(kept.exchange, kept.proc.pid)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folder, pid = done.stdout.split()
    assert not Path(folder).exists()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.mark.parametrize("command,error,text", [
    ("fail", DeployError, "test-target (fake worker): fail failed: ValueError: the vendor says no"),
    ("usage", UsageError, "usage failed: Problem: bad input"),
    ("nope", DeployError, "unknown command 'nope'; this worker knows crash, double, fail, hang, usage"),
])
def test_a_failing_command_is_one_line_and_the_worker_stays_usable(handler, tmp_path, command, error, text):
    with _session(handler, tmp_path) as session:
        with pytest.raises(error) as caught:
            session.call(command)
        line = caught.value.one_line()
        assert text in line and "\n" not in line and str(tmp_path / "worker.log") in line
        assert session.call("double", {"n": 1}, {"x": np.zeros(1)})[0]["n"] == 2


def test_a_crashing_worker_is_named_with_its_signal_and_last_error_line(handler, tmp_path):
    session = _session(handler, tmp_path)
    with pytest.raises(DeployError, match=r"died during crash \(killed by SIGSEGV\): E segfaulting now"):
        session.call("crash")
    with pytest.raises(DeployError, match="worker is not running"):
        session.call("double", {"n": 1})


def test_a_hanging_call_is_stopped_at_its_timeout(handler, tmp_path):
    session = _session(handler, tmp_path)
    pid = session.proc.pid
    with pytest.raises(DeployError, match=r"hang ran longer than 1 s; the toolchain worker was stopped"):
        session.call("hang", timeout=1)
    assert session.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_worker_ends_when_its_host_dies_mid_call(handler, tmp_path):
    """A host killed during a long vendor call leaves no worker computing on (it would read stdin's end only later)."""
    import subprocess
    import time

    host = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from mnv4_deploy.toolchains.session import WorkerSession; "
        f"s = WorkerSession(Path(sys.executable), Path({str(handler)!r}), 'host', Path({str(tmp_path / 'w.log')!r})); "
        "print(s.proc.pid, flush=True); s.call('hang', timeout=120)")], stdout=subprocess.PIPE, text=True)
    worker = int(host.stdout.readline())
    time.sleep(1)
    host.kill()
    host.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.kill(worker, 9)
    pytest.fail("the worker outlived its host by 20 s")


def test_a_worker_that_cannot_import_its_vendor_module_fails_at_start(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_vendor_module_here\n")
    with pytest.raises(DeployError, match="could not start: ModuleNotFoundError: No module named 'not_a_vendor"):
        _session(bad, tmp_path)


# ---- venv toolchains: where they are looked for, and the refusal -------------------------------
CHAIN = VenvToolchain(name="demo", description="a demo", requirements=("demo-pkg==1.0",), pins=("demo-pkg==1.0",),
                      probe="demo", size_mb=10, python_option="--demo-python")


def test_a_missing_toolchain_is_refused_naming_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    monkeypatch.delenv(CHAIN.env_var, raising=False)
    with pytest.raises(ToolchainMissing) as caught:
        CHAIN.locate()
    assert caught.value.exit_code == 5
    assert "run `mnv4-deploy toolchain install demo` (about 0.0 GB), or pass --demo-python PATH" in caught.value.one_line()


def test_the_option_then_the_environment_then_the_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "cache"))
    venv = tmp_path / "myvenv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    assert CHAIN.locate(str(venv)) == venv / "bin" / "python"
    monkeypatch.setenv(CHAIN.env_var, sys.executable)
    assert CHAIN.locate() == Path(sys.executable)
    with pytest.raises(UsageError, match="--demo-python /nowhere: no Python interpreter there"):
        CHAIN.locate("/nowhere")
    monkeypatch.delenv(CHAIN.env_var)
    home = CHAIN.home()  # an installed venv: the marker must carry the same pins
    (home / "bin").mkdir(parents=True)
    os.symlink(sys.executable, home / "bin" / "python")
    (home / MARKER).write_text(json.dumps({"key": "other"}))
    with pytest.raises(ToolchainMissing, match="installed from other pins"):
        CHAIN.locate()
    (home / MARKER).write_text(json.dumps({"key": CHAIN.key(), "size_mb": 1}))
    assert CHAIN.locate() == home / "bin" / "python" and CHAIN.status()["usable"]


def test_install_refuses_without_disk_room_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    huge = VenvToolchain(name="huge", description="", requirements=("x==1",), pins=("x==1",), probe="x",
                         size_mb=10**9)
    with pytest.raises(UsageError, match="needs about 1000000000 MB"):
        huge.install(log=lambda _: None)
    assert not any(tmp_path.glob(".huge*")) and not (tmp_path / "huge").exists()


def test_a_failed_install_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    """pip cannot find the package (a name no index has): one line, no venv left behind, the log kept."""
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # answer at once, offline
    broken = VenvToolchain(name="broken", description="", requirements=("mnv4-no-such-package==0.0.1",),
                           pins=("mnv4-no-such-package==0.0.1",), probe="x", size_mb=1,
                           python_versions=(f"{sys.version_info.major}.{sys.version_info.minor}",))
    said = []
    with pytest.raises(DeployError, match="toolchain broken: pip install failed") as caught:
        broken.install(log=said.append)
    assert "\n" not in caught.value.one_line() and "about 0.0 GB" in said[0]
    assert not (tmp_path / "broken").exists() and not any(tmp_path.glob(".broken*"))
    assert "mnv4-no-such-package" in (tmp_path / "broken.install.log").read_text()


def test_the_cli_lists_toolchains_and_exits_5_for_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    monkeypatch.delenv("MNV4_DEPLOY_RKNN_PYTHON", raising=False)
    listed = CliRunner().invoke(app, ["toolchain", "status", "--output", "json"])
    assert listed.exit_code == 0, listed.output
    names = {row["name"]: row for row in json.loads(listed.stdout)}
    assert {"rknn", "hb_mapper"} <= set(names) and names["rknn"]["announced_size_mb"] > 1000
    one = CliRunner().invoke(app, ["toolchain", "status", "rknn"])
    assert one.exit_code == 5 and "mnv4-deploy toolchain install rknn" in one.stdout
    unknown = CliRunner().invoke(app, ["toolchain", "install", "rknm"])
    assert unknown.exit_code == 2 and "did you mean rknn" in unknown.stderr


# ---- docker toolchains ------------------------------------------------------------------------
def _fake_docker(tmp_path: Path, image_present: bool) -> Path:
    """A `docker` stand-in: `image inspect` answers as asked; `run` records its arguments."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    docker = folder / "docker"
    docker.write_text("#!/bin/sh\n"
                      f"if [ \"$1\" = image ]; then {'exit 0' if image_present else 'echo No such image >&2; exit 1'}; fi\n"
                      f"echo \"$@\" >> '{tmp_path / 'docker_calls.txt'}'\n")
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    return folder


def test_a_docker_toolchain_says_which_piece_is_missing(tmp_path, monkeypatch):
    chain = DockerToolchain(name="tool", description="", executable="tool", image_env="TOOL_IMAGE",
                            default_image="vendor/tool:1", get_image="load it")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert chain.unavailable() == "docker is not installed"
    monkeypatch.setenv("PATH", str(_fake_docker(tmp_path, image_present=False)))
    assert "docker image vendor/tool:1 is not usable here (No such image)" == chain.unavailable()
    with pytest.raises(UsageError, match="cannot download.*load it; then set TOOL_IMAGE"):
        chain.install(log=lambda _: None)
    monkeypatch.setenv("TOOL_IMAGE", "mine/tool:2")
    monkeypatch.setenv("PATH", str(_fake_docker(tmp_path, image_present=True)))
    assert chain.unavailable() is None
    command = chain.command(["checker", "--model", "m.onnx"], tmp_path)
    assert command[1:3] == ["run", "--rm"] and f"{tmp_path.resolve()}:/work" in command
    assert command[-4:] == ["tool", "checker", "--model", "m.onnx"] and "mine/tool:2" in command


def test_bpu_runs_hb_mapper_through_its_docker_image_when_not_on_path(tmp_path, monkeypatch):
    """No hb_mapper on PATH, an OpenExplorer image present: checker and makertbin run in a container."""
    from mnv4_deploy.converters.bpu.toolchain import hb_mapper_command, run_hb_mapper

    fixtures = Path(__file__).parent / "fixtures" / "hb_mapper"
    folder = _fake_docker(tmp_path, image_present=True)
    (folder / "docker").write_text(
        "#!/bin/sh\nif [ \"$1\" = image ]; then exit 0; fi\n"
        f"echo \"$@\" >> '{tmp_path / 'docker_calls.txt'}'\n"
        f"case \"$*\" in *checker*) /bin/cat '{fixtures / 'checker_bernoulli2.log'}';; "
        f"*) /bin/cat '{fixtures / 'makertbin_bayes_e.log'}';; esac\n")
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.setenv("MNV4_DEPLOY_HB_MAPPER_IMAGE", "oe/x5:test")
    found = run_hb_mapper(tmp_path, "m.onnx", "c.yaml", "bayes-e", "input", (1, 3, 8, 8), lambda _: None)
    assert found["executable"] == "docker image oe/x5:test"
    assert [n["op_type"] for n in found["checker"]["cpu_nodes"]] == ["Reshape", "Softmax", "Reshape"]
    calls = (tmp_path / "docker_calls.txt").read_text().splitlines()
    assert len(calls) == 2 and "oe/x5:test hb_mapper checker --model-type onnx --march bayes-e" in calls[0]
    assert "hb_mapper makertbin --config c.yaml" in calls[1]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert run_hb_mapper(tmp_path, "m.onnx", "c.yaml", "bayes-e", "input", (1, 3, 8, 8), lambda _: None) is None
    assert hb_mapper_command()[1] == ("hb_mapper not on PATH and docker is not installed "
                                      "(set MNV4_DEPLOY_HB_MAPPER_IMAGE): checker/makertbin not run")


def test_registered_toolchains_load():
    assert load_toolchain("rknn").name == "rknn" and load_toolchain("hb_mapper").name == "hb_mapper"
