"""Attention as users spell it: one small module per spelling, for the spelling zoo (issue #23).

Every spelling is a block mapping a feature map `(B, C, H, W)` to one of the same shape, so
the same block runs alone on the image (`alone`) and inside a small conv network (`in_convnet`).
Tokens are learned but conditioned on the image (a parameter alone would be folded into a
constant by the converters, and no activation x activation matmul would be left to test).

Adding a spelling is one line in `SPELLINGS`: a name and a factory `(channels) -> block`.
"""
from __future__ import annotations

import operator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

TOKENS = 4
HEADS = 2
MatMul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _einsum_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bij,bjk->bik", a, b)


class Tokens(nn.Module):
    """(B, T, C) tokens: learned, plus a Linear of the pooled map (a Linear on a 2-D input)."""

    def __init__(self, c: int, t: int = TOKENS):
        super().__init__()
        self.tokens = nn.Parameter(torch.linspace(-1.0, 1.0, t * c).reshape(1, t, c))
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens + self.proj(x.mean((2, 3)))[:, None, :]


class BridgeAttention(nn.Module):
    """Mobile-Former's two bridges with `mm` as the matmul.

    layout "transposed": the map as pixel tokens `x.flatten(2).transpose(1, 2)` (B, HW, C);
    tokens attend to it with no key/value projection, and the map attends back to the tokens
    (`pixels @ keys.transpose(1, 2)`: both operands transposed views).
    layout "flattened": the map as `x.flatten(2)` (B, C, HW), the same function spelled the
    other way round (`tokens @ pixels`, `attn @ pixels.transpose(1, 2)`).
    """

    def __init__(self, c: int, mm: MatMul, layout: str):
        super().__init__()
        self.mm, self.layout, self.scale = mm, layout, c ** -0.5
        self.tokens = Tokens(c)
        self.q = nn.Linear(c, c)
        self.k = nn.Linear(c, c)
        self.v = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        z = self.tokens(x)
        mm = self.mm
        if self.layout == "transposed":
            pix = x.flatten(2).transpose(1, 2)  # (B, HW, C)
            z = z + mm((mm(self.q(z), pix.transpose(1, 2)) * self.scale).softmax(-1), pix)
            attn = (mm(pix, self.k(z).transpose(1, 2)) * self.scale).softmax(-1)  # (B, HW, T)
            out = mm(attn, self.v(z)).transpose(1, 2)
        else:
            pix = x.flatten(2)  # (B, C, HW)
            z = z + mm((mm(self.q(z), pix) * self.scale).softmax(-1), pix.transpose(1, 2))
            attn = (mm(self.k(z), pix) * self.scale).softmax(1)  # (B, T, HW)
            out = mm(self.v(z).transpose(1, 2), attn)
        return x + out.reshape(b, c, h, w)


class EinsumAttention(nn.Module):
    """The bridges as einsum equations on the 4-D map itself (no flatten)."""

    def __init__(self, c: int):
        super().__init__()
        self.scale = c ** -0.5
        self.tokens = Tokens(c)
        self.k = nn.Linear(c, c)
        self.v = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        z = self.tokens(x)
        attn = (torch.einsum("btc,bchw->bthw", z, x) * self.scale).flatten(2).softmax(-1).reshape(b, -1, h, w)
        z = z + torch.einsum("bthw,bchw->btc", attn, x)
        back = (torch.einsum("bchw,btc->bhwt", x, self.k(z)) * self.scale).softmax(-1)
        return x + torch.einsum("bhwt,btc->bchw", back, self.v(z))


