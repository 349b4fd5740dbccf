"""Activation ranges: stream the calibration images through the float model, once or twice.

Pass 1 records min/max at every quantization point; histogram estimators then need a
second pass with fixed bin edges. Only root points are observed: shared points (after a
reshape) take their source's grid.

The model's outputs are never clipped: an estimator trades rare large values for
resolution, but the rare large logit is the one that wins the arg-max.

A sigmoid's output (squeeze-excite gates) and a softmax's (attention weights) are not
calibrated: they get the fixed grid [0, 1) with scale 2^-bits and the zero point at the
container's minimum, the one TFLite's int8 LOGISTIC and SOFTMAX kernels require (scale 1/256,
zero point -128). A calibrated grid there is rewritten by the TFLite converter, so
EdgeTPU/TFLite would compute something the plan does not (a random-init pixel-token attention
of the spelling zoo: tflite-int8 at cosine 0.977 against a calibrated-softmax plan, 0.998 against
the fixed grid, which onnx-int8 also reaches); with the fixed grid every int8 target computes
the same weights as the emulation. A softmax over more than FIXED_GRID_MAX_SOFTMAX_WIDTH values
keeps a calibrated grid: tokens reading a 56x56 map weigh each pixel about 1/3136, zero or one
step of 1/256, and a random-init Mobile-Former's plan fell to cosine 0.68-0.91 vs float on the
fixed grid (0.998 calibrated). tflite-int8 computes such a softmax in float onto the plan's grid;
EdgeTPU and Ethos-U compute `QuantPlan.with_fixed_softmax_grids()`.

The inputs of an element-wise max/min of two activations take its output's grid (where they feed
nothing else): LiteRT's int8 MAXIMUM/MINIMUM read them there, and since rounding commutes with
max, that is one rounding instead of two for every target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .graph import QuantGraph
from .observers import RangeObserver
from .qparams import QParams, f32, qparams_for_range
from .simulate import FLOAT, batches, run_streams


@dataclass(frozen=True)
class ObservedRange:
    """What calibration saw at a point and what the estimator kept."""

    min: float
    max: float
    lo: float
    hi: float

    def to_dict(self) -> dict[str, Any]:
        return {"observed": [self.min, self.max], "clipped_to": [self.lo, self.hi]}


def output_points(qg: QuantGraph) -> set[str]:
    """Root points whose quantizer feeds the graph output (directly or via reshapes)."""
    fq_point = {point.module: p for p, point in qg.points.items()}
    out = next(n for n in qg.gm.graph.nodes if n.op == "output")
    found, stack = set(), list(out.all_input_nodes)
    while stack:
        node = stack.pop()
        if node.op == "call_module" and node.target in fq_point:
            found.add(qg.root_point(fq_point[node.target]))
        elif node.op in ("call_method", "call_function", "call_module") and len(node.all_input_nodes) == 1:
            stack.extend(node.all_input_nodes)  # pass through identity/reshape-like wrappers
    return found


# unit.op of a sigmoid or softmax (module, function, method)
FIXED_UNIT_RANGE_OPS = frozenset({"Sigmoid", "sigmoid", "Softmax", "softmax"})
SOFTMAX_OPS = frozenset({"Softmax", "softmax"})
# widest softmax axis kept on the fixed grid: its mean weight 1/32 is still 8 steps of 1/256
FIXED_GRID_MAX_SOFTMAX_WIDTH = 32


def softmax_width(qg: QuantGraph, unit: str) -> int | None:
    """Length of the axis a softmax unit normalizes over (None: not a softmax, or unknown)."""
    u = qg.units[unit]
    if u.op not in SOFTMAX_OPS:
        return None
    node = next(n for n in qg.gm.graph.nodes if n.name == u.node)
    meta = node.meta.get("tensor_meta")
    if node.op == "call_module":
        dim = qg.gm.get_submodule(node.target).dim
    else:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if meta is None or not isinstance(dim, int):
        return None
    return int(meta.shape[dim])


def fixed_grid_unit(qg: QuantGraph, unit: str) -> bool:
    """A sigmoid, or a softmax over at most FIXED_GRID_MAX_SOFTMAX_WIDTH values: the fixed [0, 1) grid."""
    if qg.units[unit].op not in FIXED_UNIT_RANGE_OPS:
        return False
    width = softmax_width(qg, unit)
    return width is None or width <= FIXED_GRID_MAX_SOFTMAX_WIDTH


def unit_range_grid(bits: int, dtype: str) -> QParams:
    """[0, 1 - 2^-bits] on 2^bits steps of 2^-bits: a sigmoid's or softmax's output grid."""
    qmax = (1 << bits) - 1
    return QParams(f32(2.0 ** -bits), 0, 0, qmax).as_dtype(dtype)


# element-wise max/min of two activations: the int8 kernels (LiteRT's MAXIMUM/MINIMUM) read both
# inputs on the output's grid
EXTREMUM_OPS = frozenset({"maximum", "minimum", "max", "min", "fmax", "fmin"})


def _tie_extremum_inputs(qg: QuantGraph, grids: dict[str, QParams], outputs: set[str]) -> list[str]:
    """Put the inputs of an element-wise max/min on its output's grid, where they feed nothing else.

    A monotone quantizer commutes with max and min, so max(Q(a), Q(b)) on the output's grid is
    Q(max(a, b)): one rounding, as the kernels compute it, where separate input grids would round
    twice (Dynamic ReLU's max of two affines: an input grid 1.7x coarser than the output's).
    """
    fq_point = {point.module: p for p, point in qg.points.items()}
    tied = []
    for unit in qg.units.values():
        if unit.op not in EXTREMUM_OPS or unit.point is None:
            continue
        node = next(n for n in qg.gm.graph.nodes if n.name == unit.node)
        feeds = [n for n in node.all_input_nodes if n.op == "call_module" and n.target in fq_point]
        if len(feeds) < 2:  # max against a constant (a clamp): nothing to share
            continue
        for feed in feeds:
            p = fq_point[feed.target]
            if qg.points[p].shared_from is None and p not in outputs and len(feed.users) == 1 and \
                    not fixed_grid_unit(qg, qg.points[p].unit):
                grids[p] = grids[qg.root_point(unit.point)]
                tied.append(p)
    return tied


def calibrate_ranges(qg: QuantGraph, data: "torch.Tensor | Any", estimator: str, bits: int, symmetric: bool,
                     percentile: float, dtype: str, batch_size: int,
                     log: Callable[[str], None] = lambda _: None
                     ) -> tuple[dict[str, QParams], dict[str, ObservedRange]]:
    """(grid per point, observation per root point); shared points copy their root's grid."""
    roots = [p for p, point in qg.points.items() if point.shared_from is None]
    outputs = output_points(qg)
    observers = {p: RangeObserver("minmax" if p in outputs else estimator, bits, percentile) for p in roots}

    def minmax(point: str, value: torch.Tensor) -> None:
        if point in observers:
            observers[point].update_minmax(value)

    def histogram(point: str, value: torch.Tensor) -> None:
        if point in observers:
            observers[point].update_histogram(value)

    passes = [minmax] + ([histogram] if any(o.needs_histogram for o in observers.values()) else [])
    for hook in passes:
        for batch in batches(data, batch_size):
            run_streams(qg.gm, batch, (FLOAT,), on_point=hook)
    grids: dict[str, QParams] = {}
    observed: dict[str, ObservedRange] = {}
    for p in roots:
        obs = observers[p]
        if fixed_grid_unit(qg, qg.points[p].unit) and p not in outputs:
            grids[p] = unit_range_grid(bits, dtype)
            observed[p] = ObservedRange(obs.min, obs.max, grids[p].lo, grids[p].hi)
            continue
        lo, hi = obs.range(symmetric)
        grids[p] = qparams_for_range(lo, hi, bits, symmetric, dtype)
        observed[p] = ObservedRange(obs.min, obs.max, lo, hi)
    tied = _tie_extremum_inputs(qg, grids, outputs)
    for p, point in qg.points.items():
        if point.shared_from is not None:
            grids[p] = grids[qg.root_point(p)]
    log(f"calibrated {len(roots)} activation ranges ({estimator}, {len(passes)} pass(es) over {len(data)} images)"
        + (f"; {len(tied)} max/min input(s) on their output's grid" if tied else ""))
    return grids, observed
