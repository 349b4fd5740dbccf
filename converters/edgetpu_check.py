"""Static EdgeTPU compatibility check for .tflite files, and an `edgetpu_compiler` log parser.

Why: `edgetpu_compiler` runs only on x86-64 Debian/Ubuntu hosts, so most places that build the
int8 TFLite model cannot compile it. This module reads the flatbuffer, lists subgraph 0's
operators in execution order and checks each one against the EdgeTPU's documented operation
table, so a model that would leave the accelerator is refused (or reported) before anyone
ships it. Where the compiler *is* installed, `run_edgetpu_compiler` runs it and
`parse_compiler_log` turns its op-mapping table into the same row form.

Sources for the constraint table (`OP_TABLE` and the generic checks):
- Coral, "TensorFlow models on the Edge TPU", section "Supported operations" with its "Known
  limitations" column: https://coral.ai/docs/edgetpu/models-intro/#supported-operations
  (read through the copies the `search` tool holds: the page itself and two mirrors of its
  table, developer.axis.com/computer-vision/on-device/system-on-chip/artpec-7/supported-ops/
  (the ARTPEC-7 DLPU is an Edge TPU and uses edgetpu_compiler) and an older copy in
  dgist-datalab/Datalab_Intern Edge_TPU/convert_model_for_Edge_TPU.md). Model requirements
  from the same page: 8-bit quantized tensors, constant tensor sizes, constant model
  parameters (weights, biases), at most the 3 innermost dims > 1.
  Rows whose limitation text we could not read verbatim there (Softmax's 16,000-element cap,
  StridedSlice's masks, Squeeze/Transpose) are marked "(recalled)" in their docstring.
- Compiler status strings seen in published logs ("Only Strided-Slice with unitary strides
  supported", "Tensor has unsupported rank (up to 3 innermost dimensions mapped)", "More than
  one subgraph is not supported"): google-coral/edgetpu issues #60, #427, #461;
  tetutaro/yolo_various_framework weights/README.md; maxbbraun/thermal-face issue #2.
- Coral, "Edge TPU Compiler": https://coral.ai/docs/edgetpu/compiler/ (host requirements and
  the apt install commands in `INSTALL_HINT`; `-s` prints the op table, `-o` the out dir).
- This project's /work/shared/DESIGN.md section 5 (no grouped CONV_2D, no BATCH_MATMUL,
  no DEQUANTIZE mid-graph; the compiler maps ops up to the first unsupported one).
The Coral table documents no kernel-size or stride limits, so none are invented here.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mnv4_deploy.errors import BackendMissing, DeployError, UsageError

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite file
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
FALLS_BACK = "falls back: after first unsupported op"
BOUNDARY = ("float model I/O conversion at the graph boundary: runs on CPU without ending the "
            "EdgeTPU partition (convert with int8/uint8 I/O to avoid it)")
INSTALL_HINT = (
    "edgetpu_compiler runs only on 64-bit x86-64 Debian 6.0+/Ubuntu 10.0+ hosts; install it there with: "
    "curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && "
    'echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" '
    "| sudo tee /etc/apt/sources.list.d/coral-edgetpu.list && "
    "sudo apt-get update && sudo apt-get install edgetpu-compiler "
    "(https://coral.ai/docs/edgetpu/compiler/)"
)


# --------------------------------------------------------------------------------------------
# Errors: one small family, each also a core DeployError so the CLI maps it to an exit code.
# --------------------------------------------------------------------------------------------
class EdgeTpuCheckError(DeployError):
    """Base of everything this module raises."""


class NotAFlatbufferError(EdgeTpuCheckError, UsageError):
    """The file is missing, or is not a TFLite flatbuffer (exit 2: the user passed a bad file)."""


class TfliteSchemaMissing(EdgeTpuCheckError, BackendMissing):
    """Neither ai-edge-litert nor tensorflow is installed, so the flatbuffer cannot be read."""


class EdgeTpuCompilerMissing(EdgeTpuCheckError, BackendMissing):
    """`edgetpu_compiler` is not on PATH here (exit 5); the static check still works."""


class EdgeTpuCompilerFailed(EdgeTpuCheckError):
    """The compiler ran but produced no `_edgetpu.tflite`; `.log` holds what it printed."""

    def __init__(self, message: str, hint: str | None = None, log: "CompilerLog | None" = None):
        super().__init__(message, hint)
        self.log = log


# --------------------------------------------------------------------------------------------
# Reading the flatbuffer
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _schema() -> Any:
    """Generated flatbuffer bindings: LiteRT's copy (imports in ~0.3 s), else TensorFlow's."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as schema
        except ImportError as exc:
            raise TfliteSchemaMissing(
                "cannot read .tflite files: neither ai-edge-litert nor tensorflow is installed",
                hint="install mnv4-deploy[tflite]",
            ) from exc
    return schema


