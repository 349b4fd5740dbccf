"""Image folders, labels and golden inputs: deterministic, and loud about bad files."""
from __future__ import annotations

import numpy as np
import pytest

from mnv4_deploy import data
from mnv4_deploy.errors import UsageError
from mnv4_deploy.preprocess import Preprocess

from conftest import make_images

CONTRACT = Preprocess(crop_size=(32, 32), resize_short=36)


def test_recursive_discovery_and_seeded_sampling(tmp_path):
    make_images(tmp_path / "a", 5)
    make_images(tmp_path / "b" / "deep", 5, seed=1)
    (tmp_path / "notes.txt").write_text("not an image")
    files = data.find_images(tmp_path)
    assert len(files) == 10 and files == sorted(files)
    first = data.sample_files(files, 4, seed=3)
    assert first == data.sample_files(files, 4, seed=3) and len(first) == 4
    assert first != data.sample_files(files, 4, seed=4)


def test_batch_hash_depends_on_pixels_and_contract(tmp_path):
    make_images(tmp_path, 4)
    a = data.image_folder_batch(tmp_path, CONTRACT, None)
    b = data.image_folder_batch(tmp_path, CONTRACT, None)
    assert a.sha256 == b.sha256 and np.array_equal(a.tensors, b.tensors)
    other = data.image_folder_batch(tmp_path, Preprocess(crop_size=(32, 32), resize_short=40), None)
    assert other.sha256 != a.sha256
    make_images(tmp_path, 1, seed=9)  # overwrites img_000 with other pixels
    assert data.image_folder_batch(tmp_path, CONTRACT, None).sha256 != a.sha256


def test_corrupt_image_among_good_ones_is_skipped_and_named(tmp_path):
    make_images(tmp_path, 3)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    messages = []
    batch = data.image_folder_batch(tmp_path, CONTRACT, None, log=messages.append)
    assert len(batch) == 3 and batch.skipped == ["broken.jpg"]
    assert any("broken.jpg" in m for m in messages)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no images found"),
    (lambda p: (p / "x.jpg").write_bytes(b"nope"), "none of the 1 images could be read"),
])
def test_folders_without_usable_images_are_refused(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UsageError, match=message):
        data.image_folder_batch(tmp_path, CONTRACT, 4)
    with pytest.raises(UsageError, match="no such directory"):
        data.find_images(tmp_path / "absent")


def test_fewer_images_than_asked_warns_and_uses_all(tmp_path):
    make_images(tmp_path, 3)
    messages = []
    assert len(data.image_folder_batch(tmp_path, CONTRACT, 10, log=messages.append)) == 3
    assert any("fewer than the 10" in m for m in messages)


def test_synthetic_golden_inputs_are_seeded_and_image_like():
    a, b = data.synthetic_batch(CONTRACT, 4, seed=0), data.synthetic_batch(CONTRACT, 4, seed=0)
    assert np.array_equal(a.tensors, b.tensors) and a.sha256 == b.sha256
    assert not np.array_equal(a.tensors, data.synthetic_batch(CONTRACT, 4, seed=1).tensors)
    # normalized like photos: roughly zero mean, unit scale, spatially smooth
    assert abs(float(a.tensors.mean())) < 1.0 and 0.3 < float(a.tensors.std()) < 3.0
    dx = np.abs(np.diff(a.tensors, axis=3)).mean()
    assert dx < a.tensors.std()


def test_labels_csv_and_imagefolder(tmp_path):
    csv_dir = tmp_path / "csv"
    make_images(csv_dir, 3)
    (csv_dir / "labels.csv").write_text("file,class_index,name\nimg_000.jpg,4,a\nimg_001.jpg,7,b\nimg_002.jpg,4,c\n")
    batch = data.labeled_batch(csv_dir, CONTRACT, num_classes=10)
    assert batch.labels.tolist() == [4, 7, 4]
    tree = tmp_path / "tree"
    make_images(tree / "n01440764", 2)
    make_images(tree / "n01443537", 1)
    assert sorted(data.labeled_batch(tree, CONTRACT).labels.tolist()) == [0, 0, 1]
    numeric = tmp_path / "numeric"
    make_images(numeric / "3", 2)
    assert data.labeled_batch(numeric, CONTRACT).labels.tolist() == [3, 3]


def test_labels_that_do_not_match_the_model_are_refused(tmp_path):
    make_images(tmp_path, 2)
    (tmp_path / "labels.csv").write_text("file,class_index\nimg_000.jpg,12\nimg_001.jpg,1\n")
    with pytest.raises(UsageError, match=r"labels \[12\] are outside the model's 10 classes"):
        data.labeled_batch(tmp_path, CONTRACT, num_classes=10)
    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(UsageError, match="needs the columns file,class_index"):
        data.labeled_batch(tmp_path, CONTRACT)
    odd = tmp_path / "odd"
    make_images(odd / "cats", 1)
    with pytest.raises(UsageError, match="neither an index nor an ImageNet wnid"):
        data.labeled_batch(odd, CONTRACT)


def test_real_imagenet_samples_load_with_their_labels(imagenet_samples):
    batch = data.labeled_batch(imagenet_samples, CONTRACT, count=20, num_classes=1000)
    assert len(batch) == 20 and batch.labels.max() < 1000 and not batch.skipped
