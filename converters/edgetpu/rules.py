"""The EdgeTPU op rules: generic dtype/shape/rank checks and the Coral supported-operations table.

A check takes an op and returns the reasons it cannot map ([] = fine).

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
- This project's docs/field-notes.md (no grouped CONV_2D, no BATCH_MATMUL,
  no DEQUANTIZE mid-graph; the compiler maps ops up to the first unsupported one).
The Coral table documents no kernel-size or stride limits, so none are invented here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from .flatbuffer import OpInfo, TensorInfo

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"

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
    """Grouped CONV_2D (filter channels < input channels) has no EdgeTPU kernel (docs/field-notes.md)."""
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
