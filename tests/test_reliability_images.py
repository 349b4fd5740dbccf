"""Image folders as users have them: broken, exotic, looping, unreadable, non-UTF-8 names.

Every unreadable file is named with a one-line reason and replaced by another file of the
folder (seeded); too few readable images for a step is one line saying found and needed.
"""
from __future__ import annotations

import builtins
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mnv4_deploy import data
from mnv4_deploy.cli import export_app
from mnv4_deploy.errors import UnreadableImage, UsageError
from mnv4_deploy.preprocess import Preprocess, decode_image, decode_pixels

from conftest import make_images

CONTRACT = Preprocess(crop_size=(32, 32), resize_short=32, interpolation="bilinear")
runner = CliRunner()


def _reason(path: Path) -> str:
    with pytest.raises(UnreadableImage) as caught:
        decode_image(path, CONTRACT)
    assert "\n" not in str(caught.value)
    return caught.value.reason


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG declaring `width` x `height` 1-bit pixels: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# ---- one file --------------------------------------------------------------------------------
def test_decompression_bomb_is_named_with_pils_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(30000, 30000))  # 116 bytes declaring 900 megapixels
    reason = _reason(bomb)
    assert reason.startswith("decompression bomb: 900,000,000 pixels, over PIL's limit of")
    assert f"{2 * Image.MAX_IMAGE_PIXELS:,}" in reason and "MAX_IMAGE_PIXELS" in reason


