"""Shared fixtures. Tests use random-init or self-trained weights only (no downloads)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a --pretrained test must fail fast, not hang

REPO = Path(__file__).resolve().parents[1]
IMAGENET_SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
SMALL = 64  # input size that keeps every variant's export in seconds


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def imagenet_samples() -> Path:
    if not (IMAGENET_SAMPLES / "labels.csv").exists():
        pytest.skip(f"real images not present at {IMAGENET_SAMPLES} (beside the repo, not in it)")
    return IMAGENET_SAMPLES


def make_images(folder: Path, count: int, size: tuple[int, int] = (80, 60), seed: int = 0) -> list[Path]:
    """Write `count` small RGB JPEGs of smooth random colour fields."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        base = rng.uniform(0, 255, size=(2, 2, 3))
        img = Image.fromarray(base.astype("uint8")).resize(size, Image.BILINEAR)
        path = folder / f"img_{i:03d}.jpg"
        img.save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    make_images(tmp_path / "images", 6)
    return tmp_path / "images"
