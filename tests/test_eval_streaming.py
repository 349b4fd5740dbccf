"""Streamed one-pass evaluation: same numbers as the in-memory path, shards, resume, bad input.

A tiny 10-class module at 32 px keeps every export in about a second; the labeled sets are
small synthetic ImageFolder trees made here.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images

from mnv4_deploy import data, eval_stage, evaluation, validate
from mnv4_deploy.errors import UsageError
from mnv4_deploy.preprocess import Preprocess
from mnv4_deploy.streaming import ChunkDecoder

CONTRACT = Preprocess(crop_size=(32, 32), resize_short=36)
IMAGES_PER_CLASS = 25  # 3 classes: 75 images, 3 chunks of 32


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(self.conv(x))).mean((2, 3)))


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.2, 0.2)
        model.norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def labeled_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labeled")
    for c in range(3):
        make_images(root / str(c), IMAGES_PER_CLASS, seed=10 + c)
    return root


def export(out: Path, eval_dir: Path, **eval_options):
    import mnv4_deploy

    return mnv4_deploy.export(tiny_model(), "onnx", out, contract=CONTRACT, name="tiny", eval_data=eval_dir,
                              log=lambda _m: None, eval_options={"workers": 0, **eval_options})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def unsharded(labeled_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("unsharded")
    return out, export(out, labeled_dir)


# ---- accuracy from records ---------------------------------------------------------------------

def test_accuracy_from_records_equals_accuracy_from_logits_chunk_by_chunk():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 203)
    ref = rng.normal(size=(203, 10)).astype(np.float32)
    out = ref + rng.normal(scale=0.7, size=ref.shape).astype(np.float32)
    out[:5] = np.round(out[:5])  # ties
    whole = validate.accuracy(ref, out, labels)
    chunks = [(validate.correct_flags(ref[i:i + 32], labels[i:i + 32]), validate.correct_flags(out[i:i + 32], labels[i:i + 32]))
              for i in range(0, 203, 32)]
    flags = [np.concatenate([c[side][k] for c in chunks]) for side in (0, 1) for k in (0, 1)]
    assert validate.accuracy_from_records(*flags) == whole
    # the paired figures, by hand: discordant counts and the normal interval of the per-image difference
    ref1, out1 = flags[0], flags[2]
    diff = ref1.astype(float) - out1.astype(float)
    assert whole.only_reference_right == int(np.sum(ref1 & ~out1))
    assert whole.drop_top1 == pytest.approx(100 * diff.mean())
    assert whole.drop_top1_ci95[1] - whole.drop_top1 == pytest.approx(100 * 1.96 * diff.std(ddof=1) / np.sqrt(203))


# ---- worker pool ----------------------------------------------------------------------------

def test_worker_pool_gives_the_contracts_tensors_in_order(labeled_dir):
    files = list(data.labeled_files(labeled_dir).files)
    expected = np.stack([CONTRACT.load_image(p) for p in files])
    with ChunkDecoder(files, CONTRACT, chunk_size=7, workers=2) as decoder:
        chunks = list(decoder.chunks(range(len(decoder.ranges))))
    assert [c.chunk for c in chunks] == list(range(len(chunks)))
    assert [p for c in chunks for p in c.positions] == list(range(len(files)))
    assert np.array_equal(np.concatenate([c.tensors for c in chunks]), expected)
    assert chunks[0].sha256[0] == data.file_sha256(files[0])


@pytest.mark.parametrize("transport", ["shared slots", "result pipe"])
def test_worker_pool_skips_unreadable_images_the_same_way_by_either_transport(labeled_dir, tmp_path, monkeypatch,
                                                                            transport):
    """Kept chunks stay intact while later chunks reuse the slots; a skip leaves no hole in the tensors."""
    from mnv4_deploy import streaming

    if transport == "result pipe":
        monkeypatch.setattr(streaming, "SHARED_SLOTS_MAX_BYTES", 0)
    files = list(data.labeled_files(labeled_dir).files)[:30]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    files[9:9] = [broken]  # position 9, in the second chunk of 7
    with ChunkDecoder(files, CONTRACT, chunk_size=7, workers=2) as decoder:
        assert (decoder._slots is not None) == (transport == "shared slots")
        chunks = list(decoder.chunks(range(len(decoder.ranges))))  # kept while 5 chunks pass through 4 slots
    readable = [p for p in files if p != broken]
    assert np.array_equal(np.concatenate([c.tensors for c in chunks]),
                          np.stack([CONTRACT.load_image(p) for p in readable]))
    assert [c.tensors.shape[0] for c in chunks] == [7, 6, 7, 7, 3]
    assert chunks[1].skipped[0][0] == 9 and 9 not in chunks[1].positions


# ---- one pass, same numbers as in memory -----------------------------------------------------

def test_streamed_export_reports_the_in_memory_numbers(unsharded, labeled_dir):
    from mnv4_deploy.registry import Artifact, load_target

    out, report = unsharded
    batch = data.labeled_batch(labeled_dir, CONTRACT)
    canonical_ref = torch.from_numpy(np.load(out / "eval" / "reference.npz")["label"])
    assert canonical_ref.tolist() == batch.labels.tolist()
    with torch.no_grad():
        ref_logits = tiny_model()(torch.from_numpy(batch.tensors)).numpy()
    runner = load_target("onnx").runner(Artifact("onnx", out / "tiny.onnx", "fp32"))
    onnx_logits = np.concatenate([runner.run(batch.tensors[i:i + 32]) for i in range(0, 75, 32)])
    expected = validate.accuracy(ref_logits, onnx_logits, batch.labels).to_dict()
    assert report.results[0].accuracy == expected
    assert report.evaluation["sha256"] == batch.sha256  # the same hash the in-memory path gives
    assert report.evaluation["count"] == 75 and report.evaluation["layout"] == "imagefolder"
    ref1, ref5 = validate.correct_flags(ref_logits, batch.labels)
    assert report.evaluation["reference_top1"] == round(100 * float(ref1.mean()), 4)
    assert report.evaluation["reference_top5"] == round(100 * float(ref5.mean()), 4)
    assert expected["top5"] > expected["top1"]  # the tiny model is not degenerate on this set


def test_unreadable_images_are_skipped_and_named_as_in_memory(tmp_path):
    root = tmp_path / "set"
    make_images(root / "0", 4, seed=1)
    make_images(root / "1", 3, seed=2)
    (root / "1" / "img_001.jpg").write_bytes(b"not a jpeg")
    records = evaluation.run_evaluation(_spec(root), _logits, {"t": _logits}, tmp_path / "out", workers=2,
                                        log=lambda _m: None)
    batch = data.labeled_batch(root, CONTRACT)
    described = records.describe(CONTRACT.sha256())
    assert described["count"] == len(batch) == 6 and described["sha256"] == batch.sha256
    assert [s.split(":")[0] for s in described["skipped"]] == batch.skipped == ["1/img_001.jpg"]
    assert records.common["label"].tolist() == batch.labels.tolist()


# ---- shards ---------------------------------------------------------------------------------

def test_merged_shards_equal_one_run_byte_for_byte(unsharded, labeled_dir, tmp_path):
    from mnv4_deploy.eval_merge import merge_eval

    out, report = unsharded
    shard_dirs = []
    for k in (1, 2, 3):
        shard_dirs.append(tmp_path / f"shard{k}")
        shard_report = export(shard_dirs[-1], labeled_dir, shard=f"{k}/3")
        assert shard_report.evaluation["shard"] == f"{k}/3"
        assert shard_report.evaluation["count"] == (32 if k < 3 else 11)
    summary = merge_eval(shard_dirs[::-1], tmp_path / "merged")  # order of arguments does not matter
    for name in ("reference.npz", "onnx.npz"):
        assert sha(tmp_path / "merged" / "eval" / name) == sha(out / "eval" / name)
    for k, shard in enumerate(shard_dirs, start=1):  # the CI layout: each shard's eval/ downloaded into its own folder
        shutil.copytree(shard / "eval", tmp_path / "parts" / f"mnv4-eval-shard-{k}")
    merge_eval([tmp_path / "parts"], tmp_path / "merged2")
    assert sha(tmp_path / "merged2" / "eval" / "onnx.npz") == sha(out / "eval" / "onnx.npz")
    assert summary["targets"][0]["accuracy"] == report.results[0].accuracy
    assert summary["evaluation"]["sha256"] == report.evaluation["sha256"]
    assert json.loads((tmp_path / "merged" / "eval_summary.json").read_text())["exit_code"] == 0


def test_merge_refuses_shards_of_another_run_naming_the_field(unsharded, labeled_dir, tmp_path):
    from mnv4_deploy.eval_merge import merge_eval

    first = tmp_path / "a"
    export(first, labeled_dir, shard="1/2")
    other = tmp_path / "b"
    export(other, labeled_dir, shard="2/2")
    meta_path = other / "eval" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["run"]["recipe"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="recipe differs"):
        merge_eval([first, other], tmp_path / "m")
    with pytest.raises(UsageError, match=r"shard\(s\) 2/2 missing"):
        merge_eval([first], tmp_path / "m")
    shutil.copytree(first, tmp_path / "copy")
    with pytest.raises(UsageError, match=r"shard 1/2 given twice"):
        merge_eval([first, first / "eval", tmp_path / "copy"], tmp_path / "m")
    with pytest.raises(UsageError, match="shard_count differs"):
        merge_eval([first, unsharded[0]], tmp_path / "m")


@pytest.mark.parametrize("text", ["3/2", "0/0", "0/3", "a/b", "2"])
def test_bad_shard_specs_are_one_line_usage_errors(text):
    with pytest.raises(UsageError, match="--eval-shard"):
        evaluation.ShardSpec.parse(text)


def test_more_shards_than_chunks_is_refused_before_conversion(labeled_dir, tmp_path):
    with pytest.raises(UsageError, match="only 3 chunk"):
        export(tmp_path / "x", labeled_dir, shard="1/4")
    assert not list(tmp_path.rglob("*.onnx"))


def test_cli_bad_shard_exit_code(labeled_dir, tmp_path):
    from typer.testing import CliRunner

    from mnv4_deploy.cli import app

    result = CliRunner().invoke(app, ["export", "--model", "conv_small", "--img-size", "64", "--to", "onnx",
                                      "--eval-data", str(labeled_dir), "--eval-shard", "3/2", "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "--eval-shard 3/2" in result.output and "Traceback" not in result.output


# ---- resume -------------------------------------------------------------------------------------

class Interrupting:
    """A runner that is interrupted (Ctrl-C) on its n-th chunk."""

    def __init__(self, run, at: int):
        self.run, self.at, self.calls = run, at, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.run(batch)


def _spec(labeled_dir: Path, **identity) -> evaluation.EvalSpec:
    return evaluation.EvalSpec(data.labeled_files(labeled_dir), CONTRACT, {"model": "m", **identity})


def _logits(batch: np.ndarray) -> np.ndarray:
    return batch.reshape(len(batch), 3, -1).mean(axis=2) @ np.arange(30, dtype=np.float32).reshape(3, 10)


def test_resume_continues_from_the_chunk_records(labeled_dir, tmp_path):
    full = tmp_path / "full"
    evaluation.run_evaluation(_spec(labeled_dir), _logits, {"t": lambda b: -_logits(b)}, full, workers=0,
                              log=lambda _m: None)
    broken = tmp_path / "broken"
    runner = Interrupting(lambda b: -_logits(b), at=3)
    with pytest.raises(KeyboardInterrupt):
        evaluation.run_evaluation(_spec(labeled_dir), _logits, {"t": runner}, broken, workers=0, log=lambda _m: None)
    assert len(list((broken / "eval" / "chunks").glob("*.npz"))) == 2
    seen = []
    counting = lambda b: seen.append(len(b)) or -_logits(b)  # noqa: E731
    evaluation.run_evaluation(_spec(labeled_dir), _logits, {"t": counting}, broken, workers=0, resume=True,
                              log=lambda _m: None)
    assert seen == [11]  # only the last chunk ran again
    for name in ("reference.npz", "t.npz"):
        assert sha(broken / "eval" / name) == sha(full / "eval" / name)


def test_resume_of_another_run_is_refused_naming_the_field(labeled_dir, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluation.run_evaluation(_spec(labeled_dir), _logits, {"t": Interrupting(_logits, at=2)}, tmp_path,
                                  workers=0, log=lambda _m: None)
    with pytest.raises(UsageError, match="holds records of another run: model differs"):
        evaluation.run_evaluation(_spec(labeled_dir, model="other"), _logits, {"t": _logits}, tmp_path,
                                  workers=0, resume=True, log=lambda _m: None)


# ---- layouts --------------------------------------------------------------------------------

def _write_devkit(root: Path, devkit_ids: list[int], wnids_by_id: dict[int, str]) -> None:
    from scipy.io import savemat

    paths = make_images(root, len(devkit_ids), seed=5)
    for i, path in enumerate(paths, start=1):
        path.rename(root / f"ILSVRC2012_val_{i:08d}.JPEG")
    data_dir = root / "ILSVRC2012_devkit_t12" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / data.DEVKIT_GROUND_TRUTH).write_text("".join(f"{d}\n" for d in devkit_ids))
    synsets = np.zeros((len(wnids_by_id),), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for row, (devkit_id, wnid) in enumerate(sorted(wnids_by_id.items())):
        synsets[row] = (devkit_id, wnid, 0)
    savemat(str(data_dir / data.DEVKIT_META), {"synsets": synsets})


def test_devkit_layout_maps_ids_through_meta_mat(tmp_path):
    wnids = data.imagenet_wnids()
    # the devkit's order is not the sorted one: id 1 -> the 501st sorted wnid, id 2 -> the first, ...
    by_id = {1: wnids[500], 2: wnids[0], 3: wnids[999]}
    _write_devkit(tmp_path, [2, 1, 3, 1], by_id)
    labeled = data.labeled_files(tmp_path, num_classes=1000)
    assert labeled.layout == "devkit"
    assert [p.name for p in labeled.files] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 5)]
    assert list(labeled.labels) == [0, 500, 999, 500]


def test_devkit_bad_input(tmp_path):
    wnids = data.imagenet_wnids()
    short = tmp_path / "short"
    _write_devkit(short, [1, 2], {1: wnids[3], 2: wnids[4]})
    truth = short / "ILSVRC2012_devkit_t12" / "data" / data.DEVKIT_GROUND_TRUTH
    truth.write_text("1\n")
    with pytest.raises(UsageError, match="has 1 labels but .* holds 2"):
        data.labeled_files(short)
    truth.write_text("1\n1001\n")
    with pytest.raises(UsageError, match="line 2: id '1001' is not a devkit class id"):
        data.labeled_files(short)
    (truth.parent / data.DEVKIT_META).unlink()
    truth.write_text("1\n2\n")
    with pytest.raises(UsageError, match="meta.mat not found"):
        data.labeled_files(short)


def test_every_layout_gives_the_same_labeled_set(tmp_path):
    wnids = data.imagenet_wnids()
    by_index = tmp_path / "by_index"
    for c in (0, 7):
        make_images(by_index / str(c), 2, seed=c)
    by_wnid = tmp_path / "by_wnid"
    for c in (0, 7):
        make_images(by_wnid / wnids[c], 2, seed=c)
    csv_dir = tmp_path / "csv"
    rows = []
    for c in (0, 7):
        for p in make_images(csv_dir / f"c{c}", 2, seed=c):
            rows.append(f"{p.relative_to(csv_dir)},{c}\n")
    (csv_dir / "labels.csv").write_text("file,class_index\n" + "".join(rows))
    sets = [data.labeled_files(d, num_classes=1000) for d in (by_index, by_wnid, csv_dir)]
    assert [s.layout for s in sets] == ["imagefolder", "imagefolder", "labels.csv"]
    assert all(list(s.labels) == [0, 0, 7, 7] for s in sets)
    tensors = [data.labeled_batch(d, CONTRACT).tensors for d in (by_index, by_wnid, csv_dir)]
    assert np.array_equal(tensors[0], tensors[1]) and np.array_equal(tensors[0], tensors[2])


def test_export_resume_reuses_finished_records_and_refuses_another_sample(unsharded, labeled_dir, tmp_path):
    out, report = unsharded
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = sha(copy / "eval" / "onnx.npz")
    resumed = export(copy, labeled_dir, resume=True)
    assert resumed.results[0].accuracy == report.results[0].accuracy
    assert sha(copy / "eval" / "onnx.npz") == before
    import mnv4_deploy

    with pytest.raises(UsageError, match="another run: eval_images differs"):
        mnv4_deploy.export(tiny_model(), "onnx", copy, contract=CONTRACT, name="tiny", eval_data=labeled_dir,
                           eval_size=40, log=lambda _m: None, eval_options={"workers": 0, "resume": True})


def test_cli_merge_eval_gates_the_merged_drop(labeled_dir, tmp_path):
    from typer.testing import CliRunner

    from mnv4_deploy.cli import app

    def always(cls: int):
        return lambda b: np.tile(np.eye(10, dtype=np.float32)[cls], (len(b), 1))

    for k in (1, 2):  # reference: always class 0 (a third of the images); target: always class 9 (none)
        spec = _spec(labeled_dir)
        spec.shard = evaluation.ShardSpec(k, 2)
        evaluation.run_evaluation(spec, always(0), {"worse": always(9)}, tmp_path / f"s{k}", workers=0,
                                  log=lambda _m: None)
    runner = CliRunner()
    ok = runner.invoke(app, ["merge-eval", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m")])
    assert ok.exit_code == 0, ok.output
    assert "| worse | 75 |" in ok.output
    drop = json.loads((tmp_path / "m" / "eval_summary.json").read_text())["targets"][0]["accuracy"]["drop_top1"]
    gated = runner.invoke(app, ["merge-eval", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m2"),
                                "--max-drop", str(max(drop - 1.0, 0.0))])
    assert drop == pytest.approx(100 / 3, abs=1e-3) and gated.exit_code == 4 and "over --max-drop" in gated.output
    missing = runner.invoke(app, ["merge-eval", str(tmp_path / "s1"), "--out", str(tmp_path / "m3")])
    assert missing.exit_code == 2 and "shard(s) 2/2 missing" in missing.output


# ---- reference records reused across runs -----------------------------------------------------

class Counting:
    """A runner that counts the images it was given."""

    def __init__(self, run):
        self.run, self.images = run, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.images += len(batch)
        return self.run(batch)


def _keyed(labeled_dir: Path, **key) -> evaluation.EvalSpec:
    spec = _spec(labeled_dir)
    spec.reference_key = {"model_sha256": "a" * 64, "recipe": "r", "contract": CONTRACT.sha256(), **key}
    return spec


def test_reference_records_are_reused_only_under_the_same_key(labeled_dir, tmp_path):
    first = tmp_path / "first"
    evaluation.run_evaluation(_keyed(labeled_dir), _logits, {"t": lambda b: -_logits(b)}, first, workers=0,
                              log=lambda _m: None)
    ref_sha = sha(first / "eval" / "reference.npz")
    # a later run with another target in the same --out: the reference does not run, its records are the same bytes
    lines, reference = [], Counting(_logits)
    evaluation.run_evaluation(_keyed(labeled_dir), reference, {"u": lambda b: _logits(b)[:, ::-1]}, first, workers=0,
                              log=lines.append)
    assert reference.images == 0 and sha(first / "eval" / "reference.npz") == ref_sha
    assert any("reference records of 75 image(s) reused" in line for line in lines)
    assert json.loads((first / "eval" / "meta.json").read_text())["reference_reused"] == 75
    # from another run's folder, and a changed key field recomputes, naming it
    lines, reference = [], Counting(_logits)
    evaluation.run_evaluation(_keyed(labeled_dir, recipe="other"), reference, {"t": _logits}, tmp_path / "second",
                              workers=0, log=lines.append, reference_from=first / "eval")
    assert reference.images == 75 and any("not reused: recipe differs" in line for line in lines)
    assert sha(tmp_path / "second" / "eval" / "reference.npz") == ref_sha  # the same model, recomputed
    # no key (e.g. the benchmark's engine-only pass): never reused
    reference = Counting(_logits)
    evaluation.run_evaluation(_spec(labeled_dir), reference, {"t": _logits}, first, workers=0, log=lambda _m: None)
    assert reference.images == 75


def test_reused_reference_recomputes_chunks_whose_files_changed(labeled_dir, tmp_path):
    changed = tmp_path / "set"
    shutil.copytree(labeled_dir, changed)
    evaluation.run_evaluation(_keyed(changed), _logits, {"t": _logits}, tmp_path, workers=0, log=lambda _m: None)
    ref_before = np.load(tmp_path / "eval" / "reference.npz")["top1"].copy()
    victim = sorted((changed / "2").iterdir())[-1]  # the last chunk (images 64-74) holds class 2's last images
    make_images(tmp_path / "new", 1, seed=99)[0].replace(victim)  # same name, new bytes: same image list
    reference = Counting(_logits)
    records = evaluation.run_evaluation(_keyed(changed), reference, {"t": _logits}, tmp_path, workers=0,
                                        log=lambda _m: None)
    assert reference.images == 11  # only that chunk ran the reference again
    assert records.common["file_sha256"][-1] == data.file_sha256(victim)
    assert len(records.sides["reference"]["top1"]) == len(ref_before)


def test_export_again_into_the_same_out_reuses_the_reference_records(unsharded, labeled_dir, tmp_path):
    import mnv4_deploy

    out, report = unsharded
    again = tmp_path / "again"
    shutil.copytree(out, again)
    lines: list[str] = []
    rerun = mnv4_deploy.export(tiny_model(), "onnx", again, contract=CONTRACT, name="tiny", eval_data=labeled_dir,
                               log=lines.append, eval_options={"workers": 0})
    assert any("reference records of 75 image(s) reused" in line for line in lines)
    assert rerun.results[0].accuracy == report.results[0].accuracy
    for name in ("reference.npz", "onnx.npz"):
        assert sha(again / "eval" / name) == sha(out / "eval" / name)
    key = json.loads((again / "eval" / "meta.json").read_text())["reference_key"]
    assert key["eval_images"] == 75 and "channels_last" in key["reference_runner"]


def test_model_hash_sees_every_weight_and_the_channels_last_copy_leaves_the_model_alone():
    model = tiny_model()
    before = eval_stage.model_sha256(model)
    copy = eval_stage.reference_model(model)
    assert copy.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv.weight.is_contiguous() and eval_stage.model_sha256(model) == before
    with torch.no_grad():
        model.norm.running_var[0] += 1e-3  # a buffer, not a parameter
    assert eval_stage.model_sha256(model) != before


# ---- bad input through the command line: one line, exit 2, nothing half-written ---------------------

def _bad_devkit(root: Path, truth: str) -> Path:
    wnids = data.imagenet_wnids()
    _write_devkit(root, [1, 2], {1: wnids[3], 2: wnids[4]})
    (root / "ILSVRC2012_devkit_t12" / "data" / data.DEVKIT_GROUND_TRUTH).write_text(truth)
    return root


def _other_runs_records(root: Path, labeled_dir: Path) -> Path:
    evaluation.run_evaluation(_spec(labeled_dir), _logits, {"onnx": _logits}, root, workers=0, log=lambda _m: None)
    return labeled_dir


@pytest.mark.parametrize("case, extra, message", [  # the resume case converts conv_small first: slow
    ("short ground truth", [], "has 1 labels but"),  # refused before the model loads: fast
    ("id out of range", [], "id '1001' is not a devkit class id"),
    ("shard 0/0", ["--eval-shard", "0/0"], "--eval-shard 0/0: K must be between 1 and N"),
    pytest.param("resume another run", ["--resume"], "holds records of another run: artifacts differs",
                 marks=pytest.mark.slow),
])
def test_cli_eval_bad_input_is_one_line_exit_2(labeled_dir, tmp_path, case, extra, message):
    from typer.testing import CliRunner

    from mnv4_deploy.cli import app

    out = tmp_path / "out"
    if case == "short ground truth":
        eval_dir = _bad_devkit(tmp_path / "set", "1\n")
    elif case == "id out of range":
        eval_dir = _bad_devkit(tmp_path / "set", "1\n1001\n")
    elif case == "resume another run":
        eval_dir = _other_runs_records(out, labeled_dir)
    else:
        eval_dir = labeled_dir
    result = CliRunner().invoke(app, ["export", "--model", "conv_small", "--img-size", "64", "--golden-count", "3",
                                      "--to", "onnx", "--eval-data", str(eval_dir), "--eval-workers", "0",
                                      "--out", str(out), *extra])
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    if case != "resume another run":  # refused before any conversion
        assert not list(out.rglob("*.onnx"))
    else:  # the other run's records are left as they were
        assert json.loads((out / "eval" / "meta.json").read_text())["run"]["model"] == "m"


def test_cli_merge_of_shards_from_another_contract_names_the_field(labeled_dir, tmp_path):
    from typer.testing import CliRunner

    from mnv4_deploy.cli import app

    for k, contract in ((1, CONTRACT.sha256()), (2, "0" * 64)):
        spec = _spec(labeled_dir, contract=contract)
        spec.shard = evaluation.ShardSpec(k, 2)
        evaluation.run_evaluation(spec, _logits, {"t": _logits}, tmp_path / f"s{k}", workers=0, log=lambda _m: None)
    result = CliRunner().invoke(app, ["merge-eval", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out",
                                      str(tmp_path / "m")])
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(lines) == 1 and "contract differs" in lines[0], result.output
    assert not (tmp_path / "m" / "eval" / "reference.npz").exists()