def test_truncated_empty_random_fifo_and_dangling_files_are_named(tmp_path):
    make_images(tmp_path, 1, size=(64, 48))
    whole = (tmp_path / "img_000.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "random.png").write_bytes(np.random.default_rng(0).bytes(500))
    os.mkfifo(tmp_path / "fifo.jpg")  # opening it would block forever
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    assert _reason(tmp_path / "half.jpg").startswith("truncated file")
    assert _reason(tmp_path / "empty.png") == "empty file"
    assert _reason(tmp_path / "random.png") == "not an image format PIL can read"
    assert _reason(tmp_path / "fifo.jpg") == "not a regular file (a FIFO)"
    assert _reason(tmp_path / "dangling.jpg") == "dangling symlink"
    assert _reason(tmp_path / "loop.jpg") == "symlink loop"


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    make_images(tmp_path, 1)
    path = tmp_path / "img_000.jpg"
    real_open = builtins.open

    def denied(file, *args, **kwargs):  # tests run as root, where chmod 000 still reads
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    assert _reason(path) == "cannot read (Permission denied)"


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "LA", "PA", "CMYK", "I", "F", "RGB"])
def test_every_common_mode_decodes_exactly_as_timms_convert_rgb(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode not in ("PA",) else rgb.convert("P").convert("PA")
    path = tmp_path / f"x.{'tiff' if mode in ('I', 'F', 'CMYK', 'PA') else 'png'}"
    img.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
        expected = CONTRACT.pixels_from_pil(reopened.convert("RGB"))  # timm: img.convert('RGB')
    np.testing.assert_array_equal(decode_pixels(path, CONTRACT), expected)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
        clipped = CONTRACT.pixels_from_pil(img.convert("RGB"))
    ours = decode_pixels(path, CONTRACT)
    expected = CONTRACT.pixels_from_pil(Image.fromarray(np.rint(ramp / 257.0).astype(np.uint8)).convert("RGB"))
    np.testing.assert_array_equal(ours, expected)
    assert ours.min() < 40 and ours.max() > 215  # the ramp survives
    assert (clipped == 255).mean() > 0.9  # what plain convert('RGB') would have fed the model


def test_exif_orientation_is_not_applied_like_timm(tmp_path):
    left_red = np.zeros((40, 80, 3), np.uint8)
    left_red[:, :40, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(left_red).save(path, exif=exif.tobytes(), quality=100)
    with Image.open(path) as img:
        assert img.getexif()[0x0112] == 6
    pixels = decode_pixels(path, Preprocess(crop_size=(40, 80), resize_short=40))
    assert pixels.shape == (3, 40, 80)  # stored landscape, not the displayed portrait
    assert pixels[0, :, :30].mean() > 200 and pixels[0, :, 50:].mean() < 50


def test_extreme_aspect_ratio_resamples_only_the_crop(tmp_path):
    strip = np.tile(np.arange(256, dtype=np.uint8), 400)[None, :, None].repeat(3, axis=2)  # 1 x 102400
    path = tmp_path / "strip.png"
    Image.fromarray(strip).save(path)
    pixels = decode_pixels(path, CONTRACT)  # full resize: 32 x 3.3M pixels
    assert pixels.shape == (3, 32, 32) and np.isfinite(pixels).all()


# ---- folders ---------------------------------------------------------------------------------
def test_symlink_loops_and_repeated_folders_do_not_hang_or_repeat(tmp_path):
    root = tmp_path / "photos"
    make_images(root / "a", 2)
    (root / "a" / "back").symlink_to(root, target_is_directory=True)  # loop to an ancestor
    (root / "again").symlink_to(root / "a", target_is_directory=True)  # a second path to a folder
    external = tmp_path / "elsewhere"
    make_images(external, 1, seed=5)
    (root / "linked").symlink_to(external, target_is_directory=True)  # followed: a user's linked folder
    messages: list[str] = []
    found = data.find_images(root, log=messages.append)
    assert [p.relative_to(root).as_posix() for p in found] == ["a/img_000.jpg", "a/img_001.jpg",
                                                               "linked/img_000.jpg"]
    assert sum("already listed (or a symlink loop)" in m for m in messages) == 2


def test_skipped_images_are_replaced_deterministically_until_the_count_is_met(tmp_path):
    make_images(tmp_path, 10)
    clean = data.image_folder_batch(tmp_path, CONTRACT, 4, seed=3)
    assert clean.files == [p.name for p in data.sample_files(data.find_images(tmp_path), 4, seed=3)]
    for name in clean.files[:2]:  # break two of the chosen files
        (tmp_path / name).write_bytes(b"\x89PNG broken")
    messages: list[str] = []
    batch = data.image_folder_batch(tmp_path, CONTRACT, 4, seed=3, log=messages.append)
    assert len(batch) == 4 and batch.skipped == clean.files[:2]
    assert set(clean.files[2:]) <= set(batch.files) and not set(clean.files[:2]) & set(batch.files)
    assert batch.files == sorted(batch.files)  # the folder's order, whatever the draw order
    again = data.image_folder_batch(tmp_path, CONTRACT, 4, seed=3)
    assert again.files == batch.files and again.sha256 == batch.sha256
    assert sum(m.startswith("warning: skipping unreadable image") for m in messages) == 2


def test_too_few_readable_images_says_found_and_needed(tmp_path):
    make_images(tmp_path, 3)
    (tmp_path / "img_001.jpg").write_bytes(b"broken")
    with pytest.raises(UsageError, match=r"found 2 readable images \(1 unreadable\), 5 needed for --calib-size 5"):
        data.image_folder_batch(tmp_path, CONTRACT, 5, option="--calib-data", minimum=5, needed_for="--calib-size 5")


def test_the_issue_reproduction_one_readable_one_corrupt_golden_count_2(tmp_path):
    folder = tmp_path / "data"
    make_images(folder, 1)
    (folder / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    result = runner.invoke(export_app, ["--data", str(folder), "--golden-count", "2", "--img-size", "32",
                                        "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "skipping unreadable image zz_corrupt.jpg: truncated file" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --data {folder}: found 1 readable images (1 unreadable), 2 needed for random-init "
                      "BatchNorm re-estimation and the parity statistics (add readable jpg/png images to the folder)"]
    assert "Traceback" not in result.output and "ValueError" not in result.output
    assert sorted(p.name for p in out.iterdir()) == []


def test_non_utf8_names_do_not_crash_logging_hashing_or_the_report(tmp_path):
    folder = tmp_path / "imgs"
    make_images(folder, 3)
    raw = os.fsencode(folder) + b"/caf\xe9_\xff.jpg"  # Latin-1 bytes: not UTF-8
    os.rename(folder / "img_001.jpg", raw)
    os.symlink(b"nowhere-\xfe", os.fsencode(folder) + b"/broken_\xfe.png")
    messages: list[str] = []
    batch = data.image_folder_batch(folder, CONTRACT, None, log=messages.append)
    assert len(batch) == 3 and "caf\\xe9_\\xff.jpg" in batch.files
    assert batch.skipped == ["broken_\\xfe.png"]
    json.dumps(batch.describe() | {"files": batch.files}, ensure_ascii=False).encode("utf-8")
    "\n".join(messages).encode("utf-8")  # every log line is printable
    renamed = tmp_path / "imgs2"
    os.rename(folder, renamed)
    assert data.image_folder_batch(renamed, CONTRACT, None).sha256 == batch.sha256  # names by their bytes
    out = tmp_path / "out"
    result = runner.invoke(export_app, ["--data", str(renamed), "--golden-count", "3", "--img-size", "32",
                                        "--no-simplify", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["golden"]["skipped"] == ["broken_\\xfe.png"]
