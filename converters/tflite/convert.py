"""PyTorch -> float .tflite (litert-torch), and the ai-edge-quantizer rewrites of it."""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

from mnv4_deploy.errors import DeployError

from .common import check_layout, quiet_progress
from .failures import check_prepares
from .matmul_order import convertible_module


def export_float_tflite(model: Any, example: Any, path: Path, layout: str, target: str = "tflite") -> dict[str, Any]:
    """Convert `model` (NCHW in PyTorch) to a float32 .tflite with the requested input layout.

    An op LiteRT then cannot prepare is reported for `target` with the layer of `model` it came from.
    """
    import litert_torch
    import torch

    check_layout(layout)
    started = time.perf_counter()
    module, sample = model, example.contiguous()
    if layout == "nhwc":
        module = litert_torch.to_channel_last_io(model, args=[0]).eval()
        sample = sample.permute(0, 2, 3, 1).contiguous()
    module, reordered = convertible_module(module, sample)
    with quiet_progress(), torch.no_grad():
        edge_model = litert_torch.convert(module, (sample,), strict_export=True)
        edge_model.export(str(path))
    check_prepares(path, model, target)
    facts = {"route": "litert_torch.convert(strict_export=True)"
                      + (" + to_channel_last_io(args=[0])" if layout == "nhwc" else ""),
             "seconds_float_convert": round(time.perf_counter() - started, 3)}
    if reordered:  # A.mT @ B.mT written as (B @ A).mT (matmul_order.py)
        facts["matmuls_reordered"] = len(reordered)
    return facts


def fp16_recipe() -> list[dict[str, Any]]:
    """ai-edge-quantizer's weight-only FLOAT_CASTING recipe: fp16 weights, float32 compute."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                   algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    return manager.get_quantization_recipe()


def dynamic_recipe() -> list[dict[str, Any]]:
    """Dynamic-range quantization: per-channel symmetric int8 weights, float32 activations.

    BATCH_MATMUL stays float: the recipe would store a constant operand (e.g. a query computed
    from learned tokens and folded by the converter) as int8 weights, and LiteRT's BATCH_MATMUL
    has no int8-constant x float-activation form for the left operand, so the model would not
    load. Activation x activation matmuls (attention) are float in this recipe anyway.
    """
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    manager.add_quantization_config(regex=".*", operation_name=qtyping.TFLOperationName.BATCH_MATMUL,
                                    algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return manager.get_quantization_recipe()


RECIPES = {"fp16": ("ai_edge_quantizer FLOAT_CASTING weight-only (fp16 weights, float32 compute)", fp16_recipe),
           "dynamic": ("ai_edge_quantizer recipe.dynamic_wi8_afp32 (int8 per-channel weights, float32 "
                       "activations quantized on the fly; BATCH_MATMUL kept float)", dynamic_recipe)}


def quantize_tflite(source: Path, path: Path, kind: str) -> dict[str, Any]:
    """Rewrite the float flatbuffer `source` into `path` with one of `RECIPES`."""
    from ai_edge_quantizer import quantizer

    description, make = RECIPES[kind]
    recipe = make()
    started = time.perf_counter()
    # The quantizer prints a size summary and a tqdm bar; keep the pipeline's log clean.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = quantizer.Quantizer(source.read_bytes(), recipe).quantize()
    if result.quantized_model is None:
        raise DeployError(f"ai-edge-quantizer returned no model for the {kind} recipe")
    path.write_bytes(bytes(result.quantized_model))
    return {"quantization": description, "quant_recipe": json.loads(json.dumps(recipe, default=str)),
            "seconds_quantize": round(time.perf_counter() - started, 3)}
