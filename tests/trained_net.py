"""A really trained MobileNet-V4 for tests: timm conv_small on scikit-learn's digits.

Random weights say nothing about quantization accuracy (activations are Gaussian, no
channel matters more than another). This trains the real architecture, seeded, on
`load_digits` (8x8 grey -> 32x32 RGB, normalized by a mean = std = 0.5 contract) to a
held-out top-1 well above 90%, in well under a minute on 2 cores, and caches the weights
keyed by a hash of every training setting, so later runs only load them.

Used through the session fixture `trained_digits` (tests/conftest.py); other targets'
tests (TFLite, CoreML, BPU) reuse the same fixture.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mnv4_deploy.preprocess import Preprocess

REPO = Path(__file__).resolve().parents[1]
# .pytest_cache/ is already git-ignored; MNV4_TEST_CACHE moves it.
DEFAULT_CACHE = Path(os.environ.get("MNV4_TEST_CACHE", REPO / ".pytest_cache" / "mnv4-trained"))


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines the trained weights (hashed into the cache key)."""

    arch: str = "mobilenetv4_conv_small_050"  # the narrow variant: the quantization-sensitive one
    num_classes: int = 10
    img_size: int = 32
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05  # SGD, Nesterov momentum 0.9, one-cycle schedule
    weight_decay: float = 5e-4
    shift_px: int = 2  # random translation augmentation
    heldout_fraction: float = 0.33
    calib_size: int = 256
    seed: int = 0
    threads: int = 1  # results depend on it (float summation order); one thread is also fastest here
    version: int = 2  # bump when the training code changes meaningfully

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainedDigits:
    """A trained model and the arrays around it (all inputs NCHW float32, normalized)."""

    model: "object"  # timm model, eval mode (not canonicalized)
    settings: TrainSettings
    contract: Preprocess  # how 0-255 pixels became the inputs (mean = std = 0.5)
    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray  # a seeded subset of the training images
    x_heldout: np.ndarray
    y_heldout: np.ndarray
    float_top1: float  # held-out top-1 (%) of `model`
    weights_path: Path
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.settings.img_size, self.settings.img_size)

    def top1(self, logits: np.ndarray) -> float:
        """Held-out top-1 (%) of logits computed on `x_heldout`."""
        return float(np.mean(np.argmax(logits, axis=1) == self.y_heldout) * 100.0)


def digits_contract(img_size: int) -> Preprocess:
    return Preprocess(crop_size=(img_size, img_size), resize_short=img_size, interpolation="bilinear",
                      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def digits_arrays(settings: TrainSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_calib, x_heldout, y_heldout), stratified and seeded."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = digits.images.astype(np.float32) / 16.0 * 255.0  # (N, 8, 8) in 0-255
    up = F.interpolate(torch.from_numpy(pixels)[:, None], size=(settings.img_size,) * 2, mode="bilinear",
                       align_corners=False).numpy()
    images = digits_contract(settings.img_size).normalize(np.repeat(up, 3, axis=1)).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=settings.heldout_fraction,
                                              random_state=settings.seed, stratify=labels)
    rng = np.random.default_rng(settings.seed)
    calib = x_tr[np.sort(rng.choice(len(x_tr), size=min(settings.calib_size, len(x_tr)), replace=False))]
    return x_tr, y_tr, np.ascontiguousarray(calib), x_te, y_te


def _shift(batch, px: int, gen):
    """Random translation by up to `px` pixels (pad with the background, crop back)."""
    import torch
    import torch.nn.functional as F

    if px <= 0:
        return batch
    n, _, h, w = batch.shape
    padded = F.pad(batch, (px, px, px, px), value=float(batch.min()))
    dy = torch.randint(0, 2 * px + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * px + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def _train_loop(settings: TrainSettings, x: np.ndarray, y: np.ndarray, log):
    import timm
    import torch

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model = timm.create_model(settings.arch, num_classes=settings.num_classes, exportable=True)
    # A zero classifier starts at uniform predictions; timm's init gives logits of std ~5
    # here (the head BN sees 1x1 maps), which stalls the first epochs.
    torch.nn.init.zeros_(model.classifier.weight)
    torch.nn.init.zeros_(model.classifier.bias)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                          weight_decay=settings.weight_decay)
    return fit_one_cycle(model, opt, x, y, settings, gen, "digits", log)


def fit_one_cycle(model, opt, x: np.ndarray, y: np.ndarray, settings, gen, label: str, log):
    """Seeded one-cycle training with random shifts; shared by every digits-trained test net.

    `settings` needs epochs, batch_size, lr and shift_px; `gen` drives the order and the shifts.
    """
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = settings.epochs * ((len(x) + settings.batch_size - 1) // settings.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.time()
    model.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            loss = loss_fn(model(_shift(xt[idx], settings.shift_px, gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"{label} epoch {epoch + 1}/{settings.epochs}: loss {total / len(x):.3f} ({time.time() - t0:.0f}s)")
    return model.eval()


def load_trained_digits(settings: TrainSettings | None = None, cache_dir: Path | None = None,
                        log=print) -> TrainedDigits:
    """Train (or load from the cache) the digits MNv4 and evaluate it on the held-out split."""
    import timm

    settings = settings or TrainSettings()
    path = Path(cache_dir or DEFAULT_CACHE) / f"{settings.arch}-digits-{settings.key()}.pt"
    x_tr, y_tr, x_cal, x_te, y_te = digits_arrays(settings)
    model = load_or_train(path, lambda: timm.create_model(settings.arch, num_classes=settings.num_classes,
                                                          exportable=True),
                          lambda: _train_loop(settings, x_tr, y_tr, log), settings.threads)
    return TrainedDigits(model, settings, digits_contract(settings.img_size), x_tr, y_tr, x_cal, x_te, y_te,
                         heldout_top1(model, x_te, y_te), path)


def load_or_train(path: Path, build, train, threads: int):
    """`build()` with the weights cached at `path`, else `train()` on `threads` threads, cached there.

    Small 32x32 tensors: a 2-thread pool costs more than it gives on a shared 2-core
    machine (measured: 27 s on one thread vs 390 s on two for the same 10 epochs), and the
    float summation order (so the weights) depends on the thread count. The cache file is
    written through a `.tmp` and a rename, so an interrupted run never leaves half a file.
    """
    import torch

    if path.exists():
        model = build()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = train()
    finally:
        torch.set_num_threads(previous)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model


def heldout_top1(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 (%) of `model` on the normalized images `x` with labels `y`."""
    import torch

    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return float(np.mean(np.argmax(logits, axis=1) == y) * 100.0)


def write_digit_images(folder: Path, images, contract, labels=None) -> None:
    """Normalized digits tensors back to 8-bit PNGs (+ labels.csv), as a user's image folder."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    mean = np.asarray(contract.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(contract.std, np.float32).reshape(3, 1, 1)
    rows = []
    for i, x in enumerate(images):
        pixels = np.clip(np.round((x * std + mean) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(pixels).save(folder / f"d{i:04d}.png")
        if labels is not None:
            rows.append(f"d{i:04d}.png,{int(labels[i])}")
    if labels is not None:
        (folder / "labels.csv").write_text("file,class_index\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    t = time.time()
    net = load_trained_digits()
    print(f"{net.settings.arch}: held-out top-1 {net.float_top1:.2f}% on {len(net.y_heldout)} images "
          f"({time.time() - t:.0f}s), weights {net.weights_path}")