@functools.lru_cache(maxsize=None)
def _enum_names(enum_name: str) -> dict[int, str]:
    """Value -> name for one of the schema's enum classes (TensorType, BuiltinOperator, ...)."""
    enum = getattr(_schema(), enum_name)
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the check needs it; `raw` holds a constant's bytes for `values()`."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    signature: tuple[int, ...]  # shape with -1 where a dimension is dynamic
    is_constant: bool
    raw: bytes | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.signature))}]"

    def values(self) -> Any:
        """A constant's contents as a numpy array (axes, paddings, strides), else None."""
        if self.raw is None:
            return None
        import numpy as np

        np_dtype = {"INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64,
                    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT16": np.int16}.get(self.dtype)
        if np_dtype is None:
            return None
        return np.frombuffer(self.raw, dtype=np_dtype).reshape(self.shape)


@dataclass(frozen=True)
class OpInfo:
    """One operator of subgraph 0, in execution order."""

    index: int
    op: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    options: dict[str, Any]

    def input(self, position: int) -> TensorInfo | None:
        return self.inputs[position] if position < len(self.inputs) else None


@dataclass(frozen=True)
class TfliteGraph:
    """Subgraph 0 of a model, plus what the check needs from the rest of the file."""

    path: str
    ops: tuple[OpInfo, ...]
    input_indices: frozenset[int]
    output_indices: frozenset[int]
    n_subgraphs: int


def read_tflite(path: str | Path) -> TfliteGraph:
    """Parse a .tflite file into subgraph 0's operators; NotAFlatbufferError for anything else."""
    path = Path(path)
    buf = _read_flatbuffer_bytes(path)
    schema = _schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
        subgraph = model.subgraphs[0]
        tensors = [_tensor_info(i, t, model, buf) for i, t in enumerate(subgraph.tensors or [])]
        ops = tuple(_op_info(i, op, model, tensors) for i, op in enumerate(subgraph.operators or []))
    except NotAFlatbufferError:
        raise
    except Exception as exc:  # a corrupt flatbuffer fails with struct/index/type errors
        raise NotAFlatbufferError(
            f"{path}: has the TFLite identifier but cannot be parsed ({type(exc).__name__}); "
            "expected a valid .tflite flatbuffer"
        ) from exc
    return TfliteGraph(
        path=str(path),
        ops=ops,
        input_indices=frozenset(int(i) for i in (subgraph.inputs if subgraph.inputs is not None else [])),
        output_indices=frozenset(int(i) for i in (subgraph.outputs if subgraph.outputs is not None else [])),
        n_subgraphs=len(model.subgraphs),
    )


def _read_flatbuffer_bytes(path: Path) -> bytes:
    """The file's bytes, refused with one line unless it carries the TFL3 identifier."""
    if not path.is_file():
        raise NotAFlatbufferError(f"{path}: no such file; expected a .tflite flatbuffer")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != TFLITE_IDENTIFIER:
        raise NotAFlatbufferError(
            f"{path}: not a TFLite flatbuffer (expected the 'TFL3' identifier at bytes 4-8)"
        )
    return buf


def _tensor_info(index: int, t: Any, model: Any, buf: bytes) -> TensorInfo:
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    signature = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None else shape
    raw = _buffer_bytes(model.buffers[t.buffer], buf) if t.buffer and t.buffer < len(model.buffers) else None
    name = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name or "")
    return TensorInfo(index, name, _enum_names("TensorType").get(t.type, f"TYPE_{t.type}"),
                      shape, signature, raw is not None, raw)


def _buffer_bytes(buffer: Any, buf: bytes) -> bytes | None:
    """A buffer's payload: inline data, or (models over 2 GB) an offset/size into the file."""
    if buffer.data is not None and len(buffer.data):
        return bytes(buffer.data)
    if buffer.offset and buffer.offset > 1 and buffer.size:
        return buf[buffer.offset: buffer.offset + buffer.size]
    return None


def _op_info(index: int, op: Any, model: Any, tensors: Sequence[TensorInfo]) -> OpInfo:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)  # schema v3a: small codes in both
    name = _enum_names("BuiltinOperator").get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        name = f"CUSTOM:{custom}"
    ins = tuple(tensors[i] for i in (op.inputs if op.inputs is not None else []) if i >= 0)
    outs = tuple(tensors[i] for i in (op.outputs if op.outputs is not None else []) if i >= 0)
    return OpInfo(index, name, ins, outs, _options(name, op.builtinOptions, ins))


