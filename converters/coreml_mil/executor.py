"""`MilExecutor`: evaluate a saved ML Program's main function with NumPy.

Precision model: every kernel computes in float32 (fp16 operands are widened first) and
its result is cast to the dtype the program declares for that output. An fp16 program
therefore rounds to fp16 after every op, as Core ML's fp16 compute does; what this does not
reproduce is fp16 accumulation inside an op (GPU/ANE kernels may accumulate in fp16).
Compile-time ops (`constexpr_*`) are evaluated once, at load.

Speed: a batch-1 program's matmuls are small (a 1x1 conv at 8x8 is 192x1152 by 1152x64), and
OpenBLAS hands each one to its thread pool, whose threads wait for a free core on a busy host
(Lite1 int8 at 240 px on a loaded 2-core host: 0.8-4.4 s per image with 2 BLAS threads, 0.22-0.8 s
with one; on idle cores both take 0.21-0.22 s). `run` therefore keeps BLAS to one thread while
it runs; parallelism belongs to the caller (images, shards). One thread also keeps results
independent of the host's thread count (fp16 W8 logits moved by one fp16 step with it).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, MutableMapping, Union

import numpy as np
from threadpoolctl import threadpool_limits

from .errors import BadInputError, MilExecutorError, UnsupportedOpError
from .loader import LoadedProgram, Node, TensorSpec, load_program
from .ops import OP_TABLE


def _widen(value: Any) -> Any:
    """fp16 operands are computed in float32."""
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float16:
        return value.astype(np.float32)
    return value


def _run_node(node: Node, env: MutableMapping[str, Any]) -> None:
    """Run one op on the values in `env` and store its outputs there, in their declared dtypes."""
    kernel = OP_TABLE.get(node.op_type)
    if kernel is None:
        raise UnsupportedOpError(node.op_type, node.name)
    args = {
        param: [_widen(env[n]) for n in ref] if isinstance(ref, tuple) else _widen(env[ref])
        for param, ref in node.inputs.items()
    }
    try:
        result = kernel(args)
    except NotImplementedError as exc:
        raise UnsupportedOpError(node.op_type, node.name, str(exc)) from None
    except MilExecutorError:
        raise
    except Exception as exc:
        raise MilExecutorError(f"op {node.op_type!r} (op {node.name!r}) failed: {type(exc).__name__}: {exc}") from exc
    results = result if isinstance(result, tuple) else (result,)
    if len(results) != len(node.outputs):
        raise MilExecutorError(f"op {node.op_type!r} (op {node.name!r}) gave {len(results)} outputs, "
                               f"the program declares {len(node.outputs)}")
    for name, dtype, value in zip(node.outputs, node.out_dtypes, results):
        env[name] = np.asarray(value).astype(dtype, copy=False)  # the fp16 rounding point


class MilExecutor:
    """Reference executor for the main function of a saved Core ML ML Program (.mlpackage)."""

    def __init__(self, program: LoadedProgram):
        self._inputs = {spec.name: spec for spec in program.inputs}
        self._outputs = list(program.outputs)
        self._consts = dict(program.consts)
        self._nodes = self._fold_constexpr(program.nodes)
        # fp16 -> fp32 is exact, so widen constants once here rather than at every use.
        self._consts = {name: _widen(value) for name, value in self._consts.items()}
        self._last_use = self._last_uses()

    @classmethod
    def from_mlpackage(cls, path: Union[str, os.PathLike]) -> "MilExecutor":
        """Load and validate `path`; raises CorruptModelError / UnsupportedOpError."""
        return cls(load_program(path, set(OP_TABLE)))

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    @property
    def op_types(self) -> dict[str, int]:
        """Count of each executed op type (const/constexpr ops are folded at load)."""
        counts: dict[str, int] = {}
        for node in self._nodes:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Evaluate the program on `feeds` (input name -> array); float outputs come back as float32."""
        env: dict[str, Any] = dict(self._consts)
        env.update(self._prepare_inputs(feeds))
        with threadpool_limits(limits=1, user_api="blas"):  # see the module docstring
            for index, node in enumerate(self._nodes):
                _run_node(node, env)
                for name in self._last_use.get(index, ()):
                    env.pop(name, None)  # free intermediates as soon as no later op reads them
        return {name: self._as_output(env[name]) for name in self._outputs}

    # ------------------------------------------------------------ internals
    def _fold_constexpr(self, nodes: list[Node]) -> list[Node]:
        """constexpr_* ops only read constants: evaluate them once, here."""
        remaining = []
        for node in nodes:
            if node.op_type.startswith("constexpr_"):
                _run_node(node, self._consts)
            else:
                remaining.append(node)
        return remaining

    def _last_uses(self) -> dict[int, list[str]]:
        last: dict[str, int] = {}
        for index, node in enumerate(self._nodes):
            for ref in node.inputs.values():
                for name in ref if isinstance(ref, tuple) else (ref,):
                    if name not in self._consts:
                        last[name] = index
        keep = set(self._outputs)
        by_index: dict[int, list[str]] = {}
        for name, index in last.items():
            if name not in keep:
                by_index.setdefault(index, []).append(name)
        return by_index

    def _prepare_inputs(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        missing = [name for name in self._inputs if name not in feeds]
        unknown = [name for name in feeds if name not in self._inputs]
        if missing or unknown:
            raise BadInputError(f"inputs missing {missing}, unknown {unknown}; "
                                f"the program takes {self.input_names}")
        return {name: self._check_input(self._inputs[name], feeds[name]) for name in self._inputs}

    @staticmethod
    def _check_input(spec: TensorSpec, value: Any) -> np.ndarray:
        array = np.asarray(value)
        fits = array.ndim == len(spec.shape) and all(
            d is None or d == s for d, s in zip(spec.shape, array.shape))
        if not fits:
            shape = tuple("?" if d is None else d for d in spec.shape)
            raise BadInputError(f"input {spec.name!r} has shape {array.shape}, the program expects {shape}")
        return array.astype(spec.dtype, copy=False)

    @staticmethod
    def _as_output(value: np.ndarray) -> np.ndarray:
        return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
