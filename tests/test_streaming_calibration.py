"""Streamed calibration: the images, hash and int8 plan of the in-memory path, from disk in batches."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_images

from mnv4_deploy import data
from mnv4_deploy.calibration_stream import StreamedCalibration, calibration_set
from mnv4_deploy.preprocess import Preprocess
from mnv4_deploy.recipes import load_recipe

CONTRACT = Preprocess(crop_size=(32, 32), resize_short=36)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    make_images(root / "a", 9, seed=1)
    make_images(root / "b", 8, seed=2)
    (root / "a" / "img_002.jpg").write_bytes(b"\xff\xd8 truncated")  # drawn, unreadable: replaced
    return root


def _streamed(calib_dir, count=11, held=4, workers=2):
    found = calibration_set(calib_dir, CONTRACT, count, seed=3, held=held, in_memory_limit=0, workers=workers)
    assert isinstance(found, StreamedCalibration)
    return found


def test_streamed_set_picks_and_hashes_the_in_memory_images(calib_dir):
    streamed = _streamed(calib_dir)
    batch = data.image_folder_batch(calib_dir, CONTRACT, 11, seed=3)
    assert streamed.files == batch.files and streamed.skipped == batch.skipped == ["a/img_002.jpg"]
    assert streamed.sha256 == batch.sha256 and len(streamed) == len(batch) == 11
    assert np.array_equal(streamed.tensors, batch.tensors[:4])
    assert np.array_equal(np.concatenate(list(streamed.batches(3))), batch.tensors)
    assert [len(b) for b in streamed.batches(3)] == [3, 3, 3, 2]
    assert streamed.describe()["streamed"] and streamed.describe()["held_in_memory"] == 4


def test_small_sets_stay_in_memory(calib_dir):
    found = calibration_set(calib_dir, CONTRACT, 5, seed=3)
    assert isinstance(found, data.ImageBatch) and len(found) == 5


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU())
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = torch.nn.Conv2d(8, 16, 1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(self.stem(x)))
        return self.fc(torch.relu(x).mean((2, 3)))


def test_the_plan_from_a_streamed_set_is_the_in_memory_plan(calib_dir):
    from mnv4_deploy.quant import build_plan

    raw = copy.deepcopy(dict(load_recipe("default").raw))
    raw["calibration"] = {**raw.get("calibration", {}), "batch_size": 3, "correction_size": 4}
    torch.manual_seed(0)
    model = Net().eval()
    batch = data.image_folder_batch(calib_dir, CONTRACT, 11, seed=3)
    quiet = lambda _m: None  # noqa: E731
    in_memory = build_plan(copy.deepcopy(model), batch.tensors, raw, log=quiet)
    streamed = build_plan(copy.deepcopy(model), _streamed(calib_dir, workers=0), raw, log=quiet)
    assert streamed.to_dict() == in_memory.to_dict()
    x = torch.from_numpy(batch.tensors)
    with torch.no_grad():
        assert torch.equal(streamed.fake_quant_model()(x), in_memory.fake_quant_model()(x))


@pytest.mark.slow
def test_an_int8_export_with_a_streamed_set_writes_the_same_artifact(trained_digits, digit_folders, tmp_path,
                                                                      monkeypatch):
    from mnv4_deploy import calibration_stream, export

    calib, _ = digit_folders
    quiet = {"log": lambda _m: None, "contract": trained_digits.contract, "name": "digits", "calib_data": calib,
             "calib_size": 40}
    in_memory = export(trained_digits.model, "onnx-int8", tmp_path / "memory", **quiet)
    monkeypatch.setattr(calibration_stream, "IN_MEMORY_LIMIT", 8)
    streamed = export(trained_digits.model, "onnx-int8", tmp_path / "streamed", **quiet)
    assert streamed.model["calibration"]["streamed"] and not in_memory.model["calibration"].get("streamed")
    assert streamed.model["calibration"]["sha256"] == in_memory.model["calibration"]["sha256"]
    assert streamed.quantization["plan"] == in_memory.quantization["plan"]
    assert streamed.result("onnx-int8").sha256 == in_memory.result("onnx-int8").sha256