# Flatbuffer option attributes worth reporting: attribute -> (report key, enum for its names).
_SCALAR_OPTIONS: dict[str, tuple[str, str | None]] = {
    "fusedActivationFunction": ("fused_activation", "ActivationFunctionType"),
    "padding": ("padding", "Padding"),
    "depthMultiplier": ("depth_multiplier", None),
    "weightsFormat": ("weights_format", "FullyConnectedOptionsWeightsFormat"),
    "keepNumDims": ("keep_num_dims", None),
    "keepDims": ("keep_dims", None),
    "axis": ("axis", None),
    "beta": ("beta", None),
    "ellipsisMask": ("ellipsis_mask", None),
    "newAxisMask": ("new_axis_mask", None),
    "shrinkAxisMask": ("shrink_axis_mask", None),
    "adjX": ("adj_x", None),
    "adjY": ("adj_y", None),
}
_PAIR_OPTIONS: dict[str, tuple[str, str]] = {  # report key -> (h attribute, w attribute)
    "stride": ("strideH", "strideW"),
    "dilation": ("dilationHFactor", "dilationWFactor"),
    "filter": ("filterHeight", "filterWidth"),
}
# Where a conv-like op keeps its weights (OHWI for CONV_2D/TRANSPOSE_CONV, 1HWC for depthwise).
_WEIGHTS_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "TRANSPOSE_CONV": 1}


def _options(op_name: str, opts: Any, inputs: Sequence[TensorInfo]) -> dict[str, Any]:
    """The options that matter for the EdgeTPU, as plain JSON-able values."""
    out: dict[str, Any] = {}
    for attr, (key, enum) in _SCALAR_OPTIONS.items():
        if opts is not None and hasattr(opts, attr):
            value = getattr(opts, attr)
            out[key] = _enum_names(enum).get(value, value) if enum else _plain(value)
    for key, (h_attr, w_attr) in _PAIR_OPTIONS.items():
        if opts is not None and hasattr(opts, h_attr):
            out[key] = (int(getattr(opts, h_attr)), int(getattr(opts, w_attr)))
    weights_at = _WEIGHTS_INPUT.get(op_name)
    if weights_at is not None and len(inputs) > weights_at and len(inputs[weights_at].shape) == 4:
        weights = inputs[weights_at].shape
        out["filter"] = (weights[1], weights[2])
        if op_name == "CONV_2D":
            in_channels, filter_channels = inputs[0].shape[-1], weights[3]
            out["groups"] = in_channels // filter_channels if filter_channels else 1
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# --------------------------------------------------------------------------------------------
# Constraint checks. A check takes an op and returns the reasons it cannot map ([] = fine).
# --------------------------------------------------------------------------------------------
Check = Callable[[OpInfo], list[str]]

ACTIVATION_DTYPES = frozenset({"INT8", "UINT8"})
CONSTANT_DTYPES = frozenset({"INT8", "UINT8", "INT32"})  # int32: biases, shapes, axes, paddings
FUSABLE_ACTIVATIONS = frozenset({"NONE", "RELU", "RELU6", "RELU_N1_TO_1"})


def _tensor_label(t: TensorInfo) -> str:
    return f"tensor '{t.name}' {t.describe()}"


def _all_tensors(op: OpInfo) -> Iterable[TensorInfo]:
    return (*op.inputs, *op.outputs)


def check_tensor_types(op: OpInfo) -> list[str]:
    """Every tensor must be 8-bit quantized; constant parameters may also be int32 (biases)."""
    reasons = []
    for t in _all_tensors(op):
        allowed = CONSTANT_DTYPES if t.is_constant else ACTIVATION_DTYPES
        if t.dtype not in allowed:
            kind = "constant" if t.is_constant else "activation"
            reasons.append(f"{_tensor_label(t)} is {t.dtype}: EdgeTPU needs int8/uint8 {kind} tensors")
    return reasons


def check_static_shapes(op: OpInfo) -> list[str]:
    """Tensor sizes must be constant at compile time (no -1 in the shape signature)."""
    return [f"{_tensor_label(t)} has a dynamic shape: EdgeTPU needs static shapes"
            for t in _all_tensors(op) if any(d < 0 for d in t.signature)]


def check_tensor_rank(op: OpInfo) -> list[str]:
    """Only the 3 innermost dims of an activation may exceed 1; for NHWC that means batch 1."""
    reasons = []
    for t in _all_tensors(op):
        outer = t.shape[:-3]
        if t.is_constant or not any(d > 1 for d in outer):
            continue
        if len(t.shape) == 4 and outer[0] > 1:
            reasons.append(f"{_tensor_label(t)} has batch {outer[0]}: EdgeTPU runs batch 1")
        else:
            reasons.append(f"{_tensor_label(t)}: only the 3 innermost dimensions may be > 1 "
                           "(compiler: 'Tensor has unsupported rank')")
    return reasons


def check_fused_activation(op: OpInfo) -> list[str]:
    """Fused activations the EdgeTPU runs: RELU, RELU6, RELU_N1_TO_1 (its ReLU op family)."""
    act = op.options.get("fused_activation", "NONE")
    if act in FUSABLE_ACTIVATIONS:
        return []
    return [f"fused activation {act} is not supported (only RELU, RELU6, RELU_N1_TO_1)"]


