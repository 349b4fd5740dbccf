"""`mnv4-deploy check model.onnx --target rknn [--platform rk3576]`: the toolkit's own placement.

Any ONNX classifier: the toolkit builds it as given (a QDQ model keeps its int8 numerics, a
float one becomes fp16; mean 0, std 1) for the platform, and its layer table says which layers
fall back to the CPU. A QDQ model is built at the optimization level rknn-int8 uses (2): at
level 3 the toolkit's compiler segfaults on MNv4 hybrid int8 (docs/rknn.md). Nothing is written
next to the model.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mnv4_deploy.errors import UsageError

from .layers import placement, placement_table
from .run import BUILD_TIMEOUT_S, QDQ_OPTIMIZATION_LEVEL, session_log
from .toolchain import open_session


def _input(path: Path) -> tuple[str, list[int], bool]:
    """The model's one image input, its shape (dynamic dimensions pinned to 1), and whether it is QDQ."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"{path}: not an ONNX model ({type(exc).__name__})", "pass a .onnx file") from None
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise UsageError(f"{path}: the RKNN check takes a model with one NCHW image input "
                         f"({len(inputs)} input(s) found)", "export the classifier with one input")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims, any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def check_onnx(target: str, path: Path, platform: str) -> dict[str, Any]:
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"{path}: the RKNN check reads ONNX models", "pass a .onnx file (e.g. one --to onnx wrote)")
    name, shape, qdq = _input(path)
    with open_session(target, session_log(target)) as session, tempfile.TemporaryDirectory() as tmp:
        built, _ = session.call("build", {"onnx": str(path.resolve()), "input_name": name, "input_shape": shape,
                                          "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "platform": platform,
                                          "rknn_out": str(Path(tmp) / "check.rknn"),
                                          "optimization_level": QDQ_OPTIMIZATION_LEVEL if qdq else 3},
                                  timeout=BUILD_TIMEOUT_S)
    placed = placement(built["layer_table"])
    return {"target": target, "platform": platform, "toolkit": built["toolkit"], "fully_mapped": placed["fully_on_npu"],
            "placement": placed, "off_npu_op_types": sorted({layer["op"] for layer in placed["off_npu"]}),
            "table": placement_table(placed, f"{path.name} on {platform} (rknn-toolkit2 {built['toolkit']})")}
