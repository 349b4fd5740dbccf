"""PyTorch emulations of what weight-quantized artifacts are meant to compute.

A converter that rounds weights to int8 (TFLite dynamic range, CoreML W8) attaches one of
these to its artifact, so the pipeline can tell "the converter did what the recipe says"
(tight parity against the emulation) apart from "the recipe costs this much against float".
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np

from .batches import torch_runner


def round_weights_int8(model: Any, min_elements: int = 0) -> Any:
    """A copy of `model` whose conv/linear weights are rounded to symmetric per-channel int8.

    Scale per output channel is max|w| / 127 (the grid TFLite and CoreML use for
    linear-symmetric weights); tensors with at most `min_elements` values stay float, as
    converters that skip tiny weights do.
    """
    import torch
    from torch import nn

    rounded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in rounded.modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or module.weight.numel() <= min_elements:
                continue
            w = module.weight
            flat = w.reshape(w.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            q = torch.clamp(torch.round(flat / scale[:, None]), -127, 127)
            w.copy_((q * scale[:, None]).reshape(w.shape))
    return rounded


def int8_weight_emulation(model: Any, min_elements: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """NCHW float32 batch -> logits of `model` with int8-rounded weights, float activations."""
    return torch_runner(round_weights_int8(model, min_elements))