GENERIC_CHECKS: tuple[Check, ...] = (
    check_tensor_types, check_static_shapes, check_tensor_rank, check_fused_activation,
)


def no_fused_activation(op: OpInfo) -> list[str]:
    """'No fused activation function.' (AveragePool2d, MaxPool2d, Concatenation)."""
    act = op.options.get("fused_activation", "NONE")
    return [] if act == "NONE" else [f"{op.op} with fused activation {act}: must have none"]


def same_dilation(op: OpInfo) -> list[str]:
    """'Must use the same dilation in x and y dimensions.' (Conv2d, DepthwiseConv2d)."""
    dh, dw = op.options.get("dilation", (1, 1))
    return [] if dh == dw else [f"dilation {dh}x{dw}: x and y dilation must be equal"]


def not_grouped(op: OpInfo) -> list[str]:
    """Grouped CONV_2D (filter channels < input channels) has no EdgeTPU kernel (DESIGN.md 5)."""
    groups = op.options.get("groups", 1)
    if groups == 1:
        return []
    in_ch, w = op.inputs[0].shape[-1], op.inputs[1]
    kind = "depthwise conv written as grouped" if groups == in_ch else "grouped"
    return [f"{kind} CONV_2D (groups={groups}: input channels {in_ch}, filter {w.describe()}): "
            "EdgeTPU has no grouped conv; use DEPTHWISE_CONV_2D or split the conv"]


def constant_params(*positions: int) -> Check:
    """'Model parameters (such as bias tensors) are constant at compile-time.'"""

    def check(op: OpInfo) -> list[str]:
        return [f"input {p} ({_tensor_label(t)}) is not a compile-time constant"
                for p in positions if (t := op.input(p)) is not None and not t.is_constant]

    check.__doc__ = constant_params.__doc__
    return check


def default_weights_format(op: OpInfo) -> list[str]:
    """'Only the default format is supported for fully-connected weights.'"""
    fmt = op.options.get("weights_format", "DEFAULT")
    return [] if fmt == "DEFAULT" else [f"weights format {fmt}: only DEFAULT is supported"]


def _non_unit_dims(t: TensorInfo) -> int:
    return sum(1 for d in t.shape if d > 1)


def one_dimensional_output(op: OpInfo) -> list[str]:
    """'Output tensor is one-dimensional.' (FullyConnected; [1, N] counts as one-dimensional)."""
    return [f"output {_tensor_label(t)} is not one-dimensional" for t in op.outputs if _non_unit_dims(t) > 1]


def one_dimensional_input(max_elements: int) -> Check:
    """'Supports only 1-D input tensor with a max of 16,000 elements.' (Softmax, recalled)."""

    def check(op: OpInfo) -> list[str]:
        t = op.inputs[0]
        n = 1
        for d in t.shape:
            n *= d
        if _non_unit_dims(t) > 1:
            return [f"{op.op} on {_tensor_label(t)}: only 1-D inputs are supported"]
        return [] if n <= max_elements else [f"{op.op} on {n} elements: at most {max_elements}"]

    check.__doc__ = one_dimensional_input.__doc__
    return check


def _axes(op: OpInfo, position: int) -> list[int] | None:
    """Axes held in a constant input, normalised against the data input's rank."""
    t = op.input(position)
    values = t.values() if t is not None else None
    if values is None:
        return None
    rank = len(op.inputs[0].shape) if position != 0 else len(op.inputs[1].shape)
    return [int(a) % rank if rank else int(a) for a in values.reshape(-1)]


def no_batch_axis(axes_input: int | None = None, option: str | None = None) -> Check:
    """'No reduction/packing/splitting in batch dimension.' (Mean, Sum, ReduceMax/Min, Pack, Split)."""

    def check(op: OpInfo) -> list[str]:
        if option is not None:
            axes = [int(op.options.get(option, 0))]
        else:
            axes = _axes(op, axes_input if axes_input is not None else 1)
            if axes is None:
                return [f"{op.op} axes are not a compile-time constant"]
        return [f"{op.op} operates on the batch dimension (axis 0)"] if 0 in axes else []

    check.__doc__ = no_batch_axis.__doc__
    return check


def z_reduction_multiple_of_4(op: OpInfo) -> list[str]:
    """Mean: 'If a z-reduction, the z-dimension must be multiple of 4.'"""
    axes, data = _axes(op, 1), op.inputs[0]
    if not axes or len(data.shape) < 2 or (len(data.shape) - 1) not in axes:
        return []
    z = data.shape[-1]
    return [] if z % 4 == 0 else [f"MEAN over the channel (z) dimension of size {z}: must be a multiple of 4"]


def no_batch_padding(op: OpInfo) -> list[str]:
    """Pad: 'No padding in batch dimension.'"""
    pads = op.input(1).values() if op.input(1) is not None else None
    if pads is None:
        return ["PAD paddings are not a compile-time constant"]
    return [] if not pads.reshape(-1, 2)[0].any() else ["PAD pads the batch dimension"]


