"""`mnv4-deploy merge-eval`: the shards of one evaluation, merged into the numbers of one run.

Each `--eval-shard K/N` run writes per-image records under its `--out/eval/`. Merging checks
that every shard belongs to the same evaluation (model, weights, recipe, contract, targets and
artifact hashes, labeled set, chunking) and that the N shards are all there once, then writes
the records of the whole set (byte-identical to an unsharded run's) and every target's accuracy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .artifacts import write_json_atomic
from .errors import EXIT_ACCURACY, EXIT_OK
from .evaluation import EVAL_DIR, merge_records

SUMMARY = "eval_summary.json"


def _table(rows: Sequence[dict[str, Any]], reference: dict[str, Any]) -> str:
    lines = ["| target | images | top-1 | top-5 | drop pt (95% CI) | McNemar p | status |",
             "|---|---|---|---|---|---|---|",
             f"| reference | {reference['count']} | {reference['reference_top1']:.2f} | "
             f"{reference['reference_top5']:.2f} | - | - | - |"]
    for row in rows:
        acc = row["accuracy"]
        lo, hi = acc["drop_top1_ci95"]
        lines.append(f"| {row['target']} | {acc['count']} | {acc['top1']:.2f} | {acc['top5']:.2f} | "
                     f"{acc['drop_top1']:+.2f} ({lo:+.2f}, {hi:+.2f}) | {acc['mcnemar_p']:.3g} | {row['status']} |")
    return "\n".join(lines)


def merge_eval(dirs: Sequence[str | Path], out: Path, max_drop: float | None = None) -> dict[str, Any]:
    """Merge shard records into `out/eval/`, write `out/eval_summary.json`, return the summary."""
    records, meta = merge_records(dirs, out)
    reference = records.describe(meta["contract_sha256"])
    rows = []
    for target in records.targets():
        acc = records.accuracy(target).to_dict()
        over = max_drop is not None and acc["drop_top1"] > max_drop
        rows.append({"target": target, "accuracy": acc, "status": "over --max-drop" if over else "ok"})
    code = EXIT_ACCURACY if any(r["status"] != "ok" for r in rows) else EXIT_OK
    summary = {"tool": "mnv4-deploy", "kind": "eval-merge", "exit_code": code, "max_drop": max_drop,
               "run": {k: v for k, v in meta["run"].items() if k != "shard"}, "shards": meta["merged_from"],
               "evaluation": reference, "targets": rows, "records": EVAL_DIR}
    write_json_atomic(out / SUMMARY, summary)
    return {**summary, "table": _table(rows, reference)}
