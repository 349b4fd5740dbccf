"""OpenVINO IR: ONNX -> `ov.Model` -> `.xml`/`.bin`, metadata in rt_info, run on the CPU plugin.

The artifact is one directory `<model>.openvino/` holding `<model>.xml` (topology, rt_info) and
`<model>.bin` (weights): the pair only works together, so it is hashed, moved and validated as
one. `describe`/`runner` also take the `.xml` itself (with its `.bin` beside it).

`ov.convert_model` reads the ONNX from memory (BytesIO), so no temporary path ends up in the
IR's `conversion_parameters`; the embedded JSON is sorted. The CPU plugin is pinned to fp32
inference precision (`INFERENCE_PRECISION_HINT=f32`): on CPUs with bf16 or AMX units its
default may compute in bf16, which would judge a different model than the one exported.

The judged runner also compiles with `SNIPPETS_MODE=DISABLE`. With snippets on (the plugin's
default), OpenVINO 2026.4.1 fuses MNv4-hybrid's multi-query attention into 12 JIT "Subgraph"
kernels whose output is not the model's: cosine 0.9798 against onnxruntime on the very same
ONNX (random-init hybrid_medium, 64 px; 0.977-0.983 from run to run), while every intermediate
tensor matches to 1e-3 once exposed as an output (which stops the fusion), and with snippets off
the cosine is 0.9999998. The default-kernel runner is kept as one of the runner's `cross_checks`, so
the report shows what a deployment with OpenVINO's defaults would compute.

On an x86 host with VNNI, a second cross-check runs the IR with oneDNN capped to AVX2
(`ONEDNN_MAX_CPU_ISA`, honoured by OpenVINO's CPU plugin; in a fresh process, `isa_capped.py`):
the int8 kernels of CPUs without VNNI, whose int16 pair sums saturate (mnv4_deploy/quant/overflow.py).
So a report made on a VNNI host still shows what an AVX2-only host computes.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mnv4_deploy.batches import run_chunked
from mnv4_deploy.errors import DeployError, UsageError
from mnv4_deploy.host import X86, cpu_description
from mnv4_deploy.provenance import package_version
from mnv4_deploy.registry import Runner

RT_KEY = ["mnv4_deploy", "metadata"]
NUM_THREADS = 2
NO_VNNI_ISA = "AVX2"  # the ONEDNN_MAX_CPU_ISA value that stands for x86 CPUs without VNNI
CAPPED_TIMEOUT_S = 600
_GENERATED = re.compile(r"^[A-Za-z0-9]+_\d+$")


def onnx_to_ir(onnx_path: Path, out_dir: Path, stem: str, metadata: dict[str, Any], fp16_weights: bool,
               input_shape: list[int]) -> Path:
    """Convert an ONNX file to `<out_dir>/<stem>.xml` + `.bin` with a static `input_shape`; return the .xml path.

    Static like the other targets' artifacts (the QDQ ONNX has a dynamic batch axis): OpenVINO
    plans its CPU kernels for the shape it is given.
    """
    import openvino as ov

    model = ov.convert_model(io.BytesIO(Path(onnx_path).read_bytes()))
    model.reshape([int(d) for d in input_shape])
    _stable_names(model)
    model.set_rt_info(json.dumps(metadata, sort_keys=True), RT_KEY)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / f"{stem}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=fp16_weights)
    return xml


def _stable_names(model: Any) -> None:
    """Rename OpenVINO's generated op names (`Reshape_73397`: a process-wide counter) by position.

    Names taken from the ONNX (`/blocks/.../Conv`, `input`, `logits`) are kept; the generated
    ones would otherwise differ between two exports in one process.
    """
    for index, op in enumerate(model.get_ordered_ops()):
        if _GENERATED.match(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{index}")


def ir_files(path: Path) -> tuple[Path, Path]:
    """(.xml, .bin) of an IR artifact directory, or of an .xml given directly; one line when not there."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise UsageError(f"{path}: expected one OpenVINO .xml inside, found {len(xmls)}",
                             "pass the <model>.openvino directory an openvino target wrote")
        xml = xmls[0]
    elif path.suffix == ".xml" and path.is_file():
        xml = path
    else:
        raise UsageError(f"{path}: not an OpenVINO IR (a <model>.openvino directory or an .xml)",
                         "pass the directory an openvino target wrote")
    weights = xml.with_suffix(".bin")
    if not weights.is_file():
        raise UsageError(f"{xml}: its weights file {weights.name} is missing", "keep the .xml and .bin together")
    return xml, weights


def read_ir(path: Path) -> Any:
    """The `ov.Model` of an IR artifact; a corrupt or mismatched pair is one line naming it."""
    import openvino as ov

    xml, weights = ir_files(path)
    try:
        return ov.Core().read_model(str(xml), str(weights))
    except Exception as exc:
        text = str(exc).strip().splitlines()
        detail = next((line.strip() for line in text if line.strip() and "Exception" not in line), type(exc).__name__)
        raise UsageError(f"{xml}: not a readable OpenVINO IR ({detail[:160]})",
                         "check the .xml/.bin pair is complete and belongs together; re-export it") from None


