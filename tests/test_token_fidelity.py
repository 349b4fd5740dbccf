"""Int8 fidelity of token paths (issue #23): a wide softmax keeps a calibrated grid.

Tokens that read a whole feature map (Mobile-Former's Mobile->Former bridge) take a softmax
over every pixel. On the fixed [0, 1) 1/256 grid (what LiteRT's int8 SOFTMAX computes) a
near-uniform attention over 1024 pixels rounds to zero or one step, and a random-init
attention-heavy model's plan fell to cosine 0.68-0.97 vs float; the plan now calibrates a softmax
wider than `FIXED_GRID_MAX_SOFTMAX_WIDTH` and keeps the fixed grid for the rest, and the
LiteRT-based targets compute the fixed-grid variant (`QuantPlan.with_fixed_softmax_grids`).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mnv4_deploy.canonicalize import canonicalize
from mnv4_deploy.errors import UsageError
from mnv4_deploy.models import recalibrate_batchnorm
from mnv4_deploy.quant import build_plan
from mnv4_deploy.quant.calibrate import FIXED_GRID_MAX_SOFTMAX_WIDTH
from mnv4_deploy.validate import compare

from trained_net import TrainSettings, digits_arrays


class TokenReader(nn.Module):
    """Tokens read the whole map with no key/value projection (the Mobile->Former bridge)."""

    def __init__(self, c: int, d: int):
        super().__init__()
        self.q, self.o, self.scale = nn.Linear(d, c), nn.Linear(c, d), c ** -0.5

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        pix = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        return z + self.o((self.q(z) @ pix.transpose(1, 2) * self.scale).softmax(-1) @ pix)


class TokenNet(nn.Module):
    """Convs with BatchNorm, tokens reading the map after each, logits from token 0 only."""

    def __init__(self, c: int = 16, d: int = 32, tokens: int = 4, blocks: int = 3, classes: int = 10):
        super().__init__()
        self.tokens = nn.Parameter(0.1 * torch.randn(1, tokens, d))
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.ReLU())
        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c)) for _ in range(blocks))
        self.readers = nn.ModuleList(TokenReader(c, d) for _ in range(blocks))
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.tokens.repeat(x.shape[0], 1, 1)
        x = self.stem(x)
        for conv, read in zip(self.convs, self.readers):
            z = read(x := conv(x), z)
        return self.head(z[:, 0])


@pytest.fixture(scope="module")
def token_plan():
    """(plan, held-out digits) of a random-init TokenNet, BatchNorm statistics from the calibration images."""
    _, _, calib, heldout, _ = digits_arrays(TrainSettings(img_size=32))
    torch.manual_seed(0)
    model = TokenNet().eval()
    recalibrate_batchnorm(model, [torch.from_numpy(calib[:64])])
    canonical, _ = canonicalize(model, torch.from_numpy(heldout[:1]))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield build_plan(canonical, calib[:64], "default", log=lambda _: None), heldout[:64]
    finally:
        torch.set_num_threads(previous)


def _parity(plan, x: np.ndarray):
    with torch.no_grad():
        reference = plan.float_model()(torch.from_numpy(x)).numpy()
        return compare(reference, plan.fake_quant_model()(torch.from_numpy(x)).numpy())


def test_a_wide_softmax_gets_a_calibrated_grid_and_the_default_plan_stays_near_float(token_plan):
    plan, x = token_plan
    assert plan.calibrated_softmax_grids == {"softmax": 1024, "softmax_1": 1024, "softmax_2": 1024}
    assert all(plan.activation_ranges[u].scale < 2.0 ** -10 for u in plan.calibrated_softmax_grids)
    assert not plan.float_layers  # fidelity from the grids, not from keeping layers float
    calibrated = _parity(plan, x)
    assert calibrated.cosine >= 0.98 and calibrated.sqnr_db > 30.0, calibrated
    # the fixed grid (the plan before this change, and what LiteRT computes) loses the token path
    fixed_plan = plan.with_fixed_softmax_grids()
    assert fixed_plan is plan.with_fixed_softmax_grids() and not fixed_plan.calibrated_softmax_grids
    assert fixed_plan.stats["fixed_softmax_grids"] == ["softmax", "softmax_1", "softmax_2"]
    assert all(fixed_plan.activation_ranges[u].scale == 2.0 ** -8 for u in plan.calibrated_softmax_grids)
    fixed = _parity(fixed_plan, x)
    assert fixed.sqnr_db < calibrated.sqnr_db - 10.0, (fixed, calibrated)
    assert plan.to_dict()["calibrated_softmax_grids"] == plan.calibrated_softmax_grids


def test_a_narrow_softmax_keeps_the_fixed_grid_litert_computes():
    class TokenSelfAttention(nn.Module):
        def forward(self, x):
            t = x.flatten(2)  # (B, C, HW): attention among the C channels over HW features
            return ((t @ t.transpose(1, 2)).softmax(-1) @ t).reshape(x.shape)

    width = FIXED_GRID_MAX_SOFTMAX_WIDTH
    model = nn.Sequential(nn.Conv2d(3, width, 1), TokenSelfAttention(), nn.Conv2d(width, 4, 1)).eval()
    data = np.random.default_rng(0).standard_normal((8, 3, 6, 6)).astype(np.float32)
    plan = build_plan(model, data, "default", log=lambda _: None)
    softmax = next(u for u in plan.units if plan.unit_op(u) == "softmax")
    assert plan.calibrated_softmax_grids == {}
    assert plan.activation_ranges[softmax].scale == 2.0 ** -8
    assert plan.with_fixed_softmax_grids() is plan


def test_executorch_int8_refuses_a_plan_with_float_layers_in_one_line(token_plan):
    from types import SimpleNamespace

    from mnv4_deploy.converters.executorch import _full_integer_plan

    plan, _ = token_plan
    mixed = plan.with_float(["readers.0.o"], recorrect=False)
    with pytest.raises(UsageError) as err:
        _full_integer_plan(SimpleNamespace(plan=mixed), "executorch-int8")
    line = err.value.one_line()
    assert "\n" not in line and err.value.exit_code == 2
    assert line.startswith("target executorch-int8 cannot run mixed precision") and "readers.0.o" in line
    assert "onnx-int8" in line  # the fix: a target that keeps float layers
