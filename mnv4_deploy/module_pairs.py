"""Which module consumes exactly the tensor another module produced, found by one forward pass.

Folding (conv -> BatchNorm, conv -> LayerScale) and pad merging (zero pad -> conv) both need
producer -> consumer pairs without knowing block classes. Forward hooks record each producer's
output by `id`; a consumer whose first input is that very tensor is paired with it. The
outputs are held until the pass ends, so no id is reused by a later tensor.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ModuleTest = Callable[[nn.Module], bool]


def trace_pairs(model: nn.Module, example: torch.Tensor, is_producer: ModuleTest, is_consumer: ModuleTest,
                *, consumer_called_once: bool = False) -> list[tuple[str, str]]:
    """(producer name, consumer name) pairs where the consumer's input is exactly the producer's output.

    A module that passes `is_producer` is never tested as a consumer. A producer called more
    than once (shared weights) or claimed by two consumers is never paired; with
    `consumer_called_once`, neither is a consumer called more than once.
    """
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    producer_calls: dict[str, int] = {}
    consumer_calls: dict[str, int] = {}
    pairs: dict[str, str] = {}
    handles = []

    def producer_hook(name: str):
        def hook(_m, _inp, out):
            producer_calls[name] = producer_calls.get(name, 0) + 1
            produced[id(out)] = (name, out)  # holding `out` keeps its id from being reused
        return hook

    def consumer_hook(name: str):
        def hook(_m, inp):
            consumer_calls[name] = consumer_calls.get(name, 0) + 1
            src = produced.get(id(inp[0])) if inp and isinstance(inp[0], torch.Tensor) else None
            if src is not None and src[1] is inp[0]:
                pairs[name] = src[0]
        return hook

    for name, module in model.named_modules():
        if is_producer(module):
            handles.append(module.register_forward_hook(producer_hook(name)))
        elif is_consumer(module):
            handles.append(module.register_forward_pre_hook(consumer_hook(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    claimed: dict[str, int] = {}
    for producer in pairs.values():
        claimed[producer] = claimed.get(producer, 0) + 1
    return [(producer, consumer) for consumer, producer in pairs.items()
            if producer_calls.get(producer) == 1 and claimed[producer] == 1
            and (not consumer_called_once or consumer_calls.get(consumer) == 1)]
