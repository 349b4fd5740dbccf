"""Seeded fuzzing of the artifact readers: truncations and byte flips of real artifacts.

Run as a script in a child process (`python tests/reliability_fuzz.py ARTIFACT_DIR N SEED OUT.json`)
so that a native crash in a parser (a segfault in a runtime's flatbuffer code) is counted as
a failed case instead of killing pytest. Each case copies one artifact, damages it, and calls
the readers `inspect`, `validate` and `check` use, inside `artifact_guard.reading()` exactly as
the CLI does. A case is clean when every reader either returns or raises a typed `DeployError`
(one line); the outcome is also classified: parsed anyway, refused by the reader's own check
(`typed`), refused by the guard's catch-all (`wrapped`), over the time limit (`timeout`).
Before each case its name is written to OUT.json.progress, so a crash names the case.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

# format -> (suffix of the artifact in the export directory, [(target, reader method)]); "runner"
# opens the artifact's runtime, as `validate` does inside the guarded read
READERS = {
    "onnx": (".onnx", [("onnx", "describe"), ("onnx", "runner"), ("bpu-x5", "check")]),
    "tflite": (".tflite", [("tflite", "describe"), ("tflite", "runner"), ("edgetpu", "check")]),
    "mlpackage": (".mlpackage", [("coreml", "describe"), ("coreml", "runner")]),
    "bpu": (".bayes-e.bpu", [("bpu-x5", "describe"), ("bpu-x5", "runner")]),
}


def _reader(target: str, method: str):
    from mnv4_deploy.registry import Artifact, load_target

    conv = load_target(target)
    if method == "runner":
        return lambda path: conv.runner(Artifact(target, path, conv.info.precision))
    return getattr(conv, method)


def find_artifacts(folder: Path) -> dict[str, Path]:
    found = {}
    for fmt, (suffix, _) in READERS.items():
        hits = sorted(p for p in folder.iterdir() if p.name.endswith(suffix)
                      and not any(p.name.endswith(s) for s in (".fp16.onnx", ".int8.onnx", ".fp16.tflite")))
        if hits:
            found[fmt] = hits[0]
    return found


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def mutate(src: Path, dest: Path, rng: random.Random) -> str:
    """Copy `src` to `dest` and damage one file of it; return what was done."""
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy2(src, dest)
    files = _files(dest)
    victim = files[rng.randrange(len(files))]
    data = bytearray(victim.read_bytes())
    rel = victim.relative_to(dest) if dest.is_dir() else victim.name
    kind = rng.choice(["truncate", "truncate", "flip", "flip", "flip", "header"]) if data else "empty"
    if kind == "truncate":
        cut = rng.choice([0, 1, 4, 8, 16, rng.randrange(len(data)), rng.randrange(len(data)), len(data) - 1])
        victim.write_bytes(bytes(data[:max(0, min(cut, len(data) - 1))]))
        return f"{rel}: truncated to {max(0, min(cut, len(data) - 1))} of {len(data)} bytes"
    if kind == "header":  # the first 64 bytes hold the offsets and tables parsers follow first
        positions = [rng.randrange(min(64, len(data))) for _ in range(rng.randint(1, 4))]
    elif kind == "flip":
        positions = [rng.randrange(len(data)) for _ in range(rng.randint(1, 16))]
    else:
        return f"{rel}: empty"
    for pos in positions:
        data[pos] ^= rng.randrange(1, 256)
    victim.write_bytes(bytes(data))
    return f"{rel}: {len(positions)} byte(s) flipped ({kind})"


def run(folder: Path, cases: int, seed: int, out: Path, timeout_s: float = 30.0) -> dict:
    from mnv4_deploy.artifact_guard import reading
    from mnv4_deploy.errors import ArtifactUnreadable, DeployError

    artifacts = find_artifacts(folder)
    rng = random.Random(seed)
    tally = {"tried": 0, "clean": 0, "parsed": 0, "typed": 0, "wrapped": 0, "timeout": 0, "slowest_s": 0.0,
             "not_clean": []}
    per_format = {fmt: {"tried": 0, "clean": 0} for fmt in artifacts}
    progress = Path(str(out) + ".progress")
    for fmt, src in artifacts.items():  # imports (coremltools: tens of seconds) stay out of the time limit
        for target, method in READERS[fmt][1]:
            _reader(target, method)(src)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(cases):
            fmt = sorted(artifacts)[case % len(artifacts)]
            src = artifacts[fmt]
            dest = Path(tmp) / f"case{case}" / src.name
            dest.parent.mkdir()
            what = mutate(src, dest, rng)
            for target, method in READERS[fmt][1]:
                progress.write_text(json.dumps({"case": case, "format": fmt, "mutation": what,
                                                "reader": f"{target} {method}"}))
                tally["tried"] += 1
                per_format[fmt]["tried"] += 1
                reader = _reader(target, method)
                t0 = time.perf_counter()
                try:
                    with reading(dest, f"{target} artifact", seconds=timeout_s):
                        reader(dest)
                    outcome = "parsed"
                except ArtifactUnreadable as exc:
                    outcome = "timeout" if "took longer than" in exc.message else "wrapped"
                except DeployError:
                    outcome = "typed"
                except BaseException as exc:  # what the guard let through: a traceback in the CLI
                    outcome = f"escaped {type(exc).__name__}: {str(exc)[:120]}"
                if outcome in ("parsed", "typed", "wrapped", "timeout"):
                    tally[outcome] += 1
                if outcome not in ("parsed", "typed", "wrapped"):  # a timeout is bounded, still not clean
                    tally["not_clean"].append({"case": case, "format": fmt, "mutation": what,
                                               "reader": f"{target} {method}", "outcome": outcome})
                else:
                    tally["clean"] += 1
                    per_format[fmt]["clean"] += 1
                took = time.perf_counter() - t0
                if took > tally["slowest_s"]:
                    tally["slowest_s"], tally["slowest"] = round(took, 3), f"{fmt} {target} {method} {what}: {outcome}"
            shutil.rmtree(dest.parent, ignore_errors=True)
    tally["per_format"] = per_format
    tally["seconds"] = round(time.perf_counter() - started, 2)
    out.write_text(json.dumps(tally, indent=1))
    progress.unlink(missing_ok=True)
    return tally


if __name__ == "__main__":
    result = run(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    print(json.dumps({k: v for k, v in result.items() if k != "not_clean"} | {"not_clean": len(result["not_clean"])}))