def read_metadata(model: Any) -> dict[str, Any]:
    """The JSON the exporter stored in rt_info ({} for an IR from elsewhere)."""
    if not model.has_rt_info(RT_KEY):
        return {}
    try:
        return json.loads(model.get_rt_info(RT_KEY).astype(str))
    except Exception:
        return {}


def _ports(ports: Any) -> list[dict[str, Any]]:
    out = []
    for port in ports:
        shape = port.get_partial_shape()
        dims = [d.get_length() if d.is_static else "?" for d in shape]
        names = sorted(port.get_names())
        out.append({"name": names[0] if names else "", "shape": dims, "dtype": port.get_element_type().get_type_name()})
    return out


def op_histogram(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        name = op.get_type_name()
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def weight_types(model: Any) -> dict[str, int]:
    """Element types of the IR's Constant nodes (how weights are stored: f32, f16, i8, ...)."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            name = op.get_output_element_type(0).get_type_name()
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def describe_ir(path: Path) -> dict[str, Any]:
    """What is inside an IR: I/O, op histogram, weight storage types, the embedded metadata."""
    model = read_ir(path)
    xml, weights = ir_files(path)
    return {"format": "openvino-ir", "files": [xml.name, weights.name], "inputs": _ports(model.inputs),
            "outputs": _ports(model.outputs), "op_histogram": op_histogram(model),
            "constant_types": weight_types(model), "metadata": read_metadata(model),
            "bytes": xml.stat().st_size + weights.stat().st_size}


def compile_ir(path: Path, threads: int = NUM_THREADS, snippets: bool = False) -> Any:
    """The IR compiled for OpenVINO's CPU plugin: fp32 inference precision, `threads` threads.

    `snippets=False` turns the plugin's JIT-fused subgraphs off (module docstring).
    """
    import openvino as ov

    model = read_ir(path)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32"}
    if not snippets:
        config["SNIPPETS_MODE"] = "DISABLE"
    return core.compile_model(model, "CPU", config)


def ir_runner(path: Path, snippets: bool = False, no_vnni_check: bool = False) -> Runner:
    """OpenVINO CPU: NCHW float32 batch -> float32 logits, in chunks of the IR's fixed batch.

    Judged with snippets off; its `cross_checks` run the plugin's default (snippets on) and, with
    `no_vnni_check` on a VNNI host, the kernels of a CPU without VNNI (`capped_ir_runner`: for int8 IRs).
    """
    compiled = compile_ir(path, snippets=snippets)
    request = compiled.create_infer_request()
    dim = compiled.inputs[0].get_partial_shape()[0]
    fixed = dim.get_length() if dim.is_static else None

    def infer(chunk: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer({0: chunk})[compiled.outputs[0]], dtype=np.float32).copy()

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return run_chunked(infer, batch, fixed or batch.shape[0])

    runtime = (f"openvino {package_version('openvino')} CPU plugin ({NUM_THREADS} threads, fp32 inference precision, "
               + ("snippets on: the plugin's default)" if snippets else "snippets off)"))
    if snippets:
        return Runner(run=run, runtime=runtime)
    checks = [ir_runner(path, snippets=True)]
    if no_vnni_check and can_cap_to_no_vnni():
        checks.append(capped_ir_runner(path))
    return Runner(run=run, runtime=runtime, cross_checks=tuple(checks))


def can_cap_to_no_vnni() -> bool:
    """True on an x86 host with VNNI and no ISA cap set already: capping then shows another CPU class."""
    cpu = cpu_description()
    return cpu["machine"].lower() in X86 and cpu["vnni"] and not cpu["isa_caps"]


def capped_ir_runner(path: Path, isa: str = NO_VNNI_ISA) -> Runner:
    """The IR on OpenVINO's CPU plugin with oneDNN capped at `isa`, each batch in a fresh process."""
    xml, _ = ir_files(path)
    script = Path(__file__).with_name("isa_capped.py")

    def run(batch: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="mnv4-isa-") as tmp:
            inputs, outputs = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
            np.save(inputs, np.ascontiguousarray(batch, dtype=np.float32))
            env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
            try:
                done = subprocess.run([sys.executable, str(script), str(xml), str(inputs), str(outputs),
                                       str(NUM_THREADS)], env=env, capture_output=True, text=True,
                                      timeout=CAPPED_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise DeployError(f"openvino ({isa}-capped cross-check): no result within {CAPPED_TIMEOUT_S} s") from None
            if done.returncode != 0 or not outputs.is_file():
                last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
                raise DeployError(f"openvino ({isa}-capped cross-check) failed: {last[:200]}")
            return np.load(outputs)

    runtime = (f"openvino {package_version('openvino')} CPU plugin, oneDNN capped at {isa} "
               "(ONEDNN_MAX_CPU_ISA): the int8 kernels of x86 CPUs without VNNI")
    return Runner(run=run, runtime=runtime)
