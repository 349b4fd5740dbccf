"""A Linear on a 3-D or 4-D input, spelled the way rknn-toolkit2 2.5.0 builds it: Gemm in int8, MatMul in fp16.

int8 (the plan's QDQ), `linears_as_gemm`:

torch exports `nn.Linear` on tokens `(B, T, C)` or pixels `(B, H, W, C)` as
`MatMul(x, Transpose(DequantizeLinear(W)))` followed by `Add(DequantizeLinear(b), .)`. The toolkit
fuses that bias Add into its matmul and then finds no int8 parameters for the weight operand (the
Transpose's output, or a DequantizeLinear of the transposed integers alike): its build stops with
`Invalid w_par['dtype'] = float16 for /q/Transpose_output_0!` (measured: docs/rknn.md, "Attention as
users spell it"). The same Linear on a 2-D input exports as `Gemm(x, DequantizeLinear(W), bias,
transB=1)`, which the toolkit builds with the plan's integers. So the input's leading dimensions are
folded into the rows, the Linear runs as that Gemm, and its output gets its shape back: the same
products and sums, the same weight and bias tensors, exactly what the graph computed before.

fp16 (the float ONNX), `gemm_linears_as_matmul`: onnxsim makes the same Reshape -> Gemm -> Reshape
of such a Linear, and there the toolkit fails the other way: a Gemm whose reshaped output a
Transpose reads (tokens' keys, transposed for the product with the map) loses its value info in
the toolkit's own passes (`KeyError: '_v_333_mm'` from its shape inference). So where the two
Reshapes only fold and unfold the input's leading dimensions, the float ONNX gets torch's own
spelling back, MatMul by the transposed weight plus the bias, which it builds.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _static_shapes(model: Any) -> dict[str, list[int]]:
    """Tensor name -> its shape (-1 for a dimension shape inference leaves symbolic)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    return shapes


def _index(model: Any) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, list[int]]]:
    """Tensor name -> its producer node, -> the nodes reading it, -> its shape."""
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return producers, readers, _static_shapes(model)


def _weight(producers: dict[str, Any], name: str, constants: dict[str, Any]) -> tuple[str, int, int] | None:
    """The (N, K) weight's DequantizeLinear output behind `Transpose(DequantizeLinear(W))`, N and K; else None."""
    transpose = producers.get(name)
    if transpose is None or transpose.op_type != "Transpose":
        return None
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [1, 0])
    source = producers.get(transpose.input[0])
    if perm != [1, 0] or source is None or source.op_type != "DequantizeLinear" or source.input[0] not in constants:
        return None
    dims = list(constants[source.input[0]].dims)
    return (source.output[0], dims[0], dims[1]) if len(dims) == 2 else None


def _bias(producers: dict[str, Any], name: str, constants: dict[str, Any], n: int) -> bool:
    """Whether `name` is a DequantizeLinear of a constant (N,) vector: a Linear's bias."""
    source = producers.get(name)
    return (source is not None and source.op_type == "DequantizeLinear" and source.input[0] in constants
            and list(constants[source.input[0]].dims) == [n])


