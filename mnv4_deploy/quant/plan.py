"""`build_plan`: from a canonical model and calibration images to a backend-independent plan.

The plan is the single source of truth every emitter reads: the adjusted float model
(after equalization and bias correction), integer weights with per-channel scales, one
activation grid per quantization point, and which units stay in float. The order of the
steps matters and is fixed here:

1. trace and place quantizers (graph.py);
2. cross-layer equalization + bias absorption on the float model (exact);
3. activation ranges on the float (equalized) model (calibrate.py, observers.py);
4. per-channel integer weights, nearest rounding (weights.py);
5. one layer-by-layer pass, float and int8 side by side: AdaRound, then bias correction,
   each layer seeing its upstream already quantized and corrected.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import fx, nn

from ..batches import Run, torch_runner
from ..errors import UsageError
from ..recipes import Recipe
from .bias_correction import BiasCorrectionStats, correct_bias
from .calibrate import ObservedRange, calibrate_ranges, fixed_grid_unit, output_points, softmax_width, unit_range_grid
from .equalize import EqualizationStats, absorb_biases, equalize
from .graph import QuantGraph, build_quant_graph
from .modules import QuantOps, QuantWeighted, is_depthwise
from .overflow import SAFE_BITS, channels_to_fix, input_code_maxima, layer_overflow, summarize
from .qparams import QParams
from .settings import QuantSettings
from .simulate import FLOAT, QUANT, batches, run_streams
from .threads import single_thread
from .weights import adaround, bias_fit_min_scale, quantize_weight, rounding_flips

Log = Callable[[str], None]


class QuantPlan:
    """What to quantize and how.

    `fake_quant_model()` computes what an emitted QDQ graph means (DequantizeLinear ->
    float op -> QuantizeLinear, int32 biases, per-channel weights); integer kernels agree
    with it up to float rounding ties. Not built directly: use `build_plan`, then
    `with_float` for fallback variants.

    Converters read a plan only through its public API: `emulation()` (what the int8 artifact
    computes, as a Run), `with_quantized_output()` (the full-integer variant), `export_model(ops)`
    (the fake-quant model with constant weights in an exporter's spelling), the per-layer
    `weight_ints`/`weight_scales`/`bias_values`, `activation_ranges`, `float_layers`, `overflow`
    and `sha256`.
    """

    def __init__(self, qg: QuantGraph, settings: QuantSettings, ranges: dict[str, QParams],
                 observed: dict[str, ObservedRange], correction_data: torch.Tensor,
                 stats: dict[str, Any], float_units: frozenset[str] = frozenset(),
                 code_maxima: Mapping[str, torch.Tensor] | None = None):
        self._qg = qg
        self._code_maxima = dict(code_maxima or {})  # GEMM layers' calibrated input code maxima (overflow fix auto)
        self.settings = settings
        self._ranges = ranges
        self.observed = observed
        self._correction_data = correction_data
        self.stats = stats
        self.float_units = frozenset(float_units)
        self._float_outputs = frozenset() if settings.quantize_output else frozenset(output_points(qg))
        self._quantized_output: QuantPlan | None = None  # made once: every full-integer target shares it
        self._fixed_softmax: QuantPlan | None = None  # made once: every fixed-softmax-grid target shares it
        self._apply(self._qg.gm)

    # ---- structure ----------------------------------------------------------------------
    @property
    def units(self) -> list[str]:
        """Every switchable unit (input, layers, ops), in graph order."""
        return list(self._qg.units)

    @property
    def layers(self) -> list[str]:
        """Weighted layers (conv/linear), in graph order."""
        return self._qg.layers

    def unit_op(self, unit: str) -> str:
        return self._qg.units[unit].op

    @property
    def float_layers(self) -> list[str]:
        """Units kept in float (weights and output) by fallback."""
        return [u for u in self._qg.units if u in self.float_units]

    @property
    def weight_scales(self) -> dict[str, np.ndarray]:
        """Per-output-channel weight scales of every quantized layer."""
        return {u: self._layer(u).weight_scale.numpy().copy() for u in self.layers if u not in self.float_units}

    def weight_ints(self, layer: str) -> np.ndarray:
        return self._layer(layer).weight_int.numpy().copy()

    def bias_values(self, layer: str) -> np.ndarray:
        """The float bias a quantized layer adds (bias correction included); a runtime stores it in int32 as
        round(bias / (input_scale * weight_scale)), which is what the emulation computes with."""
        return self._layer(layer).bias_q.numpy().copy()

    @property
    def activation_ranges(self) -> dict[str, QParams]:
        """The grid of every enabled quantization point (shared points included)."""
        return {p: q for p, q in self._ranges.items() if self._point_enabled(p)}

    @property
    def overflow(self) -> dict[str, Any]:
        """Int16 pair-sum overflow on x86 CPUs without VNNI (quant/overflow.py): the fix's mode, how many
        GEMM-run channels hold 7-bit weights, and which layers may still saturate (`layers_at_risk`)."""
        found = []
        for name in self.layers:
            layer = self._layer(name)
            ip = self._qg.units[name].input_point
            if name in self.float_units or is_depthwise(layer) or ip is None or not self._point_enabled(ip):
                continue  # runs in float, or in a direct (non-GEMM) kernel
            grid = self._ranges[ip]
            found.append(layer_overflow(name, layer.weight_int, layer.weight_bits <= SAFE_BITS, grid.qmax - grid.qmin,
                                        self._code_maxima.get(name)))
        return summarize(self.settings.overflow_fix, found)

    def input_code_maxima(self, layer: str) -> np.ndarray | None:
        """The largest code each input channel of a GEMM-run layer took on the calibration images
        (measured for `overflow_fix: auto`; None otherwise)."""
        maxima = self._code_maxima.get(layer)
        return None if maxima is None else maxima.numpy().copy()

    @property
    def saturating_layers(self) -> list[str]:
        """GEMM-run layers whose int16 pair sums may saturate on x86 CPUs without VNNI (none with the fix)."""
        return list(self.overflow["layers_at_risk"])

    def point_module(self, point: str) -> str:
        """Path of the module quantizing `point` (an Identity in `model`): hook it to read the value."""
        return self._qg.points[point].module

    def point_unit(self, point: str) -> str:
        """The unit whose output `point` quantizes (a point shared with another resolves to its root)."""
        return self._qg.points[self._qg.root_point(point)].unit

    def _layer(self, unit: str) -> QuantWeighted:
        return self._qg.layer_module(unit)

    def _point_enabled(self, point: str, float_units: Iterable[str] | None = None) -> bool:
        """A point quantizes unless its unit is float or it is an output left float."""
        root = self._qg.root_point(point)
        float_units = self.float_units if float_units is None else float_units
        return self._qg.points[root].unit not in float_units and root not in self._float_outputs

    # ---- state --------------------------------------------------------------------------
    def _apply(self, gm: fx.GraphModule, float_units: Iterable[str] | None = None) -> None:
        """Write this plan's switches into a copy of the fake-quant graph."""
        float_units = self.float_units if float_units is None else frozenset(float_units)
        qg = self._qg
        enabled = {p: self._point_enabled(p, float_units) for p in qg.points}
        for p, point in qg.points.items():
            gm.get_submodule(point.module).qparams = self._ranges[p] if enabled[p] else None
        for unit in qg.units.values():
            if unit.kind != "layer":
                continue
            layer = gm.get_submodule(unit.name)  # a layer unit is named by its module path
            layer.quantized = unit.name not in float_units
            ip = unit.input_point
            layer.input_qparams = self._ranges[ip] if ip is not None and enabled[ip] else None

    def fake_quant_model(self, float_units: Iterable[str] | None = None) -> fx.GraphModule:
        """A torch module computing what the int8 artifact computes (eval mode, a copy).

        `float_units` overrides which units stay float (for sensitivity analysis).
        """
        gm = copy.deepcopy(self._qg.gm)
        self._apply(gm, float_units)
        return gm.eval()

    def reconfigure(self, fake_quant_model: fx.GraphModule, float_units: Iterable[str]) -> None:
        """Switch a model from `fake_quant_model()` to another set of float units, in place
        (cheaper than a new copy when trying many sets)."""
        self._apply(fake_quant_model, float_units)

    def emulation(self) -> Run:
        """NCHW float32 batch -> logits of the fake-quant model: what the plan's int8 artifacts compute."""
        return torch_runner(self.fake_quant_model())

    def export_model(self, ops: QuantOps) -> fx.GraphModule:
        """The fake-quant model (a copy) written for an exporter: `ops` does every quantize and
        dequantize, and every quantized layer is frozen (`QuantWeighted.freeze`). Same numbers."""
        model = self.fake_quant_model()
        for module in model.modules():
            if hasattr(module, "ops"):
                module.ops = ops
            if isinstance(module, QuantWeighted) and module.quantized:
                module.freeze()
        return model.eval()

    def float_model(self) -> fx.GraphModule:
        """The float reference after equalization (same function as the canonical model)."""
        return self.fake_quant_model(float_units=self.units)

    @property
    def model(self) -> fx.GraphModule:
        """The adjusted float model: quantized layers hold their grid weights (dequantized)
        and corrected biases, float layers their originals; no quantizers.

        Quantizing its weights per channel with `weight_scales` reproduces the plan's
        integers exactly, so another toolchain can start from it.
        """
        gm = copy.deepcopy(self._qg.gm)
        self._apply(gm)
        for unit in self._qg.units.values():
            if unit.kind == "layer":
                path = unit.name
                layer = gm.get_submodule(path)
                w = layer.ops.weight(layer.weight_int, layer.weight_scale) if layer.quantized else layer.weight
                b = layer.bias_q if layer.quantized else layer.bias
                parent, _, child = path.rpartition(".")
                setattr(gm.get_submodule(parent) if parent else gm, child, layer.to_float_module(w, b))
        for point in self._qg.points.values():
            gm.add_submodule(point.module, nn.Identity())
        gm.recompile()
        return gm.eval()

    # ---- variants -----------------------------------------------------------------------
    def with_float(self, units: Iterable[str], recorrect: bool | None = None, log: Log | None = None) -> "QuantPlan":
        """A copy that keeps `units` (plus those already kept) in float.

        Bias correction depends on which layers upstream are quantized, so it is redone
        (unless `recorrect` is False); integer weights and ranges are kept.
        """
        unknown = sorted(set(units) - set(self._qg.units))
        if unknown:
            raise UsageError(f"unknown quantization units: {', '.join(unknown[:5])}", "see plan.units")
        qg = copy.deepcopy(self._qg)
        plan = QuantPlan(qg, self.settings, self._ranges, self.observed, self._correction_data,
                         copy.deepcopy(self.stats), self.float_units | frozenset(units), self._code_maxima)
        if self.settings.bias_correction if recorrect is None else recorrect:
            plan._recorrect_biases(log)
        return plan

    def _recorrect_biases(self, log: Log | None = None) -> None:
        """Redo bias correction from the layers' own biases (after upstream grids or float units changed)."""
        for name in self.layers:
            layer = self._layer(name)
            layer.bias_q = layer.bias.clone()
        self.stats["bias_correction"] = _layerwise(self, adaround_layers=False, correct=True,
                                                   log=log or (lambda _: None))["bias_correction"]

    @property
    def calibrated_softmax_grids(self) -> dict[str, int]:
        """Softmax units whose output grid was calibrated (axis wider than the fixed grid resolves), with
        their axis widths: on the fixed [0, 1) 1/256 grid their mean weight would round to few or no steps."""
        fixed = unit_range_grid(self.settings.act_bits, self.settings.act_dtype)
        found = {}
        for name in self._qg.units:
            width = softmax_width(self._qg, name)
            if (width is not None and not fixed_grid_unit(self._qg, name) and self._point_enabled(name)
                    and self._ranges[name] != fixed):
                found[name] = width
        return found

    def with_fixed_softmax_grids(self, log: Log | None = None) -> "QuantPlan":
        """A copy whose every softmax output sits on the fixed [0, 1) grid of 2^-bits steps.

        For int8 kernels whose softmax output scale is fixed (LiteRT's SOFTMAX: 1/256, zero point
        -128; so tflite-int8, EdgeTPU, Ethos-U): they cannot compute the calibrated grid the plan
        gives a wide softmax, so their emulation is this variant. Bias correction is redone (it
        absorbs the coarser attention downstream). The plan itself when no grid changes; made once.
        """
        wide = self.calibrated_softmax_grids
        if not wide:
            return self
        if self._fixed_softmax is None:
            ranges = dict(self._ranges)
            grid = unit_range_grid(self.settings.act_bits, self.settings.act_dtype)
            for p in self._qg.points:
                if self._qg.points[self._qg.root_point(p)].unit in wide:
                    ranges[p] = grid
            plan = QuantPlan(copy.deepcopy(self._qg), self.settings, ranges, self.observed, self._correction_data,
                             copy.deepcopy(self.stats), self.float_units, self._code_maxima)
            if self.settings.bias_correction:
                plan._recorrect_biases(log)
            plan.stats["fixed_softmax_grids"] = sorted(wide)
            self._fixed_softmax = plan
        return self._fixed_softmax

    def with_quantized_output(self) -> "QuantPlan":
        """A copy whose output points (the logits) quantize too, on their calibrated minmax grid.

        Full-integer targets (TFLite int8, EdgeTPU) need every tensor on a grid; their
        emulation must be this variant. Ranges, weights and biases are kept: the output
        quantizer sits after the last layer, so nothing upstream changes. Made once per plan,
        so the targets of one run share it.
        """
        if self.settings.quantize_output:
            return self
        if self._quantized_output is None:
            settings = dataclasses.replace(self.settings, quantize_output=True)
            self._quantized_output = QuantPlan(copy.deepcopy(self._qg), settings, self._ranges, self.observed,
                                               self._correction_data, copy.deepcopy(self.stats), self.float_units,
                                               self._code_maxima)
        return self._quantized_output

    # ---- identity -----------------------------------------------------------------------
    @property
    def sha256(self) -> str:
        """A hash of the numbers the plan fixes: integer weights and scales, activation grids, float units.

        Stable across processes (no timings, no object ids), so two exports of the same plan carry
        the same hash and an artifact can be traced to the report of the run that made it.
        """
        h = hashlib.sha256()
        scales = self.weight_scales
        for layer in sorted(scales):
            h.update(layer.encode() + b"\0")
            h.update(np.ascontiguousarray(self.weight_ints(layer), np.int8).tobytes())
            h.update(np.ascontiguousarray(scales[layer], np.float64).tobytes())
        for point, q in sorted(self.activation_ranges.items()):
            h.update(f"{point}:{float(q.scale)!r}:{q.zero_point}:{q.qmin}:{q.qmax}".encode())
        h.update(("float:" + ",".join(self.float_layers)).encode())
        return h.hexdigest()

    # ---- report -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable summary for reports."""
        qg = self._qg
        points = {}
        for p, point in qg.points.items():
            q = self._ranges[p]
            entry: dict[str, Any] = {"unit": point.unit, "enabled": self._point_enabled(p), **q.to_dict()}
            if point.shared_from is not None:
                entry["shared_from"] = qg.root_point(p)
            elif p in self.observed:
                entry.update(self.observed[p].to_dict())
            points[p] = entry
        layers = {}
        for name in self.layers:
            layer = self._layer(name)
            scale = layer.weight_scale
            layers[name] = {"op": qg.units[name].op, "quantized": layer.quantized,
                            "bits": int(layer.weight_bits.max()),
                            "seven_bit_channels": int((layer.weight_bits == SAFE_BITS).sum()),
                            "weight_scale_min": float(scale.min()), "weight_scale_max": float(scale.max()),
                            "int32_bias": layer.quantized and layer.input_qparams is not None}
        return {
            "settings": self.settings.to_dict(),
            "counts": {"units": len(qg.units), "layers": len(self.layers),
                       "points": sum(1 for p in qg.points.values() if p.shared_from is None),
                       "shared_points": sum(1 for p in qg.points.values() if p.shared_from is not None),
                       "float_units": len(self.float_units)},
            "float_units": self.float_layers,
            "calibrated_softmax_grids": self.calibrated_softmax_grids,
            "steps": self.stats,
            "overflow": self.overflow,
            "points": points,
            "layers": layers,
        }


def _activation_of(qg: QuantGraph) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """layer unit -> the fused activation its output goes through (for AdaRound's target)."""
    nodes = {n.name: n for n in qg.gm.graph.nodes}
    acts = {}
    for unit in qg.units.values():
        if unit.kind == "layer" and unit.act is not None:
            act = nodes[unit.act]
            if act.op == "call_module":
                acts[unit.name] = qg.gm.get_submodule(act.target)
            elif act.op == "call_function":
                acts[unit.name] = act.target
            else:
                acts[unit.name] = lambda t, m=act.target: getattr(t, m)()
    return acts


PROGRESS_EVERY_S = 60.0  # AdaRound's progress lines (a model takes minutes)


def _layerwise(plan: QuantPlan, adaround_layers: bool, correct: bool, log: Log) -> dict[str, Any]:
    """The side-by-side pass: AdaRound and/or bias correction, layer after layer."""
    s = plan.settings
    acts = _activation_of(plan._qg)
    bc = BiasCorrectionStats()
    flips: dict[str, float] = {}
    t0 = time.time()
    total = sum(1 for module in plan._qg.gm.modules() if isinstance(module, QuantWeighted) and module.quantized)
    last_note = [t0]

    def step(layer: nn.Module, x_float: torch.Tensor, x_quant: torch.Tensor) -> None:
        if not layer.quantized:
            return
        if adaround_layers:
            if time.time() - last_note[0] >= PROGRESS_EVERY_S:  # minutes per model: say where it is
                log(f"AdaRound: {len(flips)}/{total} layers rounded in {time.time() - t0:.0f}s")
                last_note[0] = time.time()
            act = acts.get(layer.unit)
            with torch.no_grad():
                target = layer.forward_float(x_float)
                target = act(target) if act is not None else target
            w_int = adaround(layer.forward_with, layer.weight, layer.bias_q, layer.weight_scale,
                             layer.weight_bits, x_quant, target, act, iterations=s.adaround_iterations)
            flips[layer.unit] = rounding_flips(w_int, layer.weight, layer.weight_scale)
            layer.set_weights(w_int, layer.weight_scale)
        if correct:
            correct_bias(layer, x_float, x_quant, bc)

    run_streams(plan._qg.gm, plan._correction_data, (FLOAT, QUANT), before_layer=step)
    out: dict[str, Any] = {}
    if correct:
        out["bias_correction"] = {**bc.to_dict(), "images": int(plan._correction_data.shape[0])}
    if adaround_layers:
        out["adaround"] = {"layers": len(flips), "iterations": s.adaround_iterations,
                           "mean_flipped_fraction": float(np.mean(list(flips.values()))) if flips else 0.0}
    images = plan._correction_data.shape[0]
    log(f"layer-by-layer pass ({', '.join(out)}) over {images} images in {time.time() - t0:.1f}s")
    return out


def _gemm_layers(qg: QuantGraph) -> dict[str, QuantWeighted]:
    """Layers x86 CPUs run through u8 x s8 GEMM kernels: a quantized input, not depthwise."""
    nodes = {n.name: n for n in qg.gm.graph.nodes}
    found = {}
    for unit in qg.units.values():
        if unit.kind == "layer" and unit.input_point is not None:
            layer = qg.gm.get_submodule(nodes[unit.node].target)
            if not is_depthwise(layer):
                found[unit.name] = layer
    return found


def _input_code_maxima(qg: QuantGraph, data: Any, ranges: Mapping[str, QParams],
                       batch_size: int) -> dict[str, torch.Tensor]:
    """Each GEMM layer's largest input code per channel on the calibration images (float graph)."""
    layers = _gemm_layers(qg)
    grids = {name: ranges[qg.units[name].input_point] for name in layers}
    return input_code_maxima(layers, grids, qg.gm, batches(data, batch_size))


def _quantize_weights(qg: QuantGraph, s: QuantSettings, ranges: Mapping[str, QParams],
                      code_maxima: Mapping[str, torch.Tensor]) -> None:
    """Nearest-rounded per-channel weights, scales raised where an int32 bias would overflow."""
    nodes = {n.name: n for n in qg.gm.graph.nodes}
    with single_thread():
        for unit in qg.units.values():
            if unit.kind == "layer":
                _quantize_layer(qg.gm.get_submodule(nodes[unit.node].target), unit.input_point, s, ranges,
                                code_maxima.get(unit.name))


def _quantize_layer(layer: QuantWeighted, input_point: str | None, s: QuantSettings,
                    ranges: Mapping[str, QParams], code_maxima: torch.Tensor | None = None) -> None:
    """Integer weights at the recipe's bits; a GEMM-run layer's channels the overflow fix picks get 7 bits."""
    bits = s.layer_bits(is_depthwise(layer))
    bias_fill_scale = None if input_point is None else bias_fit_min_scale(layer.bias, ranges[input_point].scale)
    w_int, scale = quantize_weight(layer.weight, bits, s.per_channel, bias_fill_scale)
    channel_bits = torch.full((w_int.shape[0],), bits, dtype=torch.int64)
    if input_point is not None and not is_depthwise(layer) and bits > SAFE_BITS:
        grid = ranges[input_point]
        fix = channels_to_fix(s.overflow_fix, w_int, code_maxima, grid.qmax - grid.qmin)
        if fix.any():
            channel_bits[fix if s.per_channel else slice(None)] = SAFE_BITS  # one scale: all channels or none
            w_int, scale = quantize_weight(layer.weight, channel_bits, s.per_channel, bias_fill_scale)
    layer.set_weights(w_int, scale, channel_bits)


def build_plan(model: nn.Module, calib: np.ndarray, recipe: Recipe | str | Mapping[str, Any] = "default",
               log: Log = print, overflow_fix: str = "off") -> QuantPlan:
    """Plan the int8 quantization of a canonical model from calibration images.

    calib: (N, 3, H, W) float32, preprocessed exactly like evaluation inputs, or a streamed set
    (`calibration_stream.StreamedCalibration`: the passes over every image re-read it in batches,
    the layer-by-layer steps take its in-memory head, so the plan is the one the array gives).
    recipe: a loaded `Recipe`, a recipe name/path, or a recipe mapping.
    overflow_fix: `auto`, `all` or `off`: which GEMM-run channels get 7-bit weights so that x86
    CPUs without VNNI cannot saturate their int16 pair sums (quant/overflow.py).
    """
    settings = dataclasses.replace(QuantSettings.from_recipe(recipe), overflow_fix=overflow_fix)
    settings.check()
    if hasattr(calib, "batches"):
        data = calib
        head = torch.from_numpy(np.ascontiguousarray(calib.head(min(settings.correction_size, len(calib)))))
    else:
        calib = np.asarray(calib)
        if calib.ndim != 4 or calib.shape[0] < 1 or calib.dtype != np.float32:
            raise UsageError(f"calibration data must be a non-empty (N, C, H, W) float32 array, got "
                             f"{calib.dtype} {tuple(calib.shape)}")
        data = head = torch.from_numpy(np.ascontiguousarray(calib))
    t0 = time.time()
    qg = build_quant_graph(model, head[:1])
    stats: dict[str, Any] = {}
    log(f"quant graph: {len(qg.units)} units, {len(qg.layers)} weighted layers, "
        f"{sum(1 for p in qg.points.values() if p.shared_from is None)} activation points")
    correction = head[: settings.correction_size]
    if settings.equalization:
        eq: EqualizationStats = equalize(qg)
        absorb_biases(qg, data, settings.batch_size, eq)
        stats["equalization"] = eq.to_dict()
        log(f"equalized {len(eq.pairs)} layer pairs in {eq.iterations} iterations, "
            f"absorbed biases of {eq.absorbed_channels} channels")
    ranges, observed = calibrate_ranges(qg, data, settings.estimator, settings.act_bits, settings.symmetric,
                                        settings.percentile, settings.act_dtype, settings.batch_size, log)
    maxima = _input_code_maxima(qg, data, ranges, settings.batch_size) if settings.overflow_fix == "auto" else {}
    _quantize_weights(qg, settings, ranges, maxima)
    plan = QuantPlan(qg, settings, ranges, observed, correction, stats, code_maxima=maxima)
    overflow = plan.overflow
    log(f"overflow fix {settings.overflow_fix}: {overflow['seven_bit_channels']} of {overflow['channels']} GEMM-run "
        f"channels at 7 bits; {len(overflow['layers_at_risk'])} layers may saturate on x86 without VNNI")
    if settings.rounding == "adaround" or settings.bias_correction:
        plan.stats.update(_layerwise(plan, settings.rounding == "adaround", settings.bias_correction, log))
    log(f"quant plan built in {time.time() - t0:.1f}s")
    return plan


__all__ = ["QuantPlan", "build_plan"]
