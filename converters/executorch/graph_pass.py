"""The loop every rewrite of an exported graph shares: visit each call of one op, recompile once."""
from __future__ import annotations

from typing import Any, Callable


def rewrite_calls(graph_module: Any, target: Any, rewrite: Callable[[Any, Any], bool]) -> int:
    """`rewrite(graph, node)` on every `call_function` of `target`; returns how many it rewrote (it returns
    True for those), recompiling the module once when any was."""
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is target and rewrite(graph, node):
            count += 1
    if count:
        graph_module.recompile()
    return count