def unit_strides_only(op: OpInfo) -> list[str]:
    """StridedSlice: all strides 1 (compiler: 'Only Strided-Slice with unitary strides
    supported'), and ellipsis/new-axis masks 0 (recalled from the Coral table)."""
    reasons = []
    strides = op.input(3).values() if op.input(3) is not None else None
    if strides is None or (strides != 1).any():
        reasons.append(f"STRIDED_SLICE strides {None if strides is None else strides.tolist()}: "
                       "only unit strides are supported")
    for mask in ("ellipsis_mask", "new_axis_mask"):
        if op.options.get(mask, 0):
            reasons.append(f"STRIDED_SLICE {mask}={op.options[mask]}: must be 0")
    return reasons


def concat_constant_rule(op: OpInfo) -> list[str]:
    """Concatenation: 'If any input is a compile-time constant tensor, there must be only 2
    inputs, and this constant tensor must be all zeroes (effectively, a zero-padding op).'"""
    constants = [t for t in op.inputs if t.is_constant]
    if not constants:
        return []
    if len(op.inputs) != 2:
        return [f"CONCATENATION of {len(op.inputs)} inputs with a constant one: only 2 inputs allowed"]
    values = constants[0].values()
    return [] if values is not None and not values.any() else [
        f"CONCATENATION with non-zero constant {_tensor_label(constants[0])}"]


def prelu_alpha_1d(op: OpInfo) -> list[str]:
    """PReLU: 'Alpha must be 1-dimensional (only the innermost dimension can be >1 size).'"""
    alpha = op.input(1)
    if alpha is None or all(d == 1 for d in alpha.shape[:-1]):
        return []
    return [f"PRELU alpha {alpha.describe()}: only its innermost dimension may be > 1"]


@dataclass(frozen=True)
class OpRule:
    """One row of the Coral supported-operations table: its text, checks and non-blocking notes."""

    limitation: str = ""
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = ()


_SIZE_NOTE = "may stay on CPU for some sizes (the compiler avoids precision loss)"

# The Coral "Supported operations" table, keyed by TFLite builtin name (runtime 13/14+ rows).
OP_TABLE: dict[str, OpRule] = {
    "ADD": OpRule(),
    "AVERAGE_POOL_2D": OpRule("No fused activation function.", (no_fused_activation,)),
    "CONCATENATION": OpRule("No fused activation; a constant input only as a 2-input zero pad.",
                            (no_fused_activation, concat_constant_rule)),
    "CONV_2D": OpRule("Same dilation in x and y; weights constant; not grouped.",
                      (same_dilation, constant_params(1, 2), not_grouped)),
    "DEPTHWISE_CONV_2D": OpRule("Same dilation in x and y; weights constant.",
                                (same_dilation, constant_params(1, 2))),
    "EXPAND_DIMS": OpRule(),
    "FULLY_CONNECTED": OpRule("Default weights format; output one-dimensional; weights constant.",
                              (default_weights_format, one_dimensional_output, constant_params(1, 2))),
    "L2_NORMALIZATION": OpRule(),
    "LOGISTIC": OpRule(),
    "LSTM": OpRule("Unidirectional LSTM only."),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": OpRule("Unidirectional LSTM only."),
    "MAXIMUM": OpRule(),
    "MAX_POOL_2D": OpRule("No fused activation function.", (no_fused_activation,)),
    "MEAN": OpRule("No reduction in batch dimension; a z-reduction needs z % 4 == 0.",
                   (no_batch_axis(1), z_reduction_multiple_of_4)),
    "MINIMUM": OpRule(),
    "MUL": OpRule(),
    "PACK": OpRule("No packing in batch dimension.", (no_batch_axis(option="axis"),)),
    "PAD": OpRule("No padding in batch dimension.", (no_batch_padding,)),
    "PRELU": OpRule("Alpha must be 1-dimensional.", (prelu_alpha_1d,)),
    "QUANTIZE": OpRule("int8/uint8 requantization only (float input is a CPU op)."),
    "REDUCE_MAX": OpRule("Cannot operate on the batch dimension.", (no_batch_axis(1),)),
    "REDUCE_MIN": OpRule("Cannot operate on the batch dimension.", (no_batch_axis(1),)),
    "RELU": OpRule(),
    "RELU6": OpRule(),
    "RELU_N1_TO_1": OpRule(),
    "RESHAPE": OpRule(notes=("certain reshapes of large tensors may stay on CPU",)),
    "RESIZE_BILINEAR": OpRule("3-D input/output.", notes=(_SIZE_NOTE,)),
    "RESIZE_NEAREST_NEIGHBOR": OpRule("3-D input/output.", notes=(_SIZE_NOTE,)),
    "RSQRT": OpRule(),
    "SLICE": OpRule(),
    "SOFTMAX": OpRule("1-D input with at most 16,000 elements.", (one_dimensional_input(16_000),)),
    "SPACE_TO_DEPTH": OpRule(),
    "SPLIT": OpRule("No splitting in batch dimension.", (no_batch_axis(0),)),
    "SQUARED_DIFFERENCE": OpRule(),
    "SQUEEZE": OpRule(),
    "STRIDED_SLICE": OpRule("Unit strides; ellipsis and new-axis masks 0.", (unit_strides_only,)),
    "SUB": OpRule(),
    "SUM": OpRule("Cannot operate on the batch dimension.", (no_batch_axis(1),)),
    "TANH": OpRule(),
    "TRANSPOSE": OpRule(notes=("needs a recent compiler (v15 logs report 'Operation not supported')",)),
    "TRANSPOSE_CONV": OpRule("Weights constant.", (constant_params(1),)),
    f"CUSTOM:{EDGETPU_CUSTOM_OP}": OpRule(notes=("already compiled for the EdgeTPU",)),
}