def linears_as_gemm(model: Any, constants: dict[str, Any], new_constant: Any) -> int:
    """Rewrite each N-D Linear (MatMul of a transposed constant weight, and its bias Add) as a 2-D Gemm.

    `constants`: tensor name -> TensorProto; `new_constant(name, array)` adds an initializer and
    returns its name. Nodes left without readers (the weight's Transpose) are removed. Returns how
    many Linears were rewritten.
    """
    from onnx import helper

    producers, readers, shapes = _index(model)
    replaced: dict[str, list[Any]] = {}  # first output of the node replaced (the bias Add, else the MatMul) -> nodes
    dropped: set[str] = set()  # first outputs of the nodes removed
    for node in model.graph.node:
        found = _weight(producers, node.input[1], constants) if node.op_type == "MatMul" else None
        if found is None:
            continue
        weight, n, k = found
        bias, last = None, node
        after = readers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add":
            other = [name for name in after[0].input if name != node.output[0]]
            if len(other) == 1 and _bias(producers, other[0], constants, n):
                bias, last = other[0], after[0]
        stem = node.name or node.output[0]
        rows, product = f"{stem}__rknn_rows", f"{stem}__rknn_gemm"
        row_shape = new_constant(f"{stem}_rows_shape", np.array([-1, k], np.int64))
        nodes = [helper.make_node("Reshape", [node.input[0], row_shape], [rows], name=rows),
                 helper.make_node("Gemm", [rows, weight] + ([bias] if bias else []), [product], name=product, transB=1)]
        x_shape = shapes.get(node.input[0])
        if x_shape and -1 not in x_shape[1:]:  # the leading dimensions back, batch included (-1)
            out_shape = new_constant(f"{stem}_out_shape", np.array([*x_shape[:-1], n], np.int64))
        else:  # shape inference left them symbolic: read them from the input
            out_shape = f"{stem}__rknn_out_shape"
            nodes[:0] = [helper.make_node("Shape", [node.input[0]], [f"{stem}__rknn_lead"], name=f"{stem}__rknn_lead",
                                          end=-1),
                         helper.make_node("Concat", [f"{stem}__rknn_lead", new_constant(f"{stem}_features",
                                                                                        np.array([n], np.int64))],
                                          [out_shape], name=out_shape, axis=0)]
        replaced[last.output[0]] = [*nodes, helper.make_node("Reshape", [product, out_shape], [last.output[0]],
                                                             name=f"{stem}__rknn_shape")]
        dropped.add(node.output[0])  # the MatMul (the Add, if any, is replaced where it stood)
        if len(readers[node.input[1]]) == 1:
            dropped.add(node.input[1])  # the weight's Transpose, read by this MatMul only
    _replace(model, replaced, dropped)
    return len(replaced)


def gemm_linears_as_matmul(model: Any) -> int:
    """Rewrite each `Reshape -> Gemm (constant weight) -> Reshape` as `MatMul(x, W^T) + bias`; how many.

    For a float model: the weight is stored transposed (a new initializer), the bias stays.
    """
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    producers, readers, shapes = _index(model)
    replaced: dict[str, list[Any]] = {}  # first output of the Gemm -> nodes
    dropped: set[str] = set()
    for node in model.graph.node:
        rows = producers.get(node.input[0]) if node.op_type == "Gemm" else None
        after = readers.get(node.output[0], [])
        if (rows is None or rows.op_type != "Reshape" or node.input[1] not in weights or len(after) != 1
                or after[0].op_type != "Reshape" or any(_scaled(a) for a in node.attribute)):
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        if next((a.i for a in node.attribute if a.name == "transB"), 0):
            weight = weight.T
        x_shape, out = shapes.get(rows.input[0]), after[0].output[0]
        # only a Linear on the input's last axis whose output Reshape gives back the leading dimensions
        if not x_shape or x_shape[-1] != weight.shape[0] or shapes.get(out) != [*x_shape[:-1], weight.shape[1]]:
            continue
        stem = node.name or node.output[0]
        transposed = numpy_helper.from_array(np.ascontiguousarray(weight), f"{stem}__rknn_weight")
        model.graph.initializer.append(transposed)
        product = f"{stem}__rknn_matmul"
        nodes = [helper.make_node("MatMul", [rows.input[0], transposed.name],
                                  [product if len(node.input) > 2 else out], name=product)]
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [out], name=f"{stem}__rknn_bias"))
        replaced[node.output[0]] = nodes
        dropped.add(out)
        if len(readers[rows.output[0]]) == 1:
            dropped.add(rows.output[0])
    _replace(model, replaced, dropped)
    return len(replaced)


def _scaled(attribute: Any) -> bool:
    """A Gemm attribute that makes it more than x @ W^T + b (alpha or beta other than 1, transA)."""
    if attribute.name in ("alpha", "beta"):
        return attribute.f != 1.0
    return attribute.name == "transA" and attribute.i != 0


def _replace(model: Any, replaced: dict[str, list[Any]], dropped: set[str]) -> None:
    """Rebuild the node list: nodes keyed by their first output replaced in place, dropped ones left out."""
    if not replaced:
        return
    nodes = []
    for node in model.graph.node:
        if node.output[0] not in dropped:
            nodes.extend(replaced.get(node.output[0], [node]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


__all__ = ["gemm_linears_as_matmul", "linears_as_gemm"]
