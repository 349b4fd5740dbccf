"""A real `mnv4-deploy` process that stops inside a conversion, for signal and lock tests.

`python tests/reliability_driver.py READY_FILE ARGS...` runs `mnv4-deploy ARGS...` with the ONNX
converter replaced by one that writes its private work directory's path to READY_FILE and then
waits. The test then holds a run that owns the output directory's lock and has temporary work
on disk, and can send it SIGTERM or SIGKILL at a known point (no timing guesses).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def _wait(seconds: float) -> None:
    """Sleep in short naps, not one long sleep.

    The kernel may hand a process-directed SIGINT/SIGTERM to any thread of the process (torch and
    the runtimes start some); Python then runs the handler only when the main thread next executes
    bytecode, which a single `time.sleep(600)` would delay by ten minutes.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


def sleep_until_interrupted(ready: str, unit_dir: str) -> str:
    """A build unit stand-in for a pool worker: says it runs, then waits for a Ctrl-C."""
    from mnv4_deploy.build import units_stopped

    if units_stopped(unit_dir):  # what build._run_unit checks first
        return "not started"
    try:  # a Ctrl-C right after `ready` appears may land while it is still being written
        Path(ready).write_text(str(__import__("os").getpid()))
        _wait(150)  # longer than the test waits for the result: a lost Ctrl-C fails as "slept", not a hang
    except KeyboardInterrupt:
        return "interrupted"
    return "slept"


def main() -> None:
    ready = Path(sys.argv[1])
    import mnv4_deploy.converters.onnx as onnx_converter

    def blocking_convert(self, job):
        (job.workdir / "partial.onnx").write_bytes(b"half of a model")
        ready.write_text(str(job.workdir))
        _wait(600)
        raise AssertionError("the test should have signalled this process")

    onnx_converter.OnnxConverter.convert = blocking_convert
    from mnv4_deploy.cli import main as cli_main

    sys.argv = ["mnv4-deploy", *sys.argv[2:]]
    cli_main()


if __name__ == "__main__":
    main()
