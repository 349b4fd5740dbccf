"""Shared fixtures. Tests use random-init or self-trained weights only (no downloads)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a --pretrained test must fail fast, not hang

# In this stack, importing TensorFlow before triton segfaults the process when triton loads later
# (tests that build .tflite files with TF directly, then a torch.export). Loading triton first,
# as litert_torch itself does, makes any test order safe.
try:
    import triton  # noqa: F401
except ImportError:
    pass

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


# ---- trained test network + quantization plans (mnv4_deploy.quant; tests/trained_net.py) ----
# A really trained MNv4 (timm conv_small_050 on scikit-learn digits, 32x32): random weights
# say nothing about int8 accuracy. Trained once, cached under .pytest_cache/mnv4-trained.


@pytest.fixture(scope="session")
def trained_digits():
    """`trained_net.TrainedDigits`: model (eval), contract, train/calib/held-out arrays, float top-1."""
    from trained_net import load_trained_digits

    return load_trained_digits(log=lambda _: None)


@pytest.fixture(scope="session")
def digit_folders(trained_digits, tmp_path_factory) -> tuple[Path, Path]:
    """(calibration folder, labeled held-out folder) of the trained digits net, as --calib-data/--eval-data."""
    from trained_net import write_digit_images

    root = tmp_path_factory.mktemp("digits")
    net = trained_digits
    write_digit_images(root / "calib", net.x_calib, net.contract)
    write_digit_images(root / "eval", net.x_heldout, net.contract, net.y_heldout)
    return root / "calib", root / "eval"


class DigitsPlans:
    """Canonical digits model plus quantization plans built once per recipe override."""

    def __init__(self, net):
        import torch

        from mnv4_deploy.canonicalize import canonicalize
        from mnv4_deploy.quant.threads import single_thread
        from mnv4_deploy.recipes import load_recipe

        self.net = net
        with single_thread():  # 32x32 tensors: see one_torch_thread below
            self.canonical, _ = canonicalize(net.model, torch.from_numpy(net.x_calib[:2]))
            with torch.no_grad():
                self.float_logits = self.canonical(torch.from_numpy(net.x_heldout)).numpy()
        self.base = load_recipe("default").to_dict()
        self.base["calibration"]["batch_size"] = 256  # 32x32 images: fewer, larger batches are faster
        self._plans: dict = {}
        self._logits: dict = {}

    def recipe(self, **overrides) -> dict:
        """The default recipe with `section__key=value` (or `key=value`) overrides."""
        import copy

        raw = copy.deepcopy(self.base)
        for name, value in overrides.items():
            section, _, key = name.partition("__")
            if key:
                raw[section][key] = value
            else:
                raw[section] = value
        return raw

    def plan(self, overflow_fix: str = "off", **overrides):
        """The plan of the default recipe with `overrides`, and `overflow_fix` (build_plan's default: off)."""
        from mnv4_deploy.quant import build_plan

        key = (overflow_fix, *sorted(overrides.items()))
        if key not in self._plans:
            self._plans[key] = build_plan(self.canonical, self.net.x_calib, self.recipe(**overrides),
                                          log=lambda _: None, overflow_fix=overflow_fix)
        return self._plans[key]

    def quant_logits(self, plan, x=None):
        """Fake-quant logits on `x` (default: the held-out images, cached per plan)."""
        import torch

        if x is None and id(plan) in self._logits:
            return self._logits[id(plan)][1]
        data = self.net.x_heldout if x is None else x
        with torch.no_grad():
            logits = plan.fake_quant_model()(torch.from_numpy(data)).numpy()
        if x is None:
            self._logits[id(plan)] = (plan, logits)  # holding the plan keeps its id unique
        return logits


@pytest.fixture(scope="session")
def digits_plans(trained_digits) -> DigitsPlans:
    return DigitsPlans(trained_digits)


@pytest.fixture
def one_torch_thread():
    """Run a test's torch work on one thread (restored afterwards).

    The digits network works on 32x32 tensors; on this shared 2-core VM a 2-thread intra-op
    pool made such work 20-30x slower (sensitivity on 64 images: 4 s on one thread, 90-120 s
    on two) because every small op waits for a descheduled worker.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
