"""A small Mobile-Former (Chen et al., "Mobile-Former: Bridging MobileNet and Transformer",
CVPR 2022) as a user would write it: a plain `torch.nn.Module`, no timm, no export tricks.

Faithful to the paper:
- a parallel design: a MobileNet stream on the feature map and a Former stream on a few
  (here 6) learnable global tokens, joined by two light cross-attention bridges per block;
- Mobile->Former: the tokens are the queries, the flattened feature map is keys and values
  WITHOUT key/value projections (only the query projection W_Q and the output projection W_O;
  heads split the channels);
- Former: a standard transformer block on the tokens, multi-head self-attention
  (`nn.MultiheadAttention`) and an FFN with expansion 2, each with a residual and a
  post-LayerNorm;
- Mobile: an inverted bottleneck (1x1 expand, 3x3 depthwise with the block's stride, 1x1
  project) whose two activations are Dynamic ReLU, `max(a1*x + b1, a2*x + b2)` per channel,
  with the slopes/intercepts produced by a two-layer MLP on the first global token (after the
  Former), through a hard sigmoid and the DY-ReLU residual form a1 = 1 + 2*(s - 0.5), a2 = 2*(s - 0.5),
  b_i = s - 0.5, as the official implementation does;
- Mobile<-Former: the feature map is the query (no projection), the tokens are keys and values
  with their projections W_K, W_V; the result is added to the feature map;
- a stem conv, blocks with stride 1 and 2, and a head that concatenates the pooled features
  with the first token, then two fully connected layers.

Simplified for 32-64 px digits: few narrow blocks, ReLU instead of h-swish in the stem and
head, no lite-bottleneck after the stem, no dropout.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trained_net import (DEFAULT_CACHE, TrainedDigits, TrainSettings, digits_arrays, digits_contract, fit_one_cycle,
                         heldout_top1, load_or_train)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class DynamicReLU(nn.Module):
    """max(a1*x + b1, a2*x + b2) per channel; coefficients from the first global token."""

    def __init__(self, channels: int, token_dim: int, reduction: int = 4):
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(token_dim, token_dim // reduction)
        self.fc2 = nn.Linear(token_dim // reduction, 4 * channels)
        # DY-ReLU residual form: starts as ReLU (a1 = 1, a2 = 0, b = 0) when s = 0.5
        self.register_buffer("lambdas", torch.tensor([2.0, 2.0, 1.0, 1.0]).repeat_interleave(channels))
        self.register_buffer("inits", torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat_interleave(channels))

    def coefficients(self, token0: torch.Tensor) -> torch.Tensor:
        s = hard_sigmoid(self.fc2(F.relu(self.fc1(token0))))
        return ((s - 0.5) * self.lambdas + self.inits).reshape(-1, 4, self.channels, 1, 1)

    def forward(self, x: torch.Tensor, token0: torch.Tensor) -> torch.Tensor:
        c = self.coefficients(token0)
        return torch.maximum(x * c[:, 0] + c[:, 2], x * c[:, 1] + c[:, 3])


class MobileToFormer(nn.Module):
    """Tokens attend to the feature map; keys/values are the feature map itself (no projection)."""

    def __init__(self, channels: int, token_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.q = nn.Linear(token_dim, channels)
        self.proj = nn.Linear(channels, token_dim)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        m = z.shape[1]
        kv = x.reshape(b, self.heads, c // self.heads, h * w)  # (B, heads, C/h, HW)
        q = self.q(z).reshape(b, m, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, M, C/h)
        attn = ((q @ kv) * self.scale).softmax(dim=-1)  # (B, heads, M, HW)
        out = (attn @ kv.transpose(-2, -1)).transpose(1, 2).reshape(b, m, c)
        return z + self.proj(out)


class Former(nn.Module):
    """Post-LN transformer block on the tokens: self-attention, then an FFN with expansion 2."""

    def __init__(self, token_dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(token_dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(token_dim)
        self.ffn = nn.Sequential(nn.Linear(token_dim, 2 * token_dim), nn.GELU(), nn.Linear(2 * token_dim, token_dim))
        self.norm2 = nn.LayerNorm(token_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.norm1(z + self.attn(z, z, z, need_weights=False)[0])
        return self.norm2(z + self.ffn(z))


class Mobile(nn.Module):
    """Inverted bottleneck with Dynamic ReLU after the expansion and after the depthwise conv."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, token_dim: int):
        super().__init__()
        mid = cin * expand
        self.pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = DynamicReLU(mid, token_dim)
        self.dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = DynamicReLU(mid, token_dim)
        self.pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, token0: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.pw(x)), token0)
        y = self.act2(self.bn2(self.dw(y)), token0)
        y = self.bn3(self.pwl(y))
        return x + y if self.residual else y