# Why common unsupported ops are missing, so the report says what to do instead.
UNSUPPORTED_HINTS: dict[str, str] = {
    "BATCH_MATMUL": "activation x activation matmul (attention) has no EdgeTPU kernel",
    "DEQUANTIZE": "a float conversion inside the graph; the model must stay int8 end to end",
    "GELU": "use ReLU/ReLU6 or a LUT-free approximation",
    "HARD_SWISH": "use ReLU/ReLU6",
    "LEAKY_RELU": "use ReLU or PReLU",
}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
@dataclass
class OpRow:
    """One operator's verdict. `status`: edgetpu, unsupported, falls_back, or cpu_boundary."""

    index: int
    op: str
    maps_to_edgetpu: bool
    reasons: list[str]
    status: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class EdgeTpuReport:
    """Per-op verdicts for subgraph 0 and where the EdgeTPU partition ends."""

    model: str
    rows: list[OpRow]
    first_unmapped_index: int | None
    n_subgraphs: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        by_status = {s: sum(r.status == s for r in self.rows)
                     for s in ("edgetpu", "unsupported", "falls_back", "cpu_boundary")}
        return {"ops": len(self.rows), "on_edgetpu": by_status["edgetpu"],
                "on_cpu": len(self.rows) - by_status["edgetpu"], **by_status}

    @property
    def fully_mapped(self) -> bool:
        return bool(self.rows) and all(r.maps_to_edgetpu for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "n_subgraphs": self.n_subgraphs,
                "first_unmapped_index": self.first_unmapped_index,
                "fully_mapped": self.fully_mapped, "counts": self.counts, "notes": list(self.notes),
                "ops": [asdict(r) for r in self.rows]}

    def format_table(self) -> str:
        header = ("#", "op", "tpu", "tensors (first input -> output)", "options", "reasons / notes")
        body = [(str(r.index), r.op, "yes" if r.maps_to_edgetpu else "no",
                 f"{(r.inputs or ['-'])[0]} -> {(r.outputs or ['-'])[0]}",
                 _format_options(r.options), _shorten(r.reasons + r.notes)) for r in self.rows]
        c = self.counts
        verdict = "fully mapped" if self.fully_mapped else (
            f"first unsupported op: #{self.first_unmapped_index}" if self.first_unmapped_index is not None
            else "only float I/O conversions at the graph boundary stay on CPU")
        lines = [f"EdgeTPU static check: {self.model} (subgraph 0 of {self.n_subgraphs}, {c['ops']} ops)",
                 *_columns([header, *body]),
                 f"{c['on_edgetpu']}/{c['ops']} ops on the EdgeTPU, {c['on_cpu']} on CPU; {verdict}"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _format_options(options: dict[str, Any]) -> str:
    parts = []
    for key, value in options.items():
        if key in ("stride", "dilation", "filter"):
            if key != "filter" and tuple(value) == (1, 1):
                continue
            value = f"{value[0]}x{value[1]}"
        elif key == "fused_activation":
            if value == "NONE":
                continue
            key = "act"
        elif key == "groups" and value == 1:
            continue
        elif key not in ("depth_multiplier", "groups", "axis", "keep_dims", "weights_format"):
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)


def _shorten(reasons: Sequence[str], keep: int = 2) -> str:
    """The first reasons for the table; to_dict() keeps them all."""
    more = len(reasons) - keep
    return "; ".join(reasons[:keep]) + (f" (+{more} more)" if more > 0 else "")


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def op_reasons(op: OpInfo) -> list[str]:
    """Why this op cannot map, judged on its own: the generic rules, then its table row."""
    rule = OP_TABLE.get(op.op)
    if rule is None:
        hint = UNSUPPORTED_HINTS.get(op.op)
        return [f"{op.op} is not in the EdgeTPU supported-operations table" + (f" ({hint})" if hint else "")]
    reasons: list[str] = []
    for check in (*GENERIC_CHECKS, *rule.checks):
        reasons.extend(r for r in check(op) if r not in reasons)
    return reasons


