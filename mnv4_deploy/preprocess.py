"""The one preprocessing contract.

Calibration, evaluation, golden inputs, CoreML `ImageType` scale/bias, TFLite metadata and
the BPU YAML `mean_value`/`scale_value` all derive from a `Preprocess`; nothing else in the
project hard-codes a mean, a std or a crop. It is built from the model's timm
`pretrained_cfg`, because some MNv4 checkpoints use mean = std = 0.5 and the crop ratio
differs per checkpoint.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
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
        """Read an image file, resize and crop it: float32 RGB CHW in 0-255, not normalized.

        Raises `UnreadableImage` with a one-line reason for anything that is not a decodable
        image (see `decode_pixels`).
        """
        return decode_pixels(path, self)

    def pixels_from_pil(self, img: "Any") -> np.ndarray:
        img = to_rgb(img)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short = self.resize_short
        new_long = int(new_short * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        ch, cw = self.crop_size
        top = int(round((new_h - ch) / 2.0))
        left = int(round((new_w - cw) / 2.0))
        if new_w * new_h > _MAX_RESIZED_PIXELS:
            # an extreme aspect ratio (say 1 x 100000) would need gigabytes for the full resize:
            # resample only the region the centre crop keeps (the same sampling positions)
            sx, sy = new_w / w, new_h / h
            box = (left / sx, top / sy, (left + cw) / sx, (top + ch) / sy)
            img = img.resize((cw, ch), resample=_PIL_FILTERS[self.interpolation], box=box)
        else:
            if (new_w, new_h) != (w, h):
                img = img.resize((new_w, new_h), resample=_PIL_FILTERS[self.interpolation])
            img = img.crop((left, top, left + cw, top + ch))
        # H, W, C uint8 -> C, H, W float32 in one copy (exact: every uint8 is a float32); converting
        # first and transposing after made two, half the decode worker's time after the resize
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32, order="C")

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """0-255 CHW or NCHW pixels -> the model's normalized float32 input."""
        mean = np.asarray(self.mean, np.float32).reshape(3, 1, 1) * 255.0
        std = np.asarray(self.std, np.float32).reshape(3, 1, 1) * 255.0
        # the same float32 subtract and divide as `(pixels.astype(f32) - mean) / std`, into one new
        # array instead of four (bit-identical; 0.31 -> 0.29 ms per 224 px image)
        out = np.subtract(pixels, mean, dtype=np.float32)
        out /= std
        return out

    def load_image(self, path: str | Path) -> np.ndarray:
        """Read an image file into the model's normalized CHW float32 input (`decode_image`)."""
        return self.normalize(self.load_pixels(path))


# ---- decoding what users' folders hold --------------------------------------------------------
# Resized images above this many pixels are resampled only where the crop keeps (4096 x 4096).
_MAX_RESIZED_PIXELS = 1 << 24
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def printable_path(path: str | Path) -> str:
    """`path` as text that always encodes: undecodable bytes of a non-UTF-8 name become \\xNN.

    Linux file names are bytes; Python maps invalid UTF-8 to lone surrogates, which crash
    printing, hashing and JSON writers. Logs and reports use this form; the bytes stay on disk.
    """
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def to_rgb(img: "Any") -> "Any":
    """Any PIL mode -> 8-bit RGB, as timm's `img.convert('RGB')` does, with one exception.

    Alpha (RGBA, LA, PA, P with transparency) is dropped and palette/greyscale/CMYK are
    expanded exactly like timm, so inputs match what published accuracy was measured with.
    16-bit greyscale (I;16*) is scaled to 8 bits (value / 257) instead of being clipped at 255,
    which would turn nearly every pixel white; ImageNet holds no 16-bit images, so this does
    not move published numbers. EXIF orientation is NOT applied (timm does not apply it).
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        from PIL import Image

        wide = np.asarray(img, dtype=np.uint16).astype(np.float32)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def _unreadable(path: Path, reason: str) -> Exception:
    from .errors import UnreadableImage

    return UnreadableImage(printable_path(path), reason)


def _regular_file(path: Path) -> None:
    """Refuse, before opening, what would hang (a FIFO) or cannot be an image file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _unreadable(path, "dangling symlink" if os.path.islink(path) else "no such file") from None
    except OSError as exc:
        reason = "symlink loop" if exc.errno == errno.ELOOP else f"cannot stat ({exc.strerror or exc})"
        raise _unreadable(path, reason) from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "a device")
        raise _unreadable(path, f"not a regular file ({kind})")
    if info.st_size == 0:
        raise _unreadable(path, "empty file")


def decode_pixels(path: str | Path, contract: Preprocess) -> np.ndarray:
    """Decode, resize and crop one image file: float32 RGB CHW in 0-255.

    Raises `errors.UnreadableImage` (one-line `reason`) for a dangling symlink, a FIFO, an empty
    or unreadable file, an unknown or truncated format, a decompression bomb (over PIL's
    `Image.MAX_IMAGE_PIXELS` guard: the file is named, the limit stated) or a colour mode with no
    RGB conversion. Safe to call from worker processes: no global state is changed.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _regular_file(path)
    try:
        with open(path, "rb") as fh, Image.open(fh) as img:
            img.load()
            return contract.pixels_from_pil(img)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise _unreadable(path, f"decompression bomb: {size}, over PIL's limit of {2 * Image.MAX_IMAGE_PIXELS:,} "
                                "(raise PIL.Image.MAX_IMAGE_PIXELS if the file is genuine)") from None
    except UnidentifiedImageError:
        raise _unreadable(path, "not an image format PIL can read") from None
    except MemoryError:
        raise _unreadable(path, "too large to decode in memory") from None
    except OSError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        truncated = "truncated" in f"{text} {exc.strerror or ''}".lower()
        reason = f"truncated file ({exc.strerror or text})" if truncated else f"cannot read ({exc.strerror or text})"
        raise _unreadable(path, reason) from None
    except ValueError as exc:
        if "conversion from" in str(exc):
            raise _unreadable(path, f"unsupported colour mode ({str(exc).splitlines()[0]})") from None
        raise _unreadable(path, f"cannot decode ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    except Exception as exc:  # PIL's plugins raise SyntaxError, struct.error, EOFError, ... for broken files
        first = (str(exc).splitlines() or [""])[0][:200]
        raise _unreadable(path, f"cannot decode ({type(exc).__name__}: {first})") from None


def decode_image(path: str | Path, contract: Preprocess) -> np.ndarray:
    """One image file -> the model's normalized CHW float32 input; `UnreadableImage` if it is not one."""
    return contract.normalize(decode_pixels(path, contract))
