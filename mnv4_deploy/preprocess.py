"""The one preprocessing contract.

Calibration, evaluation, golden inputs, CoreML `ImageType` scale/bias, TFLite metadata and
the BPU YAML `mean_value`/`scale_value` all derive from a `Preprocess`; nothing else in the
project hard-codes a mean, a std or a crop. It is built from the model's timm
`pretrained_cfg`, because some MNv4 checkpoints use mean = std = 0.5 and the crop ratio
differs per checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's input tensor.

    resize_short: the short side is resized to this many pixels (keeping aspect), then a
    centre crop of `crop_size` (H, W) is taken; pixels are scaled to [0, 1], then
    `(x - mean) / std` per channel. `channel_order` and `layout` describe the tensor the
    canonical PyTorch model takes (targets may re-layout, e.g. NHWC TFLite).
    """

    crop_size: tuple[int, int]
    resize_short: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_FILTERS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(_PIL_FILTERS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("mean and std need three values each, std > 0")
        if self.resize_short < min(self.crop_size):
            raise ValueError(f"resize_short {self.resize_short} is smaller than the crop {self.crop_size}")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_timm_cfg(cls, cfg: Mapping[str, Any], img_size: int | None = None) -> "Preprocess":
        """Derive the contract from a timm pretrained config (dict or PretrainedCfg)."""
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
        _, h, w = get("input_size", (3, 224, 224))
        if img_size is not None:
            h = w = int(img_size)
        crop_pct = float(get("crop_pct", 0.875) or 0.875)
        crop_mode = get("crop_mode", "center") or "center"
        if crop_mode != "center":
            # timm's 'squash'/'border' modes are not what deployed apps do; centre crop is.
            crop_mode = "center"
        resize_short = int(math.floor(min(h, w) / crop_pct))
        return cls(
            crop_size=(int(h), int(w)),
            resize_short=max(resize_short, min(h, w)),
            interpolation=str(get("interpolation", "bicubic") or "bicubic"),
            mean=tuple(float(m) for m in get("mean", (0.485, 0.456, 0.406))),
            std=tuple(float(s) for s in get("std", (0.229, 0.224, 0.225))),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocess":
        known = {k: data[k] for k in ("crop_size", "resize_short", "interpolation", "mean", "std",
                                      "channel_order", "layout") if k in data}
        unknown = set(data) - set(known) - {"sha256"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        known["crop_size"] = tuple(int(v) for v in known["crop_size"])
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)

    # ---- description --------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW shape of one preprocessed image batch of size 1."""
        return (1, 3, *self.crop_size)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data["crop_size"] = list(self.crop_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["sha256"] = self.sha256()
        return data

    def sha256(self) -> str:
        data = asdict(self)
        data.pop("extra")
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()

    def pixel_mean_and_scale(self) -> tuple[list[float], list[float]]:
        """Mean and scale in 0-255 pixel units: `(pixel - mean) * scale` equals the contract.

        This is the form vendor toolchains (hb_mapper `mean_value`/`scale_value`) and CoreML's
        `ImageType(scale, bias)` want.
        """
        mean = [255.0 * m for m in self.mean]
        scale = [1.0 / (255.0 * s) for s in self.std]
        return mean, scale

    # ---- images -------------------------------------------------------------------------
    def load_pixels(self, path: str | Path) -> np.ndarray:
        """Read an image file, resize and crop it: float32 RGB CHW in 0-255, not normalized."""
        from PIL import Image

        with Image.open(path) as img:
            img.load()
            return self.pixels_from_pil(img)

    def pixels_from_pil(self, img: "Any") -> np.ndarray:
        img = img.convert("RGB")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short = self.resize_short
        new_long = int(new_short * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample=_PIL_FILTERS[self.interpolation])
        ch, cw = self.crop_size
        top = int(round((new_h - ch) / 2.0))
        left = int(round((new_w - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
        arr = np.asarray(img, dtype=np.float32)  # H, W, C in 0-255
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """0-255 CHW or NCHW pixels -> the model's normalized float32 input."""
        mean = np.asarray(self.mean, np.float32).reshape(3, 1, 1) * 255.0
        std = np.asarray(self.std, np.float32).reshape(3, 1, 1) * 255.0
        return ((pixels.astype(np.float32) - mean) / std).astype(np.float32)

    def load_image(self, path: str | Path) -> np.ndarray:
        """Read an image file into the model's normalized CHW float32 input."""
        return self.normalize(self.load_pixels(path))
