"""A bad labeled set fails before the model loads: found once, checked against the model after it.

Each CLI case gives a `--weights` file that does not exist: loading the model would refuse it
(exit 2, "no such file"), so the labeled set's own message winning shows it was checked first.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_images
from typer.testing import CliRunner

from mnv4_deploy import data
from mnv4_deploy.cli import app
from mnv4_deploy.errors import UsageError
from mnv4_deploy.preprocess import Preprocess

runner = CliRunner()


def _short_devkit(root: Path) -> Path:
    """Two flat validation images, a ground truth with one line: refused before meta.mat is read."""
    root.mkdir(parents=True)
    for i in (1, 2):
        (root / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(b"never decoded")
    (root / data.DEVKIT_GROUND_TRUTH).write_text("1\n")
    return root


def _csv_with_missing_file(root: Path) -> Path:
    make_images(root / "a", 2)
    (root / "labels.csv").write_text("file,class_index\na/img_000.jpg,0\na/img_001.jpg,1\na/gone.jpg,2\n")
    return root


BAD_SETS = [(_short_devkit, "has 1 labels but"), (_csv_with_missing_file, "1 listed files do not exist")]


def _one_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("make_set, message", BAD_SETS, ids=["devkit", "labels.csv"])
def test_export_refuses_a_bad_labeled_set_before_loading_the_model(tmp_path, make_set, message):
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", "--model", "conv_small", "--img-size", "32", "--to", "onnx",
                                 "--weights", str(tmp_path / "missing.pth"),
                                 "--eval-data", str(make_set(tmp_path / "set")),
                                 "--eval-workers", "0", "--out", str(out)])
    line = _one_error(result)
    assert message in line and "--weights" not in line
    assert not out.exists()  # refused before --out was created


@pytest.mark.parametrize("make_set, message", BAD_SETS, ids=["devkit", "labels.csv"])
def test_validate_refuses_a_bad_labeled_set_before_loading_the_model(tmp_path, make_set, message):
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"not read: the labeled set is refused first")
    result = runner.invoke(app, ["validate", str(artifact), "--model", "conv_small", "--img-size", "32",
                                 "--weights", str(tmp_path / "missing.pth"),
                                 "--eval-data", str(make_set(tmp_path / "set")),
                                 "--eval-workers", "0"])
    line = _one_error(result)
    assert message in line and "--weights" not in line


class TenClasses(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_labels_outside_the_model_are_refused_after_it_loads_without_a_second_scan(tmp_path, monkeypatch):
    import mnv4_deploy

    make_images(tmp_path / "set" / "3", 2, seed=1)
    make_images(tmp_path / "set" / "12", 2, seed=2)  # the model has 10 classes
    scans: list[Path] = []
    found = data.labeled_files

    def counting(root, *args, **kwargs):
        scans.append(Path(root))
        return found(root, *args, **kwargs)

    monkeypatch.setattr(data, "labeled_files", counting)
    torch.manual_seed(0)
    with pytest.raises(UsageError, match=r"labels \[12\] are outside the model's 10 classes"):
        mnv4_deploy.export(TenClasses().eval(), "onnx", tmp_path / "out", name="ten",
                           contract=Preprocess(crop_size=(32, 32), resize_short=36), eval_data=tmp_path / "set",
                           log=lambda _m: None, eval_options={"workers": 0})
    assert scans == [tmp_path / "set"]
    assert not list((tmp_path / "out").rglob("*.onnx"))  # refused before any conversion


def test_the_label_range_covers_every_listed_image_not_only_the_sample(tmp_path):
    make_images(tmp_path / "0", 3, seed=1)
    make_images(tmp_path / "12", 1, seed=2)
    labeled = data.labeled_files(tmp_path, count=1, seed=0)
    assert labeled.classes_found == (0, 12)
    with pytest.raises(UsageError, match=r"labels \[12\] are outside the model's 10 classes"):
        labeled.subset([0]).check_classes(10)
    labeled.check_classes(13)