class HeadsAttention(nn.Module):
    """Multi-head pixel -> token attention: F.scaled_dot_product_attention, or the same by hand."""

    def __init__(self, c: int, fused: bool):
        super().__init__()
        self.fused, self.heads = fused, HEADS
        self.tokens = Tokens(c)
        self.k = nn.Linear(c, c)
        self.v = nn.Linear(c, c)
        self.o = nn.Linear(c, c)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, N, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        z = self.tokens(x)
        q, k, v = self._split(x.flatten(2).transpose(1, 2)), self._split(self.k(z)), self._split(self.v(z))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v
        out = self.o(out.transpose(1, 2).reshape(b, h * w, c))  # a Linear on (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class MhaAttention(nn.Module):
    """nn.MultiheadAttention: pixels query the tokens, then the tokens attend among themselves."""

    def __init__(self, c: int, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.tokens = Tokens(c)
        self.cross = nn.MultiheadAttention(c, HEADS, batch_first=batch_first)
        self.self_attn = nn.MultiheadAttention(c, HEADS, batch_first=batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        z, pix = self.tokens(x), x.flatten(2).transpose(1, 2)
        if not self.batch_first:
            z, pix = z.transpose(0, 1), pix.transpose(0, 1)
        z = z + self.self_attn(z, z, z, need_weights=False)[0]
        out = self.cross(pix, z, z)[0]
        if not self.batch_first:
            out = out.transpose(0, 1)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class LinearOn(nn.Module):
    """nn.Linear on a 2-D, 3-D or 4-D view of the map (channels last in each)."""

    def __init__(self, c: int, rank: int):
        super().__init__()
        self.rank = rank
        self.fc = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.rank == 2:
            return x * torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]
        if self.rank == 3:
            return x + self.fc(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        return x + self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TokenLinear(nn.Module):
    """nn.Linear on 3-D tokens (B, T, C) and on `tokens[:, 0]`, as a per-channel gate of the map."""

    def __init__(self, c: int):
        super().__init__()
        self.tokens = Tokens(c)
        self.mix = nn.Linear(c, c)
        self.gate = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.mix(self.tokens(x)))
        return x * torch.sigmoid(self.gate(z[:, 0]))[:, :, None, None]


class DynamicMax(nn.Module):
    """Dynamic ReLU: torch.maximum of two token-conditioned affines, coefficients (B, 4, C, 1, 1)."""

    def __init__(self, c: int):
        super().__init__()
        self.c = c
        self.tokens = Tokens(c)
        self.coef = nn.Linear(c, 4 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (F.hardsigmoid(self.coef(self.tokens(x)[:, 0])) - 0.5).reshape(-1, 4, self.c, 1, 1)
        return torch.maximum(x * (1.0 + 2.0 * k[:, 0]) + k[:, 2], x * (2.0 * k[:, 1]) + k[:, 3])


class TokenHead(nn.Module):
    """torch.cat of the pooled map with a token, then a Linear, broadcast back as a bias."""

    def __init__(self, c: int):
        super().__init__()
        self.tokens = Tokens(c)
        self.fc = nn.Linear(2 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([x.mean((2, 3)), self.tokens(x)[:, 0]], dim=1)
        return x + self.fc(joined)[:, :, None, None]


# name -> factory(channels): one line per spelling
SPELLINGS: dict[str, Callable[[int], nn.Module]] = {
    "at-transposed": lambda c: BridgeAttention(c, operator.matmul, "transposed"),
    "at-flattened": lambda c: BridgeAttention(c, operator.matmul, "flattened"),
    "matmul-transposed": lambda c: BridgeAttention(c, torch.matmul, "transposed"),
    "matmul-flattened": lambda c: BridgeAttention(c, torch.matmul, "flattened"),
    "bmm-transposed": lambda c: BridgeAttention(c, torch.bmm, "transposed"),
    "bmm-flattened": lambda c: BridgeAttention(c, torch.bmm, "flattened"),
    "einsum-transposed": lambda c: BridgeAttention(c, _einsum_mm, "transposed"),
    "einsum-map": EinsumAttention,
    "sdpa": lambda c: HeadsAttention(c, fused=True),
    "heads-by-hand": lambda c: HeadsAttention(c, fused=False),
    "mha-batch-first": lambda c: MhaAttention(c, batch_first=True),
    "mha-seq-first": lambda c: MhaAttention(c, batch_first=False),
    "linear-2d": lambda c: LinearOn(c, 2),
    "linear-3d": lambda c: LinearOn(c, 3),
    "linear-4d": lambda c: LinearOn(c, 4),
    "linear-tokens": TokenLinear,
    "dynamic-max": DynamicMax,
    "token-head": TokenHead,
}


class Head(nn.Module):
    """Global mean and a Linear classifier."""

    def __init__(self, c: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


def alone(spelling: str, classes: int = 5, channels: int = 8) -> nn.Module:
    """The spelling on the image itself: a 1x1 conv to `channels`, the block, the head."""
    return nn.Sequential(nn.Conv2d(3, channels, 1), SPELLINGS[spelling](channels), Head(channels, classes))


def in_convnet(spelling: str, classes: int = 5, channels: int = 16) -> nn.Module:
    """The spelling between convs: stem (stride 2), BN, ReLU, the block, a 3x3 conv, BN, ReLU, head."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        SPELLINGS[spelling](channels),
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        Head(channels, classes))


FORMS = {"alone": alone, "convnet": in_convnet}


def build(spelling: str, form: str, seed: int = 0) -> nn.Module:
    """A seeded, eval-mode zoo model (BatchNorm statistics as initialised; the pipeline keeps them)."""
    torch.manual_seed(seed)
    return FORMS[form](spelling).eval()