def _is_float_boundary(op: OpInfo, graph: TfliteGraph) -> bool:
    """A float->int QUANTIZE fed by a graph input, or an int->float DEQUANTIZE feeding a graph
    output: the compiler leaves these on CPU without ending the EdgeTPU partition (float I/O)."""
    if op.op == "QUANTIZE":
        return op.inputs[0].index in graph.input_indices and op.inputs[0].dtype == "FLOAT32"
    if op.op == "DEQUANTIZE":
        return all(t.index in graph.output_indices for t in op.outputs)
    return False


def check_tflite(path: str | Path) -> EdgeTpuReport:
    """Judge every op of subgraph 0 against the EdgeTPU table; see the module docstring."""
    graph = read_tflite(path)
    rows: list[OpRow] = []
    first_unmapped: int | None = None
    for op in graph.ops:
        reasons = op_reasons(op)
        if first_unmapped is not None:
            status, reasons = "falls_back", [*reasons, FALLS_BACK]
        elif reasons and _is_float_boundary(op, graph):
            status, reasons = "cpu_boundary", [BOUNDARY]
        elif reasons:
            status, first_unmapped = "unsupported", op.index
        else:
            status = "edgetpu"
        rule = OP_TABLE.get(op.op)
        rows.append(OpRow(op.index, op.op, status == "edgetpu", reasons, status,
                          [t.describe() for t in op.inputs if not t.is_constant] or
                          [t.describe() for t in op.inputs],
                          [t.describe() for t in op.outputs], dict(op.options),
                          list(rule.notes) if rule else []))
    notes = []
    if graph.n_subgraphs > 1:
        notes.append(f"model has {graph.n_subgraphs} subgraphs; only subgraph 0 was checked")
    if not graph.ops:
        notes.append("subgraph 0 has no operators")
    return EdgeTpuReport(graph.path, rows, first_unmapped, graph.n_subgraphs, notes)


# --------------------------------------------------------------------------------------------
# The real compiler: run it when present, parse what it prints
# --------------------------------------------------------------------------------------------
MAPPED_STATUS = "Mapped to Edge TPU"

# Summary lines of `edgetpu_compiler -s` (v2.1 .. v16 print the same labels).
_LOG_FIELDS: dict[str, str] = {
    "compiler_version": r"Edge TPU Compiler version (\S+)",
    "compile_time_ms": r"Model compiled successfully in (\d+) ms\.?",
    "input_model": r"Input(?: model)?: (.+)",
    "input_size": r"Input size: (.+)",
    "output_model": r"Output(?: model)?: (.+)",
    "output_size": r"Output size: (.+)",
    "on_chip_memory_used": r"On-chip memory used for caching model parameters: (.+)",
    "on_chip_memory_remaining": r"On-chip memory remaining for caching model parameters: (.+)",
    "off_chip_memory_used": r"Off-chip memory used for streaming uncached model parameters: (.+)",
    "edgetpu_subgraphs": r"Number of Edge TPU subgraphs: (\d+)",
    "total_operations": r"Total number of operations: (\d+)",
    "operation_log": r"Operation log: (.+)",
    "ops_on_edgetpu": r"Number of operations that will run on Edge TPU: (\d+)",
    "ops_on_cpu": r"Number of operations that will run on CPU: (\d+)",
}
_INT_FIELDS = {"compile_time_ms", "edgetpu_subgraphs", "total_operations", "ops_on_edgetpu", "ops_on_cpu"}
_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}
_TABLE_HEADER = re.compile(r"^Operator\s+Count\s+Status\s*$")
_TABLE_ROW = re.compile(r"^(?P<op>[A-Z][A-Z0-9_]*)\s+(?P<count>\d+)\s+(?P<status>\S.*?)\s*$")
_ERROR_LINE = re.compile(r"^(?:ERROR: .+|Compilation failed.*|Internal compiler error.*)$")


@dataclass
class CompilerLogRow:
    """One line of the compiler's op table: how many ops of a kind got a given status."""

    op: str
    count: int
    status: str

    @property
    def mapped(self) -> bool:
        return self.status == MAPPED_STATUS


