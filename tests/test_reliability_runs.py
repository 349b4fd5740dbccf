"""Reliability of whole runs: one run per --out, SIGTERM/SIGKILL mid-conversion, disk full.

Signals go to real processes (tests/reliability_driver.py stops a run inside a conversion, so
there is no timing guess); disk-full is simulated where the artifact, report and bundle writes
happen, and for real on a tiny tmpfs when this machine lets the tests mount one.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mnv4_deploy import run_lock
from mnv4_deploy.cli import app, export_app

from conftest import make_images

REPO = Path(__file__).resolve().parents[1]
FAST = ["--img-size", "32", "--golden-count", "2", "--no-simplify"]
runner = CliRunner()


def _export(*args: str):
    return runner.invoke(export_app, list(args))


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _start_blocked_run(out: Path, ready: Path) -> subprocess.Popen:
    """A real export that holds `out` and stops inside the ONNX conversion (see reliability_driver)."""
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "reliability_driver.py"), str(ready), "export",
                             "--model", "conv_small", "--to", "onnx", "--out", str(out), *FAST],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1"})


def _wait_ready(proc: subprocess.Popen, ready: Path) -> Path:
    deadline = time.monotonic() + 300
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the blocked run ended early: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the blocked run never reached its conversion")
        time.sleep(0.2)
    return Path(ready.read_text())


@pytest.fixture(scope="module")
def blocked_runs(tmp_path_factory):
    """Two real runs stopped mid-conversion (started together: their start-up overlaps).

    "term" is refused-against, then gets SIGTERM; "kill" gets SIGKILL.
    """
    tmp = tmp_path_factory.mktemp("blocked")
    started = {name: (_start_blocked_run(tmp / name, tmp / f"{name}.ready"), tmp / name) for name in ("term", "kill")}
    runs = {name: (proc, out, _wait_ready(proc, tmp / f"{name}.ready")) for name, (proc, out) in started.items()}
    yield runs
    for proc, _, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_run_on_a_busy_out_is_refused_naming_the_first(blocked_runs, tmp_path):
    proc, out, workdir = blocked_runs["term"]
    owner = json.loads((out / run_lock.LOCK_NAME).read_text())
    assert owner["pid"] == proc.pid and owner["host"] == run_lock.host_name()
    before = _names(out)
    result = _export("--model", "conv_small", "--to", "onnx", "--out", str(out), *FAST)
    assert result.exit_code == 6, result.output
    errors = _error_lines(result)
    assert len(errors) == 1 and "Traceback" not in result.output
    assert f"is in use by another mnv4-deploy run (pid {proc.pid} on {owner['host']}" in errors[0]
    assert "export" in errors[0] and "choose another --out" in errors[0]
    assert _names(out) == before and workdir.is_dir()  # the first run's work is untouched
    assert json.loads((out / run_lock.LOCK_NAME).read_text())["token"] == owner["token"]
    bench = runner.invoke(app, ["benchmark", "--models", "conv_small", "--targets", "onnx", "--out", str(out),
                                "--img-size", "32", "--golden-count", "2", "--quiet"])
    assert bench.exit_code == 6 and "is in use by another mnv4-deploy run" in bench.stderr


def test_sigterm_is_handled_like_ctrl_c_with_exit_143(blocked_runs):
    proc, out, workdir = blocked_runs["term"]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "terminated (SIGTERM): no half-written artifact was left" in stderr and "Traceback" not in stderr
    assert not workdir.exists()
    assert _names(out) == ["SHA256SUMS", "manifest.json", "report.json", "report.md"]  # no artifact, no lock
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True
    assert [(r["target"], r["status"]) for r in report["results"]] == [("onnx", "skipped")]


def test_a_sigkilled_run_leaves_a_stale_lock_and_work_that_the_next_run_removes(blocked_runs):
    proc, out, workdir = blocked_runs["kill"]
    proc.kill()  # SIGKILL: what the OOM killer does; no handler runs
    proc.communicate(timeout=60)
    assert (out / run_lock.LOCK_NAME).exists() and workdir.is_dir()  # what a killed run leaves
    result = _export("--model", "conv_small", "--to", "onnx", "--out", str(out), *FAST)
    assert result.exit_code == 0, result.output
    assert f"taking over the stale lock of pid {proc.pid}" in result.stderr
    assert f"removed stale temporary {workdir.name}" in result.stderr
    assert _names(out) == ["SHA256SUMS", "conv_small.onnx", "manifest.json", "report.json", "report.md"]


def test_lock_of_another_host_or_garbled_is_never_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / run_lock.LOCK_NAME
    lock.write_text(json.dumps({"pid": 1, "host": "ci-runner-7", "started": "2026-01-01T00:00:00Z",
                                "command": "mnv4-deploy build"}))
    result = _export("--model", "conv_small", "--out", str(out), *FAST)
    assert result.exit_code == 6 and "pid 1 on ci-runner-7" in result.stderr and f"delete {lock}" in result.stderr
    lock.write_text("\x00garbage")
    result = _export("--model", "conv_small", "--out", str(out), *FAST)
    assert result.exit_code == 6 and "an unknown run (the lock file is unreadable)" in result.stderr
    assert _names(out) == [run_lock.LOCK_NAME]


def test_a_dead_local_owner_is_stale_and_a_reused_pid_too(tmp_path):
    me = run_lock._owner_record("t")
    assert not run_lock.is_stale(me)  # this live process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert run_lock.is_stale({**me, "pid": int(dead.stdout)})
    assert run_lock.is_stale({**me, "process_start": "1"})  # same pid, another process start: reused
    assert not run_lock.is_stale({**me, "host": "elsewhere", "pid": int(dead.stdout)})


def test_the_lock_is_released_on_errors_and_on_ctrl_c(tmp_path, monkeypatch):
    import mnv4_deploy.pipeline as pipeline

    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bad = _export("--model", "conv_small", "--out", str(out), "--data", str(corrupt), *FAST)  # fails holding the lock
    assert bad.exit_code == 2 and "none of the 1 images could be read" in bad.stderr
    assert _names(out) == []

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_target", interrupted)
    result = _export("--model", "conv_small", "--out", str(out), *FAST)
    assert result.exit_code == 130 and "interrupted:" in result.stderr
    assert not (out / run_lock.LOCK_NAME).exists() and not list(out.glob(".tmp-*"))
    assert json.loads((out / "report.json").read_text())["interrupted"] is True


def test_nested_runs_of_one_process_and_jobs_directories_do_not_block_each_other(tmp_path):
    out = tmp_path / "out"
    (out / "conv_small").mkdir(parents=True)
    with run_lock.output_lock(out):
        with run_lock.output_lock(out):  # re-entrant: benchmark -> merge in the same process
            pass
        assert (out / run_lock.LOCK_NAME).exists()
        with run_lock.output_lock(out / "conv_small"):  # a model's directory under a held matrix directory
            assert (out / "conv_small" / run_lock.LOCK_NAME).exists()
    assert _names(out) == ["conv_small"] and _names(out / "conv_small") == []


@pytest.mark.parametrize("started_in_background", [False, True], ids=["foreground", "sigint-ignored"])
def test_sigterm_in_build_jobs_passes_running_units_a_ctrl_c_and_cancels_queued_ones(tmp_path, started_in_background):
    from mnv4_deploy.build import _stop_units, unit_pool
    from mnv4_deploy.signals import Terminated

    sys.path.insert(0, str(REPO / "tests"))
    from reliability_driver import sleep_until_interrupted

    ready = tmp_path / "unit.ready"
    units = tmp_path / ".units"
    units.mkdir()
    # `mnv4-deploy build --jobs 2 &` from a shell without job control starts with SIGINT ignored,
    # and spawned workers inherit that: the pool must still give its units a working Ctrl-C
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if started_in_background else None
    try:
        pool = unit_pool(1)
        running = pool.submit(sleep_until_interrupted, str(ready), str(units / "a"))
    finally:
        if started_in_background:
            signal.signal(signal.SIGINT, previous)
    with pool:
        queued = [pool.submit(sleep_until_interrupted, str(tmp_path / f"never{i}.ready"), str(units / f"b{i}"))
                  for i in range(3)]
        deadline = time.monotonic() + 300
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the unit never started"
        _stop_units(pool, Terminated("signal 15"), units)
        assert running.result(timeout=120) == "interrupted"  # the unit got a Ctrl-C and could finish its report
    # cancelled, or already handed to the worker and returning without starting
    assert all(f.cancelled() or f.result() == "not started" for f in queued)
    assert not list(tmp_path.glob("never*.ready"))


# ---- disk full ----------------------------------------------------------------------------
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_the_report_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    import mnv4_deploy.artifacts as artifacts

    real_fdopen = os.fdopen

    def full_fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        handle.write = _enospc
        return handle

    monkeypatch.setattr(artifacts.os, "fdopen", full_fdopen)
    out = tmp_path / "out"
    result = _export("--model", "conv_small", "--to", "onnx", "--out", str(out), *FAST)
    assert result.exit_code == 2, result.output
    errors = _error_lines(result)
    assert len(errors) == 1 and f"cannot write {out / 'report.json'}: No space left on device" in errors[0]
    assert "Traceback" not in result.output
    assert _names(out) == ["conv_small.onnx"]  # complete, renamed before the report; no temp, no lock


def test_disk_full_inside_a_converter_removes_its_work_and_names_the_out_dir(tmp_path, monkeypatch):
    import mnv4_deploy.converters.onnx as onnx_converter

    monkeypatch.setattr(onnx_converter.OnnxConverter, "convert", lambda self, job: _enospc())
    out = tmp_path / "out"
    result = _export("--model", "conv_small", "--to", "onnx", "--out", str(out), *FAST)
    assert result.exit_code == 2, result.output
    assert _error_lines(result) == [f"error: cannot write the onnx artifact in {out}: No space left on device "
                                    "(free space (or quota) under the output directory, or choose another --out; "
                                    "nothing half-written was kept)"]
    assert _names(out) == []


def test_disk_full_while_writing_a_bpu_bundle_is_one_line_and_no_bundle_is_left(tmp_path, monkeypatch):
    import mnv4_deploy.converters.bpu.build as bpu_build

    make_images(tmp_path / "calib", 2, size=(40, 40))
    monkeypatch.setattr(bpu_build, "write_calibration_files", _enospc)
    out = tmp_path / "out"
    result = _export("--model", "conv_small", "--to", "bpu-x5", "--calib-data", str(tmp_path / "calib"),
                     "--calib-size", "2", "--out", str(out), *FAST)
    assert result.exit_code == 2, result.output
    assert _error_lines(result)[0].startswith(f"error: cannot write the bpu-x5 artifact in {out}: No space left")
    assert _names(out) == []


def test_disk_full_while_replacing_a_bundle_directory_keeps_the_old_one(tmp_path, monkeypatch):
    import mnv4_deploy.artifacts as artifacts

    dest = tmp_path / "m.bayes-e.bpu"
    dest.mkdir()
    (dest / "manifest.json").write_text("old")
    new = tmp_path / "work" / "m.bayes-e.bpu"
    new.mkdir(parents=True)
    (new / "manifest.json").write_text("new")
    real_replace = os.replace

    def full_second_rename(src, dst):
        if Path(src) == new:
            _enospc()
        real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", full_second_rename)
    with pytest.raises(Exception) as caught:
        artifacts.move_into_place(new, dest)
    assert caught.value.exit_code == 2 and f"cannot write {dest}" in str(caught.value)
    assert (dest / "manifest.json").read_text() == "old" and _names(tmp_path) == ["m.bayes-e.bpu", "work"]


def test_disk_full_for_real_on_a_tiny_tmpfs(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated disk-full tests cover the paths")
    try:
        result = _export("--model", "conv_small", "--to", "onnx", "--out", str(mount / "out"), *FAST)
        assert result.exit_code == 2, result.output
        assert _error_lines(result)[0].startswith(f"error: cannot write the onnx artifact in {mount / 'out'}: "
                                                  "No space left on device")
        assert _names(mount / "out") == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_stale_temp_cleanup_removes_only_dead_runs_work(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = run_lock.host_name()
    names = {f".tmp-{dead.stdout.strip()}@{host}_abc": "dead run", f".tmp-{os.getpid()}@{host}_live": "this run",
             ".tmp-1@another-host_x": "other host, under the lock: stale", ".tmp-k3x_9abc": "older version",
             ".tmp-notes.txt": "a user's file"}
    for name in names:
        (tmp_path / name).mkdir()
    messages: list[str] = []
    removed = run_lock.remove_stale_temp(tmp_path, messages.append)
    assert sorted(removed) == sorted([f".tmp-{dead.stdout.strip()}@{host}_abc", ".tmp-1@another-host_x",
                                      ".tmp-k3x_9abc"])
    assert _names(tmp_path) == sorted([f".tmp-{os.getpid()}@{host}_live", ".tmp-notes.txt"])
    assert len(messages) == 3 and all(m.startswith("removed stale temporary") for m in messages)
