"""torch.export -> XNNPACK-delegated ExecuTorch program (.pte), with a delegation report.

Route (ExecuTorch's documented XNNPACK flow): `torch.export.export` ->
`to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])` -> `to_executorch()`. The
metadata (contract, class count, plan hash) is a constant method of the program
(`METADATA_METHOD`, a JSON string), so the .pte carries it and any ExecuTorch runtime reads it.

The report counts every edge op by where it runs: inside an XNNPACK delegate or in ExecuTorch's
portable kernels, and for each portable op why (the partitioner's own reason, captured from its
`WhyNoPartition` log records, or the known cases: `getitem` only unpacks the delegate's outputs).
Before lowering, hard-sigmoid is spelled with float constants (hardsigmoid.py) and attention's
layout ops as ones XNNPACK has (attention_ops.py), so XNNPACK takes them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

from mnv4_deploy.errors import DeployError

METADATA_METHOD = "mnv4_deploy_metadata"
XNNPACK_LOGGERS = ("executorch.backends.xnnpack",)
NO_COMPUTE = {"getitem": "unpacks the delegate's outputs (no computation)"}


class _WhyNotLowered(logging.Handler):
    """Collects the partitioner's `WhyNoPartition` records: node name -> reason."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        why = record.msg
        node, reason = getattr(why, "node", None), getattr(why, "reason", None)
        if node is not None and reason:
            self.reasons.setdefault(str(getattr(node, "name", node)), str(reason))


@contextlib.contextmanager
def _capture_reasons() -> Iterator[_WhyNotLowered]:
    handler = _WhyNotLowered()
    loggers = [logging.getLogger(name) for name in XNNPACK_LOGGERS]
    levels = [lg.level for lg in loggers]
    propagate = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False  # the records are ours to report, not console noise
    try:
        yield handler
    finally:
        for lg, level, prop in zip(loggers, levels, propagate):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = prop


def _op_name(node: Any) -> str:
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return name.replace("aten_", "aten.").replace(".default", "")


def delegation_report(graph_module: Any, reasons: dict[str, str]) -> dict[str, Any]:
    """Per op: how many nodes XNNPACK took and how many stayed portable, and why."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    frame = info.get_operator_delegation_dataframe()
    ops = {}
    for row in frame.to_dict("records"):
        op = str(row["op_type"])
        if op == "Total":
            continue
        ops[op] = {"delegated": int(row["occurrences_in_delegated_graphs"]),
                   "portable": int(row["occurrences_in_non_delegated_graphs"])}
    portable = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or "executorch_call_delegate" in str(node.target):
            continue
        op = _op_name(node)
        reason = NO_COMPUTE.get(op) or reasons.get(node.name) or \
            "no XNNPACK partitioner config accepts it (runs in ExecuTorch's portable kernels)"
        portable.append({"node": node.name, "op": op, "reason": reason})
    compute = [p for p in portable if p["op"] not in NO_COMPUTE]
    return {"backend": "XnnpackBackend", "delegated_subgraphs": int(info.num_delegated_subgraphs),
            "delegated_nodes": int(info.num_delegated_nodes), "portable_nodes": int(info.num_non_delegated_nodes),
            "portable_compute_ops": len(compute), "ops": dict(sorted(ops.items())), "portable": portable}


def export_program(module: Any, example: Any, path: Path, metadata: dict[str, Any],
                   prepare: Any = None) -> dict[str, Any]:
    """Lower `module` to an XNNPACK-delegated .pte at `path`; return route and delegation facts.

    `prepare(graph_module)` may rewrite the exported graph before lowering (int8: one
    dequantize per consumer).
    """
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from .attention_ops import rewrite_attention_ops
    from .hardsigmoid import spell_hardsigmoid_with_float_constants
    from .token_ops import requantize_concat_inputs, spell_means_with_keepdim, spell_selects_as_slices

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exported = torch.export.export(module, (example,), strict=False)
        except Exception as exc:
            raise DeployError(f"torch.export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                              "the model must be torch.export-able (no data-dependent control flow)") from None
        hardsigmoids = spell_hardsigmoid_with_float_constants(exported.graph_module)
        attention = rewrite_attention_ops(exported.graph_module)
        if prepare is not None:
            prepare(exported.graph_module)
        means = spell_means_with_keepdim(exported.graph_module)  # after prepare: its quantize pairs are final
        selects = spell_selects_as_slices(exported.graph_module)
        concats = requantize_concat_inputs(exported.graph_module)
        with _capture_reasons() as why:
            try:
                edge = to_edge_transform_and_lower(
                    exported, partitioner=[XnnpackPartitioner()],
                    constant_methods={METADATA_METHOD: json.dumps(metadata, sort_keys=True)})
            except Exception as exc:
                raise DeployError(f"ExecuTorch lowering to XNNPACK failed: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}",
                                  "report it with the executorch version; onnx or tflite targets may take the model")
        report = delegation_report(edge.exported_program().graph_module, why.reasons)
        program = edge.to_executorch()
    path.write_bytes(program.buffer)
    return {"route": "torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch",
            "delegation": report, "metadata_method": METADATA_METHOD,
            "hardsigmoid_float_constants": hardsigmoids, "attention_rewrites": attention,
            "means_with_keepdim": means, "selects_as_slices": selects, "concat_inputs_requantized": concats}
