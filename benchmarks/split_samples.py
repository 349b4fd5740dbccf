"""Split a labeled image folder into disjoint calibration and evaluation folders.

    python benchmarks/split_samples.py --out /tmp/split            # ../shared/data/imagenet-samples, 200 / 800
    mnv4-export ... --calib-data /tmp/split/calib --eval-data /tmp/split/eval

Calibrating and evaluating on the same photos would flatter int8, so the two halves must not
overlap. The split is deterministic: the files of `labels.csv`, sorted by name, shuffled by
`random.Random(seed)`; the first `--calib` go to `calib/`, the rest to `eval/` with their own
`labels.csv`. Images are symlinked, not copied (the data stays outside the repository).
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "imagenet-samples"


def read_labels(source: Path) -> tuple[list[list[str]], list[str]]:
    """Rows of `source/labels.csv` (file, class_index, ...), header excluded, sorted by file name."""
    path = source / "labels.csv"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (a labeled folder has labels.csv: file,class_index,...)")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return sorted((r for r in rows[1:] if r), key=lambda r: r[0]), rows[0]


def split(source: Path, out: Path, calib: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """Write `out/calib` and `out/eval` (with labels.csv); returns the two folders."""
    rows, header = read_labels(source)
    if not 0 < calib < len(rows):
        raise SystemExit(f"error: --calib {calib}: must be between 1 and {len(rows) - 1} ({len(rows)} labeled images)")
    order = list(rows)
    random.Random(seed).shuffle(order)
    calib_dir, eval_dir = out / "calib", out / "eval"
    for folder in (calib_dir, eval_dir):
        if folder.exists() and any(folder.iterdir()):
            raise SystemExit(f"error: {folder} is not empty (pick a new --out)")
        folder.mkdir(parents=True, exist_ok=True)
    for row in order[:calib]:
        os.symlink((source / row[0]).resolve(), calib_dir / row[0])
    held_out = sorted(order[calib:], key=lambda r: r[0])
    for row in held_out:
        os.symlink((source / row[0]).resolve(), eval_dir / row[0])
    with open(eval_dir / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(held_out)
    return calib_dir, eval_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calib", type=int, default=200, help="images for calibration (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    calib_dir, eval_dir = split(args.source, args.out, args.calib, args.seed)
    print(f"{calib_dir} ({args.calib} images)\n{eval_dir} (labels.csv)", file=sys.stderr)


if __name__ == "__main__":
    main()