class FormerToMobile(nn.Module):
    """The feature map attends to the tokens; keys/values are projected from the tokens."""

    def __init__(self, channels: int, token_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.k = nn.Linear(token_dim, channels)
        self.v = nn.Linear(token_dim, channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        m, d = z.shape[1], c // self.heads
        q = x.reshape(b, self.heads, d, h * w).transpose(-2, -1)  # (B, heads, HW, C/h)
        k = self.k(z).reshape(b, m, self.heads, d).permute(0, 2, 3, 1)  # (B, heads, C/h, M)
        v = self.v(z).reshape(b, m, self.heads, d).transpose(1, 2)  # (B, heads, M, C/h)
        attn = ((q @ k) * self.scale).softmax(dim=-1)  # (B, heads, HW, M)
        out = (attn @ v).transpose(-2, -1).reshape(b, c, h, w)
        return x + out


class MobileFormerBlock(nn.Module):
    """Mobile->Former, Former, Mobile (Dynamic ReLU from token 0), Mobile<-Former."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, token_dim: int, heads: int):
        super().__init__()
        self.to_former = MobileToFormer(cin, token_dim, heads)
        self.former = Former(token_dim, heads)
        self.mobile = Mobile(cin, cout, expand, stride, token_dim)
        self.to_mobile = FormerToMobile(cout, token_dim, heads)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.former(self.to_former(x, z))
        x = self.mobile(x, z[:, 0])
        return self.to_mobile(x, z), z


class MobileFormer(nn.Module):
    """Stem, Mobile-Former blocks, and a head on [pooled features, token 0]."""

    def __init__(self, num_classes: int = 10, tokens: int = 6, token_dim: int = 64, heads: int = 2,
                 stem: int = 16, blocks: tuple[tuple[int, int, int], ...] = ((24, 3, 2), (24, 3, 1), (40, 3, 2),
                                                                           (40, 3, 1)),
                 head_channels: int = 160, hidden: int = 128):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(1, tokens, token_dim) * 0.02)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        layers, cin = [], stem
        for cout, expand, stride in blocks:
            layers.append(MobileFormerBlock(cin, cout, expand, stride, token_dim, heads))
            cin = cout
        self.blocks = nn.ModuleList(layers)
        self.conv_head = nn.Sequential(nn.Conv2d(cin, head_channels, 1, bias=False), nn.BatchNorm2d(head_channels),
                                       nn.ReLU())
        self.fc1 = nn.Linear(head_channels + token_dim, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DynamicReLU):  # start every Dynamic ReLU as a plain ReLU
                nn.init.zeros_(m.fc2.weight)
        nn.init.zeros_(self.classifier.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.tokens.expand(x.shape[0], -1, -1)
        x = self.stem(x)
        for block in self.blocks:
            x, z = block(x, z)
        pooled = self.conv_head(x).mean(dim=(2, 3))
        features = torch.cat([pooled, z[:, 0]], dim=1)
        return self.classifier(F.relu(self.fc1(features)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- training on scikit-learn digits, the way tests/trained_net.py trains the MNv4 test net ----


@dataclass(frozen=True)
class MobileFormerSettings:
    """Everything that determines the trained weights (hashed into the cache key)."""

    img_size: int = 32
    epochs: int = 12
    batch_size: int = 64
    lr: float = 4e-3  # AdamW, one-cycle schedule
    weight_decay: float = 0.05
    shift_px: int = 2
    seed: int = 0
    threads: int = 1
    version: int = 1

    def digits(self) -> TrainSettings:
        """The data settings of the MNv4 digits net: same split, contract and calibration subset."""
        return TrainSettings(img_size=self.img_size, shift_px=self.shift_px, seed=self.seed)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _train_loop(settings: MobileFormerSettings, x: np.ndarray, y: np.ndarray, log) -> MobileFormer:
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model = MobileFormer()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    return fit_one_cycle(model, opt, x, y, settings, gen, "mobile-former", log)


def load_trained_mobile_former(settings: MobileFormerSettings | None = None, cache_dir: Path | None = None,
                               log=print) -> TrainedDigits:
    """Train (or load from the cache) the digits Mobile-Former and evaluate it on the held-out split."""
    settings = settings or MobileFormerSettings()
    path = Path(cache_dir or DEFAULT_CACHE) / f"mobile-former-digits-{settings.key()}.pt"
    data = settings.digits()
    x_tr, y_tr, x_cal, x_te, y_te = digits_arrays(data)
    model = load_or_train(path, MobileFormer, lambda: _train_loop(settings, x_tr, y_tr, log), settings.threads)
    return TrainedDigits(model, data, digits_contract(settings.img_size), x_tr, y_tr, x_cal, x_te, y_te,
                         heldout_top1(model, x_te, y_te), path, extra={"mobile_former": asdict(settings)})


ALL_TARGETS = "onnx,onnx-int8,tflite,tflite-int8,edgetpu,coreml,coreml-int8,bpu-x5,bpu-x3"


def _cell(metrics: dict | None, key: str, fmt: str = "{:.6f}") -> str:
    return "-" if not metrics or metrics.get(key) is None else fmt.format(metrics[key])


def export_table(net: TrainedDigits, out: Path, targets: str = ALL_TARGETS, calib_size: int = 64) -> str:
    """Every target of the trained net in one `mnv4_deploy.export` run, as a Markdown table."""
    from mnv4_deploy import export

    from trained_net import write_digit_images

    write_digit_images(out / "data" / "calib", net.x_calib, net.contract)
    write_digit_images(out / "data" / "eval", net.x_heldout, net.contract, net.y_heldout)
    torch.set_num_threads(1)  # 32x32 tensors (tests/conftest.py, one_torch_thread)
    report = export(net.model, targets, out / "export", contract=net.contract, name="mobile-former", golden_count=4,
                    calib_data=out / "data" / "calib", calib_size=calib_size, eval_data=out / "data" / "eval",
                    log=lambda _: None)
    lines = ["| target | status | cosine vs float | cosine vs emulation | top-1 | drop pt (95% CI) | CPU ops |",
             "|---|---|---|---|---|---|---|"]
    for r in report.results:
        acc = r.accuracy or {}
        drop = "-" if not acc else "{:+.2f} ({:+.2f}, {:+.2f})".format(acc["drop_top1"], *acc["drop_top1_ci95"])
        cpu = "-"
        if "edgetpu_static_check" in r.metadata:
            c = r.metadata["edgetpu_static_check"]
            cpu = (f"{c['counts']['on_edgetpu']}/{c['counts']['ops']} map; first CPU op {c['first_cpu_op']['op']}; "
                   f"cannot map: {', '.join(f'{k} x{v}' for k, v in c['unsupported_ops'].items())}")
        elif "op_check" in r.metadata:
            off = r.metadata["op_check"]["off_bpu"]
            kinds = sorted({line.split(" (")[-1].split(")")[0] for line in off})
            cpu = f"{len(off)} nodes off the BPU: {', '.join(kinds)}"
        lines.append(f"| `{r.target}` | {r.status} | {_cell(r.parity, 'cosine')} "
                     f"| {_cell(r.emulation_parity, 'cosine')} | {_cell(acc, 'top1', '{:.2f}')} | {drop} | {cpu} |")
        for judged in r.extra_judgements:  # the BPU's board forecasts
            a = judged.accuracy or {}
            lines.append(f"| `{r.target}` [{judged.name}] | forecast | {_cell(judged.parity, 'cosine')} | - "
                         f"| {_cell(a, 'top1', '{:.2f}')} | {_cell(a, 'drop_top1', '{:+.2f}')} | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="train (or load) the digits Mobile-Former; optionally export it")
    parser.add_argument("--export", type=Path, metavar="DIR", help="export every target into DIR and print the table")
    args = parser.parse_args()
    t = time.time()
    net = load_trained_mobile_former()
    print(f"mobile-former: {count_parameters(net.model)} parameters, held-out top-1 {net.float_top1:.2f}% "
          f"on {len(net.y_heldout)} images ({time.time() - t:.0f}s), weights {net.weights_path}")
    if args.export is not None:
        print(export_table(net, args.export))
        print(f"({time.time() - t:.0f}s in all)")
