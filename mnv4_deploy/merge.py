"""Merge per-model (or per-CI-job) outputs into one manifest, SHA256SUMS and report.

Each part is a directory holding a `manifest.json` (and usually `report.json`) written by an
export. Every artifact's sha256 is recomputed before it is listed: a file that changed or
went missing between the build job and the merge job is a problem, and fails the merge.
Paths in the merged files are relative to the merged directory, so `sha256sum -c SHA256SUMS`
works from there.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .artifacts import ensure_writable_dir, sha256_path, write_json_atomic, write_text_atomic
from .checksums import SUMS_FILE, artifact_sums
from .errors import EXIT_OK, EXIT_OTHER, UsageError
from .matrix import pair_rows, to_markdown
from .report import worst_exit_code

MERGED_KIND = "merged"


@dataclass
class Part:
    dir: Path
    manifest: dict[str, Any]
    report: dict[str, Any] | None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable JSON file ({exc})", "point at directories written by mnv4-deploy")


def find_parts(dirs: Sequence[str | Path]) -> list[Part]:
    """Every export's manifest below `dirs` (merged manifests skipped), in path order."""
    parts: list[Part] = []
    for root in map(Path, dirs):
        if not root.is_dir():
            raise UsageError(f"{root}: no such directory", "pass directories that hold manifest.json files")
        for path in sorted(root.rglob("manifest.json")):
            manifest = _read_json(path)
            if (manifest.get("tool") != "mnv4-deploy" or manifest.get("kind") == MERGED_KIND
                    or not isinstance(manifest.get("artifacts"), list)):
                continue  # a merged manifest, or one inside an artifact (e.g. a BPU bundle's own)
            report = _read_json(path.parent / "report.json") if (path.parent / "report.json").exists() else None
            parts.append(Part(path.parent.resolve(), manifest, report))
    unique = {p.dir: p for p in parts}
    if not unique:
        raise UsageError(f"no manifest.json below {', '.join(map(str, dirs))}",
                         "pass the output directories of mnv4-deploy export/build/benchmark")
    return list(unique.values())


def verify(part: Part) -> list[str]:
    """Problems with a part's artifacts: missing files or sha256 that no longer match."""
    problems = []
    for art in part.manifest.get("artifacts", []):
        if not art.get("file") or not art.get("sha256"):
            continue
        path = part.dir / art["file"]
        if not path.exists():
            problems.append(f"{path}: listed in the manifest but missing")
        elif sha256_path(path) != art["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (changed after it was built)")
    return problems


def _sha256sums(parts: Sequence[Part], out: Path) -> str:
    return artifact_sums((part.dir / art["file"] for part in parts for art in part.manifest.get("artifacts", [])
                          if art.get("file")), out)


def merge(dirs: Sequence[str | Path], out: str | Path, extra: dict[str, Any] | None = None,
          notes: Sequence[str] = ()) -> dict[str, Any]:
    """Write manifest.json, SHA256SUMS, report.json, report.md and report.html into `out`.

    Returns the merged report dict; its `exit_code` is the worst part's, or 1 when an
    artifact is missing or changed.
    """
    from .html_report import render

    out = ensure_writable_dir(Path(out))
    parts = find_parts(dirs)
    problems = [p for part in parts for p in verify(part)]
    rel = {part.dir: Path(os.path.relpath(part.dir, out.resolve())).as_posix() for part in parts}
    reports = [{**(part.report or {"model": part.manifest["model"], "results": []}), "dir": rel[part.dir]}
               for part in parts]
    for rep, part in zip(reports, parts):
        if part.report is None:  # a manifest without its report: rows from the manifest alone
            rep["results"] = [{**a, "artifact": a.get("file")} for a in part.manifest.get("artifacts", [])]
    rows = pair_rows(reports)
    interrupted = any(p.manifest.get("interrupted") for p in parts) or bool((extra or {}).get("interrupted"))
    code = worst_exit_code([p.manifest.get("exit_code", EXIT_OK) for p in parts] + [r["exit_code"] for r in rows])
    if problems:
        code = EXIT_OTHER
    manifest = {"tool": "mnv4-deploy", "kind": MERGED_KIND, "exit_code": code, "interrupted": interrupted,
                "problems": problems,
                "artifacts": [{"model": part.manifest["model"]["name"], **art,
                               "file": f"{rel[part.dir]}/{art['file']}" if art.get("file") else None}
                              for part in parts for art in part.manifest.get("artifacts", [])],
                "parts": [{"dir": rel[part.dir], "manifest": part.manifest} for part in parts]}
    merged = {"tool": "mnv4-deploy", "kind": "matrix", "exit_code": code, "passed": code == EXIT_OK and not interrupted,
              "interrupted": interrupted, "problems": problems, **(extra or {}), "rows": rows, "reports": reports}
    all_notes = [*notes, *(f"PROBLEM: {p}" for p in problems)]
    write_json_atomic(out / "manifest.json", manifest)
    write_text_atomic(out / SUMS_FILE, _sha256sums(parts, out.resolve()))
    write_json_atomic(out / "report.json", merged)
    write_text_atomic(out / "report.md", to_markdown(rows, reports, code, all_notes))
    write_text_atomic(out / "report.html", render(merged))
    return merged