@dataclass
class CompilerLog:
    """What `edgetpu_compiler -s` reported; counts are None where the log does not say."""

    rows: list[CompilerLogRow]
    compiler_version: str | None = None
    compile_time_ms: int | None = None
    input_model: str | None = None
    input_size: str | None = None
    output_model: str | None = None
    output_size: str | None = None
    on_chip_memory_used: str | None = None
    on_chip_memory_remaining: str | None = None
    off_chip_memory_used: str | None = None
    edgetpu_subgraphs: int | None = None
    total_operations: int | None = None
    operation_log: str | None = None
    ops_on_edgetpu: int | None = None
    ops_on_cpu: int | None = None
    succeeded: bool = False
    errors: list[str] = field(default_factory=list)
    edgetpu_model: str | None = None  # the kept `_edgetpu.tflite`, set by run_edgetpu_compiler

    @property
    def fully_mapped(self) -> bool:
        return self.succeeded and self.ops_on_cpu == 0

    def memory_bytes(self, which: str = "on_chip_memory_used") -> int | None:
        """A memory line ('1.92MiB') in bytes."""
        return parse_size(getattr(self, which))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [{**asdict(r), "mapped": r.mapped} for r in self.rows]
        out["fully_mapped"] = self.fully_mapped
        return out

    def format_table(self) -> str:
        body = [(r.op, str(r.count), r.status) for r in self.rows]
        lines = [f"edgetpu_compiler {self.compiler_version or '?'}: {self.input_model or '?'}",
                 *_columns([("Operator", "Count", "Status"), *body]),
                 f"{self.ops_on_edgetpu} ops on the EdgeTPU, {self.ops_on_cpu} on CPU; "
                 f"on-chip memory used {self.on_chip_memory_used}, compile time {self.compile_time_ms} ms"]
        return "\n".join(lines + [f"error: {e}" for e in self.errors])


def parse_size(text: str | None) -> int | None:
    """'7.67MiB' -> bytes; None when absent or unreadable."""
    match = re.fullmatch(r"\s*([\d.]+)\s*(B|KiB|MiB|GiB)\s*", text or "")
    return round(float(match[1]) * _SIZE_UNITS[match[2]]) if match else None


def parse_compiler_log(text: str) -> CompilerLog:
    """Parse `edgetpu_compiler -s` output (or its .log file) into rows and summary numbers."""
    fields: dict[str, Any] = {}
    for key, pattern in _LOG_FIELDS.items():
        match = re.search(rf"^\s*{pattern}\s*$", text, flags=re.MULTILINE)
        if match:
            value = match[1].strip()
            fields[key] = int(value) if key in _INT_FIELDS else value
    rows = _parse_op_table(text.splitlines())
    if rows and "ops_on_edgetpu" not in fields:  # the .log file has the table but no totals
        fields["ops_on_edgetpu"] = sum(r.count for r in rows if r.mapped)
        fields["ops_on_cpu"] = sum(r.count for r in rows if not r.mapped)
    errors = [line.strip() for line in text.splitlines() if _ERROR_LINE.match(line.strip())]
    succeeded = bool(re.search(r"Model compiled successfully|Compilation succeeded", text)) and not any(
        e.startswith("Compilation failed") for e in errors)
    return CompilerLog(rows=rows, succeeded=succeeded, errors=errors, **fields)


def _parse_op_table(lines: Sequence[str]) -> list[CompilerLogRow]:
    rows: list[CompilerLogRow] = []
    in_table = False
    for line in lines:
        if _TABLE_HEADER.match(line.strip()):
            in_table = True
            continue
        match = _TABLE_ROW.match(line.strip()) if in_table else None
        if match:
            rows.append(CompilerLogRow(match["op"], int(match["count"]), match["status"]))
    return rows


def find_edgetpu_compiler() -> str | None:
    """Path of `edgetpu_compiler` on PATH, or None (then only the static check can run here)."""
    return shutil.which("edgetpu_compiler")


def run_edgetpu_compiler(tflite_path: str | Path, out_dir: str | Path, timeout_s: float = 600) -> CompilerLog:
    """Compile with `edgetpu_compiler -s -o OUT_DIR model.tflite`; keep the `_edgetpu.tflite`.

    Raises EdgeTpuCompilerMissing when the compiler is not installed here, and
    EdgeTpuCompilerFailed (with the parsed log) when it runs but writes no compiled model.
    """
    exe = find_edgetpu_compiler()
    if exe is None:
        raise EdgeTpuCompilerMissing("edgetpu_compiler is not installed here", hint=INSTALL_HINT)
    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    _read_flatbuffer_bytes(tflite_path)  # refuse a bad file before spending a compiler run
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([exe, "-s", "-o", str(out_dir), str(tflite_path)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EdgeTpuCompilerFailed(f"edgetpu_compiler timed out after {timeout_s:.0f} s on {tflite_path}") from exc
    log = parse_compiler_log(proc.stdout + "\n" + proc.stderr)
    compiled = out_dir / f"{tflite_path.stem}_edgetpu.tflite"
    if proc.returncode != 0 or not compiled.is_file():
        why = log.errors[0] if log.errors else f"exit code {proc.returncode}"
        raise EdgeTpuCompilerFailed(f"edgetpu_compiler failed on {tflite_path}: {why}",
                                    hint="run the static check (check_tflite) to see which ops block it",
                                    log=log)
    log.edgetpu_model = str(compiled)
    return log
