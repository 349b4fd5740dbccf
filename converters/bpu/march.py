"""The BPU march table (`quant_configs/bpu_marches.yaml`) and a static op check against it.

The vendor toolchain is not installable here, so we read the published operator list as data
and tell, before anyone runs `hb_mapper checker`, which nodes of an ONNX model will leave the
BPU (CPU fallback, or BPU only when forced) and whether the opset / IR version is accepted.
Per-op numeric constraints (kernel sizes, channel limits) are not checked: the vendor's
checker remains the judge; this catches the structural surprises early (GELU's Erf on X3,
attention Softmax, activation x activation MatMul).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from mnv4_deploy.errors import UsageError

ACTIVATION_MATMUL = ("bpu", "rank4_shared_rhs", "cpu")
_OP_LISTS = ("bpu_ops", "cpu_ops", "not_integrated_ops")
_MARCH_KEYS = {
    "boards": list, "toolchain": str, "onnx_opsets": list, "max_ir_version": int,
    "bpu_ops": list, "conditional_ops": dict, "cpu_ops": list, "not_integrated_ops": list,
    "activation_matmul": str,
}
_TOP_KEYS = {"schema_version": int, "targets": dict, "marches": dict}
_TARGET_KEYS = {"march": str, "board": str, "compile_mode": str, "optimize_level": str}


@dataclass(frozen=True)
class March:
    """One row of the march table."""

    name: str
    boards: tuple[str, ...]
    toolchain: str
    onnx_opsets: tuple[int, ...]
    max_ir_version: int
    bpu_ops: frozenset[str]
    conditional_ops: Mapping[str, str]
    cpu_ops: frozenset[str]
    not_integrated_ops: frozenset[str]
    activation_matmul: str


def _default_table_text() -> tuple[str, str]:
    path = resources.files("mnv4_deploy.quant_configs").joinpath("bpu_marches.yaml")
    return "quant_configs/bpu_marches.yaml", path.read_text()


def _check_type(value: Any, kind: type, where: str, source: str) -> None:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"{source}: {where} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise UsageError(f"{source}: {where} must be a {kind.__name__}, got {value!r}")


def _parse_march(name: str, data: Any, source: str) -> March:
    where = f"marches.{name}"
    _check_type(data, dict, where, source)
    for key in data:
        if key not in _MARCH_KEYS:
            raise UsageError(f"{source}: unknown key {where}.{key}", f"allowed here: {', '.join(_MARCH_KEYS)}")
    missing = [k for k in _MARCH_KEYS if k not in data]
    if missing:
        raise UsageError(f"{source}: {where} lacks {', '.join(missing)}")
    for key, kind in _MARCH_KEYS.items():
        _check_type(data[key], kind, f"{where}.{key}", source)
    for key in ("boards", *_OP_LISTS):
        if not all(isinstance(v, str) for v in data[key]):
            raise UsageError(f"{source}: {where}.{key} must be a list of names")
    if not data["onnx_opsets"] or not all(isinstance(v, int) and not isinstance(v, bool) for v in data["onnx_opsets"]):
        raise UsageError(f"{source}: {where}.onnx_opsets must be a non-empty list of integers")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in data["conditional_ops"].items()):
        raise UsageError(f"{source}: {where}.conditional_ops must map op names to notes")
    if data["activation_matmul"] not in ACTIVATION_MATMUL:
        raise UsageError(f"{source}: {where}.activation_matmul = {data['activation_matmul']!r} is not one of "
                         f"{', '.join(ACTIVATION_MATMUL)}")
    seen: dict[str, str] = {}
    for key in (*_OP_LISTS, "conditional_ops"):
        for op in data[key]:
            if op in seen:
                raise UsageError(f"{source}: {where}: op {op} is listed in both {seen[op]} and {key}")
            seen[op] = key
    return March(
        name=name,
        boards=tuple(data["boards"]),
        toolchain=data["toolchain"],
        onnx_opsets=tuple(data["onnx_opsets"]),
        max_ir_version=data["max_ir_version"],
        bpu_ops=frozenset(data["bpu_ops"]),
        conditional_ops=dict(sorted(data["conditional_ops"].items())),
        cpu_ops=frozenset(data["cpu_ops"]),
        not_integrated_ops=frozenset(data["not_integrated_ops"]),
        activation_matmul=data["activation_matmul"],
    )


@dataclass(frozen=True)
class TargetRow:
    """One mnv4-deploy target (e.g. bpu-x5): which march it builds for and how it compiles."""

    name: str
    march: str
    board: str
    compile_mode: str
    optimize_level: str


def load_march_table(path: str | Path | None = None) -> dict[str, March]:
    """Read and schema-check the march table; `path=None` reads the shipped one."""
    source, data = _read_table(path)
    return {name: _parse_march(name, row, source) for name, row in data["marches"].items()}


def load_target_table(path: str | Path | None = None) -> dict[str, TargetRow]:
    """The `targets` rows of the table; each must name a march the table defines."""
    source, data = _read_table(path)
    rows = {}
    for name, row in data["targets"].items():
        where = f"targets.{name}"
        _check_type(row, dict, where, source)
        unknown = [k for k in row if k not in _TARGET_KEYS]
        missing = [k for k in _TARGET_KEYS if k not in row]
        if unknown:
            raise UsageError(f"{source}: unknown key {where}.{unknown[0]}", f"allowed here: {', '.join(_TARGET_KEYS)}")
        if missing:
            raise UsageError(f"{source}: {where} lacks {', '.join(missing)}")
        for key, kind in _TARGET_KEYS.items():
            _check_type(row[key], kind, f"{where}.{key}", source)
        if row["march"] not in data["marches"]:
            raise UsageError(f"{source}: {where}.march = {row['march']!r} is not in marches",
                             f"known: {', '.join(data['marches'])}")
        rows[name] = TargetRow(name=name, **row)
    return rows


def _read_table(path: str | Path | None) -> tuple[str, dict]:
    if path is None:
        source, text = _default_table_text()
    else:
        source, text = str(path), Path(path).read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    _check_type(data, dict, "the march table", source)
    for key in data:
        if key not in _TOP_KEYS:
            raise UsageError(f"{source}: unknown key {key}", f"allowed here: {', '.join(_TOP_KEYS)}")
    for key, kind in _TOP_KEYS.items():
        if key not in data:
            raise UsageError(f"{source}: missing key {key}")
        _check_type(data[key], kind, key, source)
    return source, data


def get_march(name: str, table: Mapping[str, March] | None = None) -> March:
    """The table row for `name`, or a usage error listing the known marches."""
    table = load_march_table() if table is None else table
    if name not in table:
        raise UsageError(f"unknown BPU march {name!r}", f"known: {', '.join(sorted(table))}")
    return table[name]


# ---- the op check ------------------------------------------------------------------------
@dataclass(frozen=True)
class OffBpuNode:
    """A node the BPU will not run by default. kind: cpu | conditional | not_integrated | unsupported."""

    name: str
    op_type: str
    kind: str
    note: str


@dataclass(frozen=True)
class OpCheck:
    """What `hb_mapper checker` is expected to report, read off the published op list."""

    march: str
    opset: int | None
    accepted_opsets: tuple[int, ...]
    ir_version: int
    max_ir_version: int
    off_bpu: tuple[OffBpuNode, ...]

    @property
    def opset_ok(self) -> bool:
        return self.opset in self.accepted_opsets

    @property
    def ir_version_ok(self) -> bool:
        return self.ir_version <= self.max_ir_version

    @property
    def ok(self) -> bool:
        """True when the whole graph can stay on the BPU and the file is accepted."""
        return self.opset_ok and self.ir_version_ok and not self.off_bpu

    @property
    def off_bpu_op_types(self) -> list[str]:
        return sorted({n.op_type for n in self.off_bpu})

    def problems(self) -> list[str]:
        """One line per problem, stable order: file-level first, then nodes in graph order."""
        lines = []
        if not self.opset_ok:
            lines.append(f"ONNX opset {self.opset} is not accepted by {self.march} "
                         f"(accepts {', '.join(map(str, self.accepted_opsets))}); re-export with opset "
                         f"{max(self.accepted_opsets)}")
        if not self.ir_version_ok:
            lines.append(f"ONNX IR version {self.ir_version} is above {self.max_ir_version}, the newest "
                         f"{self.march}'s toolchain reads")
        lines += [f"{n.name} ({n.op_type}): {n.kind}: {n.note}" for n in self.off_bpu]
        return lines


def _constant_names(graph: Any) -> set[str]:
    """Tensors known before inference: initializers, Constant outputs, and anything computed
    only from those (the toolchain folds such subgraphs away)."""
    const = {init.name for init in graph.initializer} | {""}  # "" = omitted optional input
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant" or (node.input and all(i in const for i in node.input)):
            const.update(node.output)
    return const


def _static_shapes(model: Any) -> dict[str, tuple[int | None, ...]]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a help, not a requirement
        inferred = model
    shapes: dict[str, tuple[int | None, ...]] = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        ttype = info.type.tensor_type
        if ttype.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim)
    return shapes


def _rank4_shared_rhs(a: tuple[int | None, ...] | None, b: tuple[int | None, ...] | None) -> bool:
    """X3 rule: featuremap x featuremap maps only as 1xBxMxK @ 1x1xKxN."""
    return (a is not None and b is not None and len(a) == 4 and len(b) == 4
            and a[0] == 1 and b[0] == 1 and b[1] == 1 and None not in (a[3], b[2]) and a[3] == b[2])


def _node_verdict(node: Any, march: March, const: set[str], shapes: Mapping[str, tuple]) -> tuple[str, str] | None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return "unsupported", f"custom domain {node.domain!r} is not in the published list"
    if node.input and all(i in const for i in node.input) and op not in march.not_integrated_ops:
        return None  # folded by the toolchain's constant folding
    if op == "MatMul" and op in march.bpu_ops and all(i not in const for i in node.input[:2]):
        if march.activation_matmul == "bpu":
            return None
        if march.activation_matmul == "rank4_shared_rhs":
            a, b = (shapes.get(i) for i in node.input[:2])
            if _rank4_shared_rhs(a, b):
                return None
            return "cpu", (f"activation x activation MatMul with shapes {a} @ {b}: {march.name} maps only "
                           "1xBxMxK @ 1x1xKxN")
        return "cpu", f"activation x activation MatMul does not map on {march.name}"
    if op in march.bpu_ops:
        return None
    if op in march.conditional_ops:
        return "conditional", march.conditional_ops[op]
    if op in march.cpu_ops:
        return "cpu", f"runs on the CPU on {march.name} (published op list)"
    if op in march.not_integrated_ops:
        return "not_integrated", "CPU operator not yet integrated in the toolchain: expect the conversion to fail"
    return "unsupported", f"not in {march.name}'s published op list"


def check_onnx_ops(onnx_model: Any, march: str | March) -> OpCheck:
    """List every node of `onnx_model` (a ModelProto or a path) that the BPU will not run.

    Nodes computed only from constants are skipped: the toolchain folds them. A MatMul between
    two activations follows the march's `activation_matmul` rule (shapes from ONNX shape
    inference). Only the top-level graph is checked; control-flow ops are flagged themselves.
    """
    import onnx

    model = onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, Path)) else onnx_model
    row = march if isinstance(march, March) else get_march(march)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    graph = model.graph
    const = _constant_names(graph)
    shapes = _static_shapes(model) if row.activation_matmul == "rank4_shared_rhs" else {}
    off = []
    for index, node in enumerate(graph.node):
        verdict = _node_verdict(node, row, const, shapes)
        if verdict is not None:
            off.append(OffBpuNode(node.name or f"{node.op_type}#{index}", node.op_type, *verdict))
    return OpCheck(row.name, opset, row.onnx_opsets, int(model.ir_version), row.max_ir_version, tuple(off))
