"""NV12 emulation: the pixels the model really sees on the board.

With `input_type_rt: nv12` and `input_type_train: rgb` the board hands the model an NV12
frame (8-bit Y plane + interleaved 2x2-subsampled UV plane); the hardware expands it to
YUV444 and a node the toolchain inserts converts YUV444 back to RGB before mean/scale. So the
model sees RGB that went through 8-bit YUV quantization and 4:2:0 chroma loss. This module
reproduces that path in numpy, to measure what it costs before a board is at hand.

Colour space (Horizon's own reference transformers, `rgb2bt601_full_range`,
`rgb2bt601_video_range`, `yuv444_to_rgb`, `NV12ToYUV444Transformer` in the OpenExplorer
sample `transformers.py`; YAML key `input_space_and_range` in "PTQ principles and steps",
https://github.com/D-Robotics/rdk_doc/blob/main/i18n/en/docusaurus-plugin-content-docs/current/07_Advanced_development/04_toolchain_development/intermediate/ptq_process.md):
- `regular` (the default): BT.601 full range (JFIF), Y, U, V in [0, 255]:
  Y = 0.299 R + 0.587 G + 0.114 B, U = (B - Y) / 1.772 + 128, V = (R - Y) / 1.402 + 128;
  inverse R = Y + 1.402 (V-128), G = Y - 0.344136 (U-128) - 0.714136 (V-128), B = Y + 1.772 (U-128).
- `bt601_video`: BT.601 video range, Y in [16, 235], U, V in [16, 240] (Y = 16 + 219/255 Y',
  C = 128 + 224/255 C'). OpenCV's `cvtColor(..., COLOR_BGR2YUV_I420)` produces this range,
  which is why D-Robotics' MobileNetV4 X5 config sets `input_space_and_range: bt601_video`.
Chroma: 2x2 block average by default ("topleft" takes the top-left sample, like Horizon's
`rgb2nv12_calc`); YUV444 is rebuilt by nearest-neighbour upsampling (2x2 replication), as in
`NV12ToYUV444Transformer`. Values are rounded to the nearest 8-bit level and clipped.
"""
from __future__ import annotations

import numpy as np

from mnv4_deploy.errors import UsageError

SPACES = ("regular", "bt601_video")
CHROMA = ("average", "topleft")
_KR, _KB = 0.299, 0.114  # ITU-R BT.601 luma coefficients
_KG = 1.0 - _KR - _KB
# Full-range RGB -> (Y, U-128, V-128); rows are Y, U, V.
_FULL = np.array([
    [_KR, _KG, _KB],
    [-_KR / (2 * (1 - _KB)), -_KG / (2 * (1 - _KB)), 0.5],
    [0.5, -_KG / (2 * (1 - _KR)), -_KB / (2 * (1 - _KR))],
])


def _matrix_and_offset(space: str) -> tuple[np.ndarray, np.ndarray]:
    if space == "regular":
        return _FULL, np.array([0.0, 128.0, 128.0])
    if space == "bt601_video":
        return _FULL * np.array([[219 / 255], [224 / 255], [224 / 255]]), np.array([16.0, 128.0, 128.0])
    raise UsageError(f"unknown NV12 colour range {space!r}", f"use one of {', '.join(SPACES)}")


def _check_chw(pixels: np.ndarray) -> tuple[int, int]:
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise UsageError(f"expected RGB pixels shaped (3, H, W), got {pixels.shape}")
    height, width = pixels.shape[1:]
    if height % 2 or width % 2:
        raise UsageError(f"NV12 needs an even height and width, got {height}x{width}",
                         "hb_mapper refuses odd input sizes for nv12/yuv444 too")
    return height, width


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def rgb_to_yuv444(pixels: np.ndarray, space: str = "regular") -> np.ndarray:
    """RGB (3, H, W) in 0-255 -> unrounded float YUV (3, H, W) in the chosen BT.601 range."""
    matrix, offset = _matrix_and_offset(space)
    rgb = np.asarray(pixels, dtype=np.float64)
    return np.einsum("ij,jhw->ihw", matrix, rgb) + offset[:, None, None]


def yuv444_to_rgb(yuv: np.ndarray, space: str = "regular") -> np.ndarray:
    """YUV (3, H, W) -> float32 RGB (3, H, W) clipped to 0-255 (the inserted conversion node)."""
    matrix, offset = _matrix_and_offset(space)
    centred = np.asarray(yuv, dtype=np.float64) - offset[:, None, None]
    rgb = np.einsum("ij,jhw->ihw", np.linalg.inv(matrix), centred)
    return np.clip(rgb, 0.0, 255.0).astype(np.float32)


def rgb_to_nv12(pixels: np.ndarray, space: str = "regular", chroma: str = "average") -> np.ndarray:
    """RGB (3, H, W) in 0-255 -> NV12 uint8 (H * 3 // 2, W): Y rows, then interleaved U,V rows."""
    height, width = _check_chw(np.asarray(pixels))
    if chroma not in CHROMA:
        raise UsageError(f"unknown chroma subsampling {chroma!r}", f"use one of {', '.join(CHROMA)}")
    yuv = rgb_to_yuv444(pixels, space)
    if chroma == "average":
        uv = yuv[1:].reshape(2, height // 2, 2, width // 2, 2).mean(axis=(2, 4))
    else:
        uv = yuv[1:, ::2, ::2]
    nv12 = np.empty((height * 3 // 2, width), dtype=np.uint8)
    nv12[:height] = _to_u8(yuv[0])
    nv12[height:] = _to_u8(uv.transpose(1, 2, 0)).reshape(height // 2, width)  # U0 V0 U1 V1 ...
    return nv12


def nv12_to_rgb(nv12: np.ndarray, space: str = "regular") -> np.ndarray:
    """NV12 uint8 (H * 3 // 2, W) -> float32 RGB (3, H, W): nearest-neighbour chroma upsampling,
    then the BT.601 inverse."""
    nv12 = np.asarray(nv12)
    if nv12.ndim != 2 or nv12.shape[0] % 3 or nv12.shape[1] % 2 or (nv12.shape[0] * 2 // 3) % 2:
        raise UsageError(f"expected an NV12 buffer shaped (H * 3 // 2, W) with even H and W, got {nv12.shape}")
    height, width = nv12.shape[0] * 2 // 3, nv12.shape[1]
    uv = nv12[height:].reshape(height // 2, width // 2, 2).transpose(2, 0, 1)
    yuv = np.empty((3, height, width), dtype=np.float64)
    yuv[0] = nv12[:height]
    yuv[1:] = uv.repeat(2, axis=1).repeat(2, axis=2)
    return yuv444_to_rgb(yuv, space)


def rgb_nv12_roundtrip(pixels: np.ndarray, space: str = "regular", chroma: str = "average") -> np.ndarray:
    """What the model sees on the board for these pixels: RGB -> NV12 -> RGB.

    Takes (3, H, W) or a batch (N, 3, H, W) in 0-255 (the contract's `load_pixels` output) and
    returns float32 of the same shape, to be normalized by the contract as usual.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 4:
        return np.stack([rgb_nv12_roundtrip(p, space, chroma) for p in pixels])
    return nv12_to_rgb(rgb_to_nv12(pixels, space, chroma), space)
