"""One DequantizeLinear per reader: the QDQ spelling rknn-toolkit2 2.5.0 compiles for MNv4 hybrid attention.

Measured with the toolkit (docs/rknn.md, "MobileNet-V4 hybrid attention on the RKNN NPU"): the
toolkit folds DequantizeLinear -> Mul -> Add -> QuantizeLinear (an affine norm, such as the
mobile-MQA block's BatchNorm written as scale and shift) into one int8 BatchNormalization, and
in doing so removes that DequantizeLinear even when another node reads it too. In a hybrid
block the other reader is the residual Add around the attention; the toolkit then computes that
Add in float16 beside the int8 attention ("Meet hybrid type"), and its compiler segfaults
(`RKNNSubgraphManager`). With a DequantizeLinear of its own, the Add keeps its int8 input and the
block builds. Each copy dequantizes the same integers with the same scale and zero point, so the
graph computes exactly what it did, in any runtime.
"""
from __future__ import annotations

from typing import Any


def dedicate_dequantize_readers(model: Any, constants: set[str]) -> int:
    """Give every reader of a shared activation DequantizeLinear its own copy; how many copies were added.

    `constants` names the constant tensors (a weight's DequantizeLinear is left alone). The graph's
    outputs keep reading the original node, as do its first reader and any Shape node.
    """
    from onnx import helper

    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in dict.fromkeys(node.input):  # a node reading a tensor twice is one reader
            readers.setdefault(name, []).append(node)
    nodes: list[Any] = []
    added = 0
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type != "DequantizeLinear" or node.input[0] in constants:
            continue
        shared = node.output[0]
        values = [reader for reader in readers.get(shared, []) if reader.op_type != "Shape"]  # Shape reads no values
        for index, reader in enumerate(values[1:], start=1):
            copy_out = f"{shared}__rknn_reader{index}"
            nodes.append(helper.make_node("DequantizeLinear", list(node.input), [copy_out],
                                          name=f"{node.name}__rknn_reader{index}",
                                          **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
            for position, name in enumerate(reader.input):
                if name == shared:
                    reader.input[position] = copy_out
            added += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return added


__all__ = ["dedicate_dequantize_readers"]
