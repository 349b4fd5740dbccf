"""`mnv4-deploy merge-eval`: the shards of one evaluation, merged into the numbers of one run.

Each `--eval-shard K/N` run writes per-image records under its `--out/eval/`. Merging checks
that every shard belongs to the same evaluation (model, weights, recipe, contract, targets and
artifact hashes, labeled set, chunking) and that the N shards are all there once, then writes
the records of the whole set (byte-identical to an unsharded run's) and every target's accuracy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .artifacts import write_json_atomic
from .errors import EXIT_ACCURACY, EXIT_OK, UsageError
from .evaluation import (COMMON, EVAL_DIR, META, PER_SIDE, REFERENCE, EvalRecords, concat, describe_value,
                         empty_common, empty_side, first_difference, load_records, write_records)

SUMMARY = "eval_summary.json"


MERGE_EXEMPT = ("shard",)  # the one field shards of one evaluation differ in


def _is_records_meta(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("kind") == "eval-records"
    except (OSError, ValueError, AttributeError):
        return False


def find_record_dirs(dirs: Sequence[str | Path]) -> list[Path]:
    """Every evaluation records directory (its meta.json says so) below `dirs`: sharded runs' outputs."""
    found: list[Path] = []
    for root in map(Path, dirs):
        if not root.is_dir():
            raise UsageError(f"{root}: no such directory", "pass the --out folders of the sharded runs")
        candidates = [root / META] if (root / META).is_file() else sorted(root.rglob(META))
        found += [p.parent.resolve() for p in candidates if _is_records_meta(p)]
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UsageError(f"no evaluation records below {', '.join(map(str, dirs))}",
                         f"pass the --out folders of runs with --eval-data (each holds {EVAL_DIR}/{META})")
    return unique


def merge_records(dirs: Sequence[str | Path], out_dir: Path) -> tuple[EvalRecords, dict[str, Any]]:
    """Check that the shards belong to one evaluation and cover it once; write the merged records."""
    metas = []
    for d in find_record_dirs(dirs):
        meta = json.loads((d / META).read_text())
        if meta.get("kind") != "eval-records" or not meta.get("complete"):
            raise UsageError(f"{d}: the evaluation did not finish", "finish it with --resume, then merge")
        metas.append((d, meta))
    base_dir, base = metas[0]
    base_run = {k: v for k, v in base["run"].items() if k not in MERGE_EXEMPT}
    for d, meta in metas[1:]:
        run = {k: v for k, v in meta["run"].items() if k not in MERGE_EXEMPT}
        differs = first_difference(base_run, run)
        if differs is not None:
            raise UsageError(f"{d} and {base_dir} are not shards of one evaluation: {differs} differs "
                             f"({describe_value(base_run.get(differs))} vs {describe_value(run.get(differs))})",
                             "merge shards of runs with the same model, recipe, contract, targets and data")
    count = int(base["run"].get("shard_count", 1))
    seen: dict[int, Path] = {}
    for d, meta in metas:
        k = int(str(meta["run"].get("shard") or "1/1").split("/")[0])
        if k in seen:
            raise UsageError(f"shard {k}/{count} given twice ({seen[k]} and {d})", "pass each shard once")
        seen[k] = d
    missing = sorted(set(range(1, count + 1)) - set(seen))
    if missing:
        raise UsageError(f"shard(s) {', '.join(f'{k}/{count}' for k in missing)} missing",
                         f"pass the output of all {count} shards")
    parts = [load_records(seen[k]) for k in sorted(seen)]
    sides = list(parts[0].sides)
    common = {key: concat([p.common[key] for p in parts], empty_common()[key]) for key in COMMON}
    k5 = parts[0].sides[REFERENCE]["top5_classes"].shape[1]
    per_side = {s: {key: concat([p.sides[s][key] for p in parts], empty_side(k5)[key]) for key in PER_SIDE}
                for s in sides}
    if np.any(np.diff(common["index"]) <= 0):
        raise UsageError("the shards' images overlap or are out of order", "merge shards of one evaluation")
    eval_dir = out_dir / EVAL_DIR
    eval_dir.mkdir(parents=True, exist_ok=True)
    write_records(eval_dir, common, per_side)
    skipped = [s for p in parts for s in p.skipped]
    seconds: dict[str, float] = {}
    for _, shard_meta in metas:
        for side, value in (shard_meta.get("model_seconds") or {}).items():
            seconds[side] = round(seconds.get(side, 0.0) + value, 2)
    meta = {**base, "run": {**base["run"], "shard": None}, "skipped": skipped, "count": int(len(common["index"])),
            "model_seconds": seconds, "merged_from": [str(seen[k]) for k in sorted(seen)]}
    write_json_atomic(eval_dir / META, meta)
    return load_records(eval_dir), meta


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
