"""The worker side of the toolchain protocol: run by the toolchain venv's Python, by path.

    <venv>/bin/python worker_main.py HANDLER.py EXCHANGE_DIR

Standalone on purpose: it imports only the standard library and numpy, because the toolchain
venv has none of mnv4-deploy's dependencies (and often older versions of the shared ones).
HANDLER.py is the vendor's module (e.g. converters/rknn/worker.py), loaded by path; it
defines `COMMANDS = {name: function(args, arrays, workdir) -> result}` where a result is a
JSON-able dict, or a (dict, {name: ndarray}) pair, and may define `hello() -> dict`.

Protocol 1, one JSON object per line:
- the worker's first line: {"protocol": 1, "ok": true, "hello": {...}} (or ok false + error);
- a request on stdin: {"protocol": 1, "id": N, "command": NAME, "args": {...},
  "arrays": {name: file}} with each array an .npy file in EXCHANGE_DIR;
- the reply: {"protocol": 1, "id": N, "ok": true, "result": {...}, "arrays": {name: file}},
  or {"protocol": 1, "id": N, "ok": false, "error": ONE_LINE, "kind": "usage"|"failure"}.
The control lines go to the original stdout; everything else the vendor code prints (stdout
and stderr) goes to stderr, which the host writes to the toolchain log. End of stdin ends the
worker between calls; the host's death ends it at any time.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

PROTOCOL = 1


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:500] if lines else type(exc).__name__


def _load_handler(path: str):
    spec = importlib.util.spec_from_file_location("mnv4_toolchain_handler", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load handler {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exit_with_parent(parent: int) -> None:
    """End this worker when the host process is gone (killed mid-call, the worker would otherwise finish
    a vendor computation of an hour for nobody: end-of-file on stdin is only read between calls)."""
    def watch() -> None:
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    handler_path, exchange = sys.argv[1], Path(sys.argv[2])
    _exit_with_parent(os.getppid())
    control = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the vendor prints goes to the log, never into the control channel
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        control.write(json.dumps({"protocol": PROTOCOL, **message}) + "\n")
        control.flush()

    try:
        import numpy as np

        handler = _load_handler(handler_path)
        hello = handler.hello() if hasattr(handler, "hello") else {}
    except BaseException as exc:  # an import error in the vendor venv is the common case
        traceback.print_exc()
        send({"ok": False, "error": _one_line(exc), "kind": "failure"})
        return 1
    send({"ok": True, "hello": hello})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        rid = request.get("id")
        if request.get("protocol") != PROTOCOL:
            send({"id": rid, "ok": False, "error": f"protocol {request.get('protocol')} asked, this worker speaks "
                                                   f"{PROTOCOL}", "kind": "failure"})
            continue
        function = getattr(handler, "COMMANDS", {}).get(request.get("command"))
        if function is None:
            send({"id": rid, "ok": False, "error": f"unknown command {request.get('command')!r}; this worker knows "
                                                   f"{', '.join(sorted(getattr(handler, 'COMMANDS', {})))}",
                  "kind": "failure"})
            continue
        try:
            arrays = {name: np.load(exchange / file) for name, file in request.get("arrays", {}).items()}
            workdir = exchange / f"work-{rid}"
            workdir.mkdir(exist_ok=True)
            result = function(request.get("args", {}), arrays, workdir)
            out_arrays = {}
            if isinstance(result, tuple):
                result, out_arrays = result
            files = {}
            for name, array in out_arrays.items():
                files[name] = f"out-{rid}-{name}.npy"
                np.save(exchange / files[name], np.asarray(array))
            send({"id": rid, "ok": True, "result": result, "arrays": files})
        except BaseException as exc:  # noqa: BLE001  (reported to the host, which raises its own error)
            traceback.print_exc()
            send({"id": rid, "ok": False, "error": _one_line(exc), "kind": getattr(exc, "kind", "failure")})
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
