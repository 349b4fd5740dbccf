"""NumPy kernels for MIL ops, and the op-type -> kernel dispatch table `OP_TABLE`.

A kernel takes the op's inputs as a dict (parameter name -> NumPy value; float16 tensors
already widened to float32, absent optional inputs left out) and returns one array, or a
tuple for multi-output ops. The executor casts each result to the dtype the program
declares for it, which is where fp16 rounding happens. A kernel raises
`NotImplementedError` for a variant it does not cover; the executor reports that as an
`UnsupportedOpError` naming the op. Semantics follow the MIL op definitions in
coremltools (`coremltools/converters/mil/mil/ops/defs`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

Args = dict[str, Any]
Kernel = Callable[[Args], Any]

NP_DTYPES: dict[str, type] = {
    "fp16": np.float16, "fp32": np.float32, "fp64": np.float64,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
    "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "bool": np.bool_,
}


# ---------------------------------------------------------------- small helpers
def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.ravel(value)]


def _bools(value: Any, rank: int) -> list[bool]:
    return [False] * rank if value is None else [bool(v) for v in np.ravel(value)]


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _per_axis(param: Any, rank: int, axis: Any) -> np.ndarray:
    """Broadcast a scalar or per-axis vector (scale, zero point) against a rank-`rank` tensor."""
    p = np.asarray(param)
    if p.ndim in (0, rank):
        return p
    if axis is None:
        raise NotImplementedError("a vector quantization parameter needs an axis")
    shape = [1] * rank
    shape[int(axis) % rank] = p.size
    return p.reshape(shape)


# ---------------------------------------------------------------- elementwise
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x)).astype(x.dtype)  # no overflow warnings


_erf64 = np.vectorize(math.erf, otypes=[np.float64])


def _erf(x: np.ndarray) -> np.ndarray:
    return _erf64(np.asarray(x, np.float64)).astype(np.float32)


def _gelu(a: Args) -> np.ndarray:
    x, mode = a["x"], str(a.get("mode", "EXACT"))
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(np.float32(1.702) * x)
    raise NotImplementedError(f"gelu mode {mode!r}")


def _unary(fn: Callable[..., np.ndarray], **defaults: float) -> Kernel:
    """Kernel for an elementwise op of `x` plus scalar parameters with MIL defaults."""

    def kernel(a: Args) -> np.ndarray:
        params = {k: np.float32(a.get(k, v)) for k, v in defaults.items()}
        return fn(a["x"], **params)

    return kernel


def _binary(fn: Callable[[Any, Any], np.ndarray]) -> Kernel:
    return lambda a: fn(a["x"], a["y"])


UNARY: dict[str, Kernel] = {
    "identity": _unary(lambda x: x),
    "relu": _unary(lambda x: np.maximum(x, 0)),
    "relu6": _unary(lambda x: np.clip(x, 0, 6)),
    "clip": _unary(lambda x, alpha, beta: np.minimum(np.maximum(x, alpha), beta), alpha=0.0, beta=6.0),
    "sigmoid": _unary(_sigmoid),
    "sigmoid_hard": _unary(lambda x, alpha, beta: np.clip(alpha * x + beta, 0, 1), alpha=0.2, beta=0.5),
    "silu": _unary(lambda x: x * _sigmoid(x)),
    "leaky_relu": _unary(lambda x, alpha: np.where(x >= 0, x, alpha * x), alpha=0.01),
    "thresholded_relu": _unary(lambda x, alpha: np.where(x >= alpha, x, 0), alpha=1.0),
    "elu": _unary(lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(x)), alpha=1.0),
    "softplus": _unary(lambda x: np.logaddexp(0, x)),
    "tanh": _unary(np.tanh),
    "exp": _unary(np.exp),
    "erf": _unary(_erf),
    "abs": _unary(np.abs),
    "square": _unary(np.square),
    "sqrt": _unary(np.sqrt),
    "rsqrt": _unary(lambda x, epsilon: 1 / np.sqrt(x + epsilon), epsilon=1e-12),
    "inverse": _unary(lambda x, epsilon: 1 / (x + epsilon), epsilon=1e-4),
}

BINARY: dict[str, Kernel] = {
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(lambda x, y: _f32(x) / _f32(y)),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "pow": _binary(np.power),
}


# ---------------------------------------------------------------- conv and pooling
def _pads(pad_type: str, sizes, kernel, strides, dilations, custom) -> list[tuple[int, int]]:
    """Per-spatial-dim (begin, end) padding, as MIL's `aggregated_pad` defines it."""
    n = len(kernel)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        return [(custom[2 * i], custom[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(sizes, kernel, strides, dilations):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            out.append((small, big) if pad_type == "same" else (big, small))
        return out
    raise NotImplementedError(f"pad_type {pad_type!r}")


def _spatial_params(a: Args, kernel: list[int]) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    n = len(kernel)
    strides = _ints(a.get("strides", [1] * n))
    dilations = _ints(a.get("dilations", [1] * n))
    custom = _ints(a.get("pad", [0] * 2 * n))
    pads = _pads(str(a.get("pad_type", "valid")), a["x"].shape[2:], kernel, strides, dilations, custom)
    return strides, dilations, pads


def _taps(xp: np.ndarray, kernel, strides, dilations, out_hw):
    """Yield (kernel index, strided input view) for each kernel tap of a 2-D window op."""
    (sh, sw), (dh, dw), (ho, wo) = strides, dilations, out_hw
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield (i, j), xp[:, :, i * dh: i * dh + (ho - 1) * sh + 1: sh, j * dw: j * dw + (wo - 1) * sw + 1: sw]


def _as_2d(a: Args, kernel: list[int], run: Callable[[Args, list[int]], np.ndarray]) -> np.ndarray:
    """Run a 1-D window op as 2-D with a unit height; refuse 3-D."""
    if len(kernel) == 2:
        return run(a, kernel)
    if len(kernel) != 1:
        raise NotImplementedError(f"{len(kernel)}-D spatial op")
    b = dict(a, x=a["x"][:, :, None])
    for key, unit in (("strides", 1), ("dilations", 1)):
        if key in a:
            b[key] = [unit] + _ints(a[key])
    if "pad" in a:
        b["pad"] = [0, 0] + _ints(a["pad"])
    if "weight" in a:
        b["weight"] = a["weight"][:, :, None]
    return run(b, [1] + kernel)[:, :, 0]


def _conv2d(a: Args, kernel: list[int]) -> np.ndarray:
    x, w = a["x"], a["weight"]
    strides, dilations, pads = _spatial_params(a, kernel)
    groups = int(a.get("groups", 1))
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    n, _, h, wd = xp.shape
    out_ch, cin_g = w.shape[:2]
    ho = (h - (kernel[0] - 1) * dilations[0] - 1) // strides[0] + 1
    wo = (wd - (kernel[1] - 1) * dilations[1] - 1) // strides[1] + 1
    wg = w.reshape(groups, out_ch // groups, cin_g, *kernel)
    out = np.zeros((n, groups, out_ch // groups, ho * wo), np.float32)
    for (i, j), tap in _taps(xp, kernel, strides, dilations, (ho, wo)):
        tap = tap.reshape(n, groups, cin_g, ho * wo)
        wt = wg[:, :, :, i, j]  # (groups, out per group, in per group)
        out += wt * tap if cin_g == 1 else np.matmul(wt, tap)  # depthwise: a broadcast product
    out = out.reshape(n, out_ch, ho, wo)
    if a.get("bias") is not None:
        out += a["bias"].reshape(1, -1, 1, 1)
    return out


def conv(a: Args) -> np.ndarray:
    """MIL conv: NC[D]HW input, (Cout, Cin/groups, *K) weight, groups/strides/dilations/padding."""
    return _as_2d(a, list(a["weight"].shape[2:]), _conv2d)


def _pool_out(size: int, k: int, s: int, pads: tuple[int, int], ceil_mode: bool) -> int:
    span = size + pads[0] + pads[1] - k
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    return out - 1 if (out - 1) * s >= size + pads[0] else out  # last window must start inside


def _pool2d(a: Args, kernel: list[int], is_max: bool) -> np.ndarray:
    x = a["x"]
    strides, _, pads = _spatial_params(a, kernel)
    ceil_mode = bool(a.get("ceil_mode", False))
    out_hw = [_pool_out(x.shape[2 + d], kernel[d], strides[d], pads[d], ceil_mode) for d in range(2)]
    extra = [max(0, (o - 1) * s + k - (sz + p[0] + p[1]))
             for o, s, k, sz, p in zip(out_hw, strides, kernel, x.shape[2:], pads)]
    widths = [(0, 0), (0, 0)] + [(p[0], p[1] + e) for p, e in zip(pads, extra)]
    taps = lambda arr: (t for _, t in _taps(arr, kernel, strides, [1, 1], out_hw))  # noqa: E731
    if is_max:
        xp = np.pad(x, widths, constant_values=-np.inf)
        return np.maximum.reduce(list(taps(xp)))
    total = sum(taps(np.pad(x, widths)))
    # Divisor: in-bounds elements only, or also the explicit padding (never the ceil_mode overhang).
    ones = np.ones((1, 1, *x.shape[2:]), np.float32)
    if a.get("exclude_padding_from_average", False):
        mask = np.pad(ones, widths)
    else:
        padded = np.pad(ones, [(0, 0), (0, 0), *pads], constant_values=1)
        mask = np.pad(padded, [(0, 0), (0, 0)] + [(0, e) for e in extra])
    return total / sum(taps(mask))


def avg_pool(a: Args) -> np.ndarray:
    return _as_2d(a, _ints(a["kernel_sizes"]), lambda b, k: _pool2d(b, k, is_max=False))


def max_pool(a: Args) -> np.ndarray:
    return _as_2d(a, _ints(a["kernel_sizes"]), lambda b, k: _pool2d(b, k, is_max=True))


# ---------------------------------------------------------------- linear algebra, normalization
def matmul(a: Args) -> np.ndarray:
    x, y = a["x"], a["y"]
    if a.get("transpose_x", False) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if a.get("transpose_y", False) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def linear(a: Args) -> np.ndarray:
    out = np.matmul(a["x"], a["weight"].T)
    return out + a["bias"] if a.get("bias") is not None else out


def softmax(a: Args) -> np.ndarray:
    x, axis = a["x"], int(a.get("axis", -1))
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _reduce(fn: Callable[..., np.ndarray]) -> Kernel:
    def kernel(a: Args) -> np.ndarray:
        axes = a.get("axes")
        axes = None if axes is None else tuple(_ints(axes))
        return fn(a["x"], axis=axes, keepdims=bool(a.get("keep_dims", False)))

    return kernel


def batch_norm(a: Args) -> np.ndarray:
    x = a["x"]
    shape = [1, -1] + [1] * (x.ndim - 2)
    scale = a.get("gamma", np.float32(1)) / np.sqrt(a["variance"] + np.float32(a.get("epsilon", 1e-5)))
    shift = a.get("beta", np.float32(0)) - a["mean"] * scale
    return x * np.reshape(scale, shape) + np.reshape(shift, shape)


def _normalize(a: Args, axes: tuple[int, ...], param_shape: list[int]) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) over `axes`, then the optional gamma / beta."""
    x = a["x"]
    eps = np.float32(a.get("epsilon", 1e-5))
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    if a.get("gamma") is not None:
        y = y * np.reshape(a["gamma"], param_shape)
    if a.get("beta") is not None:
        y = y + np.reshape(a["beta"], param_shape)
    return y


def layer_norm(a: Args) -> np.ndarray:
    rank = a["x"].ndim
    axes = tuple(sorted(ax % rank for ax in (_ints(a["axes"]) if a.get("axes") is not None else range(rank))))
    return _normalize(a, axes, [a["x"].shape[i] if i in axes else 1 for i in range(rank)])


def instance_norm(a: Args) -> np.ndarray:
    rank = a["x"].ndim
    return _normalize(a, tuple(range(2, rank)), [1, -1] + [1] * (rank - 2))


# ---------------------------------------------------------------- tensor shape ops
def reshape(a: Args) -> np.ndarray:
    x, shape = a["x"], _ints(a["shape"])
    if len(shape) == x.ndim:  # 0 copies the input's dimension
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return np.reshape(x, shape)


def squeeze(a: Args) -> np.ndarray:
    axes = a.get("axes")
    return np.squeeze(a["x"]) if axes is None else np.squeeze(a["x"], axis=tuple(_ints(axes)))


def expand_dims(a: Args) -> np.ndarray:
    x, axes = a["x"], _ints(a["axes"])
    rank = x.ndim + len(axes)
    for axis in sorted(ax + rank if ax < 0 else ax for ax in axes):
        x = np.expand_dims(x, axis)
    return x


def concat(a: Args) -> np.ndarray:
    values, axis = list(a["values"]), int(a["axis"])
    if not a.get("interleave", False):
        return np.concatenate(values, axis=axis)
    axis %= values[0].ndim
    stacked = np.stack(values, axis=axis + 1)
    return stacked.reshape(*values[0].shape[:axis], -1, *values[0].shape[axis + 1:])


def split(a: Args) -> tuple[np.ndarray, ...]:
    x, axis = a["x"], int(a["axis"])
    if a.get("split_sizes") is not None:
        sizes = _ints(a["split_sizes"])
    else:
        count = int(a["num_splits"])
        sizes = [x.shape[axis] // count] * count
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def slice_by_index(a: Args) -> np.ndarray:
    x = a["x"]
    rank = x.ndim
    begin, end = _ints(a["begin"]), _ints(a["end"])
    stride = _ints(a["stride"]) if a.get("stride") is not None else [1] * rank
    begin_mask, end_mask = _bools(a.get("begin_mask"), rank), _bools(a.get("end_mask"), rank)
    squeeze_mask = _bools(a.get("squeeze_mask"), rank)
    index: list[Any] = []
    for i in range(rank):
        if squeeze_mask[i]:
            index.append(begin[i])
        else:
            index.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    return x[tuple(index)]


def slice_by_size(a: Args) -> np.ndarray:
    x = a["x"]
    begin, size = _ints(a["begin"]), _ints(a["size"])
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))]


def pad(a: Args) -> np.ndarray:
    x, widths = a["x"], _ints(a["pad"])
    k = len(widths) // 2
    full = [(0, 0)] * (x.ndim - k) + [(widths[2 * i], widths[2 * i + 1]) for i in range(k)]
    mode = str(a.get("mode", "constant"))
    if mode == "constant":
        return np.pad(x, full, constant_values=float(a.get("constant_val", 0.0)))
    if mode in ("reflect", "replicate"):
        return np.pad(x, full, mode="reflect" if mode == "reflect" else "edge")
    raise NotImplementedError(f"pad mode {mode!r}")


def cast(a: Args) -> np.ndarray:
    dtype = str(a["dtype"])
    if dtype not in NP_DTYPES:
        raise NotImplementedError(f"cast to {dtype!r}")
    return np.asarray(a["x"]).astype(NP_DTYPES[dtype])


# ---------------------------------------------------------------- quantization
def quantize(a: Args) -> np.ndarray:
    """round-half-even(x / scale) + zero_point, clipped to the int8/uint8 range."""
    x, dtype = a["input"], NP_DTYPES[str(a["output_dtype"])]
    q = np.round(x / _per_axis(a["scale"], x.ndim, a.get("axis")))
    if a.get("zero_point") is not None:
        q = q + _per_axis(a["zero_point"], x.ndim, a.get("axis")).astype(np.float32)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(data: np.ndarray, scale: Any, zero_point: Any, axis: Any) -> np.ndarray:
    x = data.astype(np.float32)
    if zero_point is not None:
        x = x - _per_axis(zero_point, x.ndim, axis).astype(np.float32)
    return x * _per_axis(scale, x.ndim, axis)


def dequantize(a: Args) -> np.ndarray:
    return _dequantize(a["input"], a["scale"], a.get("zero_point"), a.get("axis"))


def constexpr_affine_dequantize(a: Args) -> np.ndarray:
    return _dequantize(a["quantized_data"], a["scale"], a["zero_point"], a["axis"])


def constexpr_blockwise_shift_scale(a: Args) -> np.ndarray:
    """scale * (data - offset), each scale/offset entry covering one block of `data`."""
    data, scale, offset = a["data"].astype(np.float32), _f32(a["scale"]), a.get("offset")
    offset = None if offset is None else _f32(offset)
    for axis, (size, blocks) in enumerate(zip(data.shape, scale.shape)):
        if blocks != size:
            scale = np.repeat(scale, size // blocks, axis)
            offset = None if offset is None else np.repeat(offset, size // blocks, axis)
    return scale * (data if offset is None else data - offset)


def _unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """LSB-first bit fields, as iOS16 constexpr_lut_to_dense packs its indices."""
    bits = np.unpackbits(packed.astype(np.uint8), bitorder="little")[: count * nbits]
    return (bits.reshape(count, nbits).astype(np.int64) << np.arange(nbits)).sum(axis=1)


def constexpr_lut_to_dense(a: Args) -> np.ndarray:
    lut = a["lut"]
    if "shape" in a:  # iOS16: one flat LUT, packed indices
        shape = _ints(a["shape"])
        idx = _unpack_bits(a["indices"], int(math.log2(lut.size)), int(np.prod(shape)))
        return lut[idx].reshape(shape)
    # iOS18: lut is (*blocks, palettes, vector size); indices are already unpacked
    indices = a["indices"].astype(np.int64)
    rank = indices.ndim
    block_index = tuple(
        (np.arange(n) // (n // lut.shape[d])).reshape([-1 if e == d else 1 for e in range(rank)])
        for d, n in enumerate(indices.shape)
    )
    values = lut[block_index + (indices,)]  # (*indices.shape, vector size)
    if lut.shape[-1] == 1:
        return values[..., 0]
    axis = int(a["vector_axis"]) % rank
    values = np.moveaxis(values, -1, axis + 1)
    return values.reshape(*indices.shape[:axis], -1, *indices.shape[axis + 1:])


def constexpr_cast(a: Args) -> np.ndarray:
    return np.asarray(a["source_val"]).astype(NP_DTYPES[str(a["output_dtype"])])


# ---------------------------------------------------------------- dispatch table
OP_TABLE: dict[str, Kernel] = {
    **UNARY,
    **BINARY,
    "gelu": _gelu,
    "conv": conv,
    "avg_pool": avg_pool,
    "max_pool": max_pool,
    "matmul": matmul,
    "linear": linear,
    "softmax": softmax,
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "batch_norm": batch_norm,
    "layer_norm": layer_norm,
    "instance_norm": instance_norm,
    "reshape": reshape,
    "transpose": lambda a: np.transpose(a["x"], _ints(a["perm"])),
    "reverse": lambda a: np.flip(a["x"], None if a.get("axes") is None else tuple(_ints(a["axes"]))),
    "squeeze": squeeze,
    "expand_dims": expand_dims,
    "concat": concat,
    "split": split,
    "slice_by_index": slice_by_index,
    "slice_by_size": slice_by_size,
    "pad": pad,
    "cast": cast,
    "quantize": quantize,
    "dequantize": dequantize,
    "constexpr_affine_dequantize": constexpr_affine_dequantize,
    "constexpr_blockwise_shift_scale": constexpr_blockwise_shift_scale,
    "constexpr_lut_to_dense": constexpr_lut_to_dense,
    "constexpr_cast": constexpr_cast,
}
