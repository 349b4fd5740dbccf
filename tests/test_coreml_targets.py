"""Core ML targets: `coreml` (fp16), `coreml-fp32` and `coreml-w8` (64 px inputs).

Parity runs where the artifact can run: Core ML's `MLModel.predict` on macOS, the NumPy ML
Program executor (`mnv4_deploy.converters.coreml_mil`) elsewhere. `coreml-w8` is held to the int8 bounds
on a really trained MNv4, and on random weights also to "it computes its recipe": its logits
against PyTorch with the same int8 weights (random networks amplify rounding error, so the
float distance of a random model says more about the init than about the converter).
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnv4_deploy.converters.coreml_mil import import_coremltools

import_coremltools()  # the one safe import: hides TensorFlow (TF before triton segfaults)
ct = pytest.importorskip("coremltools")

from mnv4_deploy.converters.coreml import (COREML_FP16, COREML_FP32, COREML_W8, CONTRACT_KEY, LABELS_KEY,  # noqa: E402
                               LINUX_RUNTIME, TARGETS as DEPLOYMENT_TARGETS, describe_mlpackage,
                               image_input_for, read_embedded_contract, to_pixels, with_channel_ratios)
from mnv4_deploy.converters.coreml.convert import save_package  # noqa: E402
from mnv4_deploy.converters.coreml.deployment import canonical_name  # noqa: E402
from mnv4_deploy import export  # noqa: E402
from mnv4_deploy.errors import ArtifactUnreadable, DeployError, UsageError  # noqa: E402
from mnv4_deploy.pipeline import prepare_model, validate_artifact  # noqa: E402
from mnv4_deploy.preprocess import Preprocess  # noqa: E402
from mnv4_deploy.registry import Artifact, ExportOptions  # noqa: E402
from mnv4_deploy.validate import compare  # noqa: E402

from conftest import SMALL  # noqa: E402

TARGETS = "coreml,coreml-fp32,coreml-w8"
QUIET = dict(log=lambda _: None)
MEAN_STD_HALF = "conv_small.e3600_r256_in1k"  # a checkpoint whose contract is mean = std = 0.5
ON_MAC = sys.platform == "darwin"


def _runtime_ok(runtime: str) -> bool:
    return runtime.startswith("coremltools") if ON_MAC else runtime.startswith(LINUX_RUNTIME)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One export per (model, targets, options), shared by the tests of this module."""
    cache: dict = {}

    def get(name: str, targets: str = TARGETS, **options):
        key = (name, targets, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(name.replace(".", "_"))
            report = export(name, targets, out, img_size=SMALL, golden_count=3, options=ExportOptions(**options),
                            **QUIET)
            cache[key] = (report, out)
        return cache[key]

    return get


def _w8_weights_logits(prepared) -> np.ndarray:
    """The canonical model with the int8 weights linear_quantize_weights makes, in PyTorch.

    Per-output-channel symmetric int8 of the fp16-rounded weights; weights of 2048 elements
    or fewer stay float (coremltools' default threshold).
    """
    import torch

    model = copy.deepcopy(prepared.canonical)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and mod.weight.numel() > 2048:
                w = mod.weight.half().float()
                scale = (w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127).view(-1, *[1] * (w.dim() - 1))
                mod.weight.copy_(torch.round(w / scale).clamp(-127, 127) * scale)
        return model(torch.from_numpy(prepared.golden.tensors)).numpy()


def _check_metadata(report, out: Path, num_classes: int = 1000) -> None:
    """Every artifact carries the contract, class names, author/license/version, no date."""
    for result in report.results:
        path = out / result.artifact
        assert read_embedded_contract(path).sha256() == report.contract["sha256"]
        spec = ct.utils.load_spec(str(path))
        meta = spec.description.metadata
        user = dict(meta.userDefined)
        assert json.loads(user[CONTRACT_KEY])["sha256"] == report.contract["sha256"]
        labels = json.loads(user[LABELS_KEY])
        assert len(labels) == num_classes and len(set(labels)) == num_classes
        if num_classes == 1000:
            assert labels[0].startswith("tench") and "crane (n02012849)" in labels  # ImageNet names, unique
        else:
            assert labels == [str(i) for i in range(num_classes)]
        assert user["mnv4_deploy.target"] == result.target and user["mnv4_deploy.precision"] == result.precision
        assert "com.github.apple.coremltools.conversion_date" not in user  # removed: it breaks reproducibility
        assert meta.author == "mnv4-deploy" and meta.versionString and meta.shortDescription and meta.license
        assert result.metadata["reproducible"] is True and "UUID" in result.metadata["reproducible_reason"]
        assert _runtime_ok(result.runtime), result.runtime


# ---------------------------------------------------------------- random-init variants
@pytest.mark.parametrize("name", ["conv_small", pytest.param("hybrid_medium", marks=pytest.mark.slow)])
def test_random_init_variants_convert_and_judge(name, runs):
    prepared = prepare_model(name, img_size=SMALL, golden_count=3, **QUIET)
    emulated = _w8_weights_logits(prepared)
    weights_only = compare(prepared.reference_logits, emulated).cosine
    report, out = runs(name)
    fp16, fp32, w8 = (report.result(t) for t in ("coreml", "coreml-fp32", "coreml-w8"))
    assert fp32.status == "passed", fp32.failures or fp32.reason
    assert fp32.parity["cosine"] > 0.99999 and fp32.parity["top1_agreement"] == 1.0
    assert fp32.parity["max_rel_abs"] < 1e-3
    assert fp16.status == "passed", fp16.failures or fp16.reason
    assert fp16.parity["cosine"] > 0.99 and fp16.parity["max_abs"] > fp32.parity["max_abs"]
    # W8 computes its recipe: PyTorch with the same int8 weights (fp16 compute is the rest)
    assert w8.parity is not None and w8.reason is None
    w8_logits = COREML_W8.runner(Artifact("coreml-w8", out / w8.artifact, "int8")).run(prepared.golden.tensors)
    assert compare(prepared.reference_logits, w8_logits).cosine == pytest.approx(w8.parity["cosine"], abs=1e-9)
    assert compare(emulated, w8_logits).cosine > 0.99, (compare(emulated, w8_logits), weights_only)
    # the pipeline judged it against the same emulation (mnv4_deploy.emulation, coremltools' size threshold)
    assert w8.emulation_parity["cosine"] > 0.99 and w8.emulation_thresholds["min_cosine"] == 0.99
    assert w8.emulation_parity["cosine"] == pytest.approx(compare(emulated, w8_logits).cosine, abs=2e-3)
    assert (w8.status == "passed") == (not w8.failures)
    if weights_only > 0.985:  # the int8 weights themselves fit the int8 bound: so must the artifact
        assert w8.status == "passed", (w8.failures, weights_only)
    elif w8.status != "passed":  # over the int8 bound: said so, exit 3, bound untouched
        assert report.exit_code == 3 and any("cosine" in f for f in w8.failures)
        assert w8.thresholds["min_cosine"] == 0.98
    assert "this run's coreml artifact" in w8.metadata["float_source"]  # one fp16 conversion shared
    assert w8.metadata["weight_quantization"]["granularity"] == "per_channel"
    assert w8.metadata["op_histogram"].get("constexpr_affine_dequantize", 0) > 0
    assert w8.metadata["spec_version"] == 7 and fp16.metadata["spec_version"] == 6  # iOS16 / iOS15 defaults
    assert fp16.metadata["compute_precision"] == "fp16" and fp32.metadata["compute_precision"] == "fp32"
    # sizes: fp32 weights twice fp16, int8 weights about half of fp16
    assert 1.8 < fp32.size_bytes / fp16.size_bytes < 2.1
    assert 0.45 < w8.size_bytes / fp16.size_bytes < 0.65
    described = describe_mlpackage(out / fp16.artifact)
    assert described["format"] == "coreml mlprogram" and described["spec_version"] == 6
    assert described["inputs"] == [{"name": "input", "shape": [1, 3, SMALL, SMALL], "type": "tensor float32"}]
    assert described["outputs"] == [{"name": "logits", "shape": [1, 1000], "type": "tensor float32"}]
    assert described["op_histogram"]["conv"] > 40 and "const" not in described["op_histogram"]
    assert described["metadata"][CONTRACT_KEY]["sha256"] == report.contract["sha256"]
    if name.startswith("hybrid"):
        assert {"softmax", "matmul"} <= set(fp16.metadata["op_histogram"])  # attention converted, not dropped
    _check_metadata(report, out)


def test_saving_again_gives_the_same_bytes(runs, tmp_path):
    """Manifest UUIDs and spec map order are normalized: re-saving a package changes nothing."""
    from mnv4_deploy.artifacts import sha256_path

    report, out = runs("conv_small")
    result = report.result("coreml")
    again = tmp_path / "again.mlpackage"
    save_package(ct.models.MLModel(str(out / result.artifact), skip_model_load=True), again)
    for rel in ("Manifest.json", "Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin"):
        assert (again / rel).read_bytes() == (out / result.artifact / rel).read_bytes(), rel
    assert sha256_path(out / result.artifact) != ""


CORE_ML_FILES = ["Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin", "Manifest.json"]


def _package_files(package: Path) -> list[str]:
    return sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file())


def test_packages_hold_only_core_ml_files(runs):
    """coremltools 9 also saves executorch_debug_handle_mapping.json for torch.export programs: not in ours."""
    report, out = runs("conv_small")
    for result in report.results:
        assert _package_files(out / result.artifact) == CORE_ML_FILES, result.target
    assert "executorch_debug_handle_mapping" not in (out / "SHA256SUMS").read_text()


def test_a_stray_file_in_a_saved_package_is_refused_and_removed(runs, monkeypatch, tmp_path):
    """Should a coremltools version write another file into the package, the export stops, leaving nothing."""
    report, out = runs("conv_small")
    mlmodel = ct.models.MLModel(str(out / report.result("coreml").artifact), skip_model_load=True)
    save = type(mlmodel).save

    def save_with_a_stray_file(self, path):
        save(self, path)
        Path(path, "debug.json").write_text("{}")

    monkeypatch.setattr(type(mlmodel), "save", save_with_a_stray_file)
    target = tmp_path / "stray.mlpackage"
    with pytest.raises(DeployError, match="coremltools wrote debug.json into the Core ML package") as err:
        save_package(mlmodel, target)
    assert "\n" not in err.value.one_line() and not target.exists()


@pytest.mark.slow
def test_conversions_in_two_processes_are_byte_identical(runs, tmp_path):
    report, _ = runs("conv_small")
    code = ("import sys, torch; torch.set_num_threads(2); from mnv4_deploy import export; "
            f"r = export('conv_small', 'coreml,coreml-w8', sys.argv[1], img_size={SMALL}, golden_count=3, "
            "log=lambda _: None); print(' '.join(x.sha256 for x in r.results))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == [report.result("coreml").sha256, report.result("coreml-w8").sha256]


# ---------------------------------------------------------------- image input
@pytest.mark.parametrize("name, targets, min_target", [
    ("conv_small", "coreml-fp32,coreml", None),  # ImageNet std differs per channel: folded into conv_stem
    (MEAN_STD_HALF, "coreml", "macOS14"),  # mean = std = 0.5: one scale fits, nothing to fold
])
def test_image_input_parity(name, targets, min_target, runs):
    report, out = runs(name, targets, image_input=True, min_target=min_target)
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    contract = Preprocess.from_dict(report.contract)
    first = report.results[0]
    image = first.metadata["image_input"]
    mean, scale = contract.pixel_mean_and_scale()
    np.testing.assert_allclose(np.asarray(image["bias"]) / image["scale"], -np.asarray(mean), rtol=1e-9)
    np.testing.assert_allclose(image["scale"] * np.asarray(image["channel_ratios"]), scale, rtol=1e-9)
    if min_target is None:
        fp32 = report.result("coreml-fp32")
        assert fp32.parity["cosine"] > 0.99999 and fp32.parity["top1_agreement"] == 1.0  # the compensation is exact
        assert fp32.parity["max_rel_abs"] < 1e-3
        assert "folded into the input channels of conv_stem" in image["compensation"]
    else:
        assert contract.std == (0.5, 0.5, 0.5) and image["compensation"].startswith("none")
        assert image["scale"] == pytest.approx(1 / 127.5) and first.metadata["spec_version"] == 8  # macOS14
    for result in report.results:
        described = describe_mlpackage(out / result.artifact)
        assert described["inputs"] == [{"name": "image", "shape": [1, 3, SMALL, SMALL], "type": "image RGB"}]
        assert described["op_histogram"].get("mul", 0) >= 1  # the image scale/bias live in the program
        assert "float pixels" in result.runtime or ON_MAC
    assert report.options["image_input"] is True
    _check_metadata(report, out)


def test_mac_runner_feeds_uint8_images(runs, monkeypatch):
    """The macOS branch, with Core ML replaced by the executor: RGB PIL images of rounded pixels."""
    import torch
    from PIL import Image

    from mnv4_deploy.converters.coreml_mil import MilExecutor

    report, out = runs("conv_small", "coreml-fp32,coreml", image_input=True, min_target=None)
    path = out / report.result("coreml").artifact
    executor, fed = MilExecutor.from_mlpackage(path), []

    class FakeMLModel:
        def __init__(self, model_path, compute_units=None):
            assert Path(model_path) == path and compute_units == ct.ComputeUnit.CPU_ONLY

        def predict(self, feeds):
            (image,) = feeds.values()
            assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (SMALL, SMALL)
            fed.append(image)
            pixels = np.asarray(image, np.float32).transpose(2, 0, 1)[None]
            return executor.run({"image": pixels})

    real_mlmodel = ct.models.MLModel

    def mlmodel(model_path, compute_units=None, skip_model_load=False):
        if skip_model_load:  # the reference executor reads the spec (it runs beside Core ML on macOS)
            return real_mlmodel(model_path, skip_model_load=True)
        return FakeMLModel(model_path, compute_units)

    from mnv4_deploy.converters.coreml import runtime

    monkeypatch.setattr(runtime, "on_macos", lambda: True)
    monkeypatch.setattr(ct.models, "MLModel", mlmodel)
    runner = COREML_FP16.runner(Artifact("coreml", path, "fp16"))
    prepared = prepare_model("conv_small", img_size=SMALL, golden_count=3, **QUIET)
    logits = runner.run(prepared.golden.tensors)
    assert "MLModel.predict" in runner.runtime and len(fed) == 3
    # what Core ML sees is the image rounded to 8 bits: judge against the model on those pixels
    pixels = np.clip(np.rint(to_pixels(prepared.golden.tensors, prepared.contract)), 0, 255)
    assert np.array_equal(np.stack([np.asarray(i, np.float32).transpose(2, 0, 1) for i in fed]), pixels)
    with torch.no_grad():
        rounded = prepared.canonical(torch.from_numpy(prepared.contract.normalize(pixels))).numpy()
    assert compare(rounded, logits).cosine > 0.99
    assert [c.runtime[:9] for c in runner.cross_checks] == ["coreml-mil"[:9]]


def test_channel_ratios_are_exact_with_and_without_a_first_conv():
    """`model'(x / r) == model(x)`: folded into the conv that reads the input, else a multiply in front."""
    import torch

    torch.manual_seed(0)
    contract = Preprocess(crop_size=(16, 16), resize_short=16)  # ImageNet mean/std: three different stds
    image = image_input_for(contract)
    x = torch.randn(2, 3, 16, 16)
    y = x / torch.tensor(image.channel_ratios).view(1, 3, 1, 1)

    class InputScaled(torch.nn.Module):  # no convolution reads the input tensor itself
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x * 2.0).mean((2, 3))

    class InputSkip(torch.nn.Module):  # a convolution reads the input, and so does a skip connection
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return (self.conv(x) + x).mean((2, 3))

    direct = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    cases = ((direct, "folded into the input channels of 0"), (InputScaled().eval(), "multiply"),
             (InputSkip().eval(), "multiply"))
    for model, expected in cases:
        changed, info = with_channel_ratios(model, x[:1].contiguous(), image)
        assert expected in info.compensation and changed is not model
        with torch.no_grad():
            torch.testing.assert_close(changed(y), model(x), rtol=1e-5, atol=1e-5)


def test_image_input_on_a_module_without_a_first_conv(tmp_path):
    """End to end through the multiply fallback; 10 classes get index labels."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x - 0.1)).mean((2, 3)))

    torch.manual_seed(0)
    contract = Preprocess(crop_size=(32, 32), resize_short=36)
    report = export(Tiny().eval(), "coreml-fp32,coreml", tmp_path, contract=contract, name="tiny", golden_count=4,
                    options=ExportOptions(image_input=True), **QUIET)
    fp32 = report.result("coreml-fp32")
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    assert fp32.parity["cosine"] > 0.99999 and "multiply in front" in fp32.metadata["image_input"]["compensation"]
    _check_metadata(report, tmp_path, num_classes=10)


# ---------------------------------------------------------------- a trained model
def test_trained_model_passes_every_target_including_int8_bounds(trained_digits, tmp_path):
    """A really trained MNv4 (conv_small_050 on digits, mean = std = 0.5): W8 fits the int8 bounds."""
    net = trained_digits
    report = export(net.model, TARGETS, tmp_path, contract=net.contract, name="digits", golden_count=8, **QUIET)
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    w8 = report.result("coreml-w8")
    assert w8.parity["cosine"] > 0.98 and w8.parity["top1_agreement"] == 1.0
    assert report.result("coreml-fp32").parity["cosine"] > 0.99999
    _check_metadata(report, tmp_path, num_classes=net.settings.num_classes)


# ---------------------------------------------------------------- options and errors
@pytest.mark.parametrize("targets, options, message", [
    ("coreml", ExportOptions(min_target="iOS99"), "--min-target 'iOS99' is not a Core ML deployment target"),
    ("coreml-fp32", ExportOptions(min_target="iOS14"), "iOS14 is too old for an ML Program"),
    ("coreml,coreml-w8", ExportOptions(min_target="iOS15"),
     "coreml-w8: --min-target iOS15 is too old for per-channel int8 weights"),
    ("coreml-w8", ExportOptions(min_target="macos12"), "needs iOS16/macOS13/watchOS9/tvOS16 or newer"),
    ("coreml", ExportOptions(dynamic_batch=True), "fixed batch of 1"),
])
def test_unsupported_options_are_refused_before_any_work(targets, options, message, tmp_path):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        export("conv_small", targets, tmp_path / "out", img_size=SMALL, options=options, **QUIET)
    assert err.value.exit_code == 2 and not (tmp_path / "out").exists()


def test_deployment_target_names_follow_coremltools():
    assert {k: int(v) for k, v in ct.target.__members__.items()} == DEPLOYMENT_TARGETS
    assert canonical_name("ios17") == "iOS17" and canonical_name("macOS10.15") == "macOS10_15"
    COREML_W8.check_options(ExportOptions(min_target="iOS16"))
    COREML_FP32.check_options(ExportOptions(min_target="tvOS15"))


def test_cli_passes_image_input_and_min_target(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import mnv4_deploy.pipeline as pipeline
    from mnv4_deploy.cli import export_app

    seen = {}

    def fake_export(model, to, out, *, options, **kwargs):
        seen["options"] = options
        raise UsageError("stop here")

    monkeypatch.setattr(pipeline, "export", fake_export)
    result = CliRunner().invoke(export_app, ["--to", "coreml", "--image-input", "--min-target", "iOS17",
                                             "--out", str(tmp_path)])
    assert result.exit_code == 2 and seen["options"] == ExportOptions(image_input=True, min_target="iOS17")
    monkeypatch.undo()
    result = CliRunner().invoke(export_app, ["--to", "coreml-w8", "--min-target", "iOS15", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "too old for per-channel int8 weights" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("damage, message", [
    ("manifest", "Manifest.json unreadable"),
    ("spec", "the Core ML model spec cannot be read"),
    ("no_spec", "model.mlmodel, named in Manifest.json, is missing"),
    ("a_file", "not an .mlpackage (a Core ML package is a directory)"),
    ("weights", "weights file weight.bin is truncated"),
])
def test_a_corrupt_package_is_a_clear_error(damage, message, runs, tmp_path):
    report, out = runs("conv_small")
    path = tmp_path / "conv_small.mlpackage"
    shutil.copytree(out / report.result("coreml").artifact, path)
    data = path / "Data" / "com.apple.CoreML"
    if damage == "manifest":
        (path / "Manifest.json").write_text("{not json")
    elif damage == "spec":
        (data / "model.mlmodel").write_bytes(b"\x00garbage" * 16)
    elif damage == "no_spec":
        (data / "model.mlmodel").unlink()
    elif damage == "a_file":
        shutil.rmtree(path)
        path.write_text("not a package")
    else:
        weights = data / "weights" / "weight.bin"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    if damage == "weights":  # the spec reads fine; opening it to run names the damage (bad input, exit 2)
        with pytest.raises(ArtifactUnreadable, match=message) as caught:
            validate_artifact(path, "conv_small", img_size=SMALL, golden_count=3, **QUIET)
        assert caught.value.exit_code == 2 and "\n" not in caught.value.one_line()
        return
    pattern = message.replace("(", r"\(").replace(")", r"\)")
    if damage == "manifest":  # through the pipeline once; the other damages straight through the converter
        with pytest.raises(UsageError, match=pattern) as err:
            validate_artifact(path, "conv_small", img_size=SMALL, golden_count=3, **QUIET)
    else:
        with pytest.raises(UsageError, match=pattern) as err:
            COREML_FP16.describe(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="corrupt|directory"):
        COREML_FP16.runner(Artifact("coreml", path, "fp16"))


def test_on_macos_core_ml_is_judged_and_the_reference_executor_cross_checks_it(monkeypatch, tmp_path):
    """Linux cannot run MLModel.predict; a stand-in 'Core ML' (the executor, off by 0.1%) shows the
    wiring: Core ML's result is judged, the executor's parity is reported beside it."""
    from mnv4_deploy.converters.coreml import runtime
    from mnv4_deploy.registry import Runner

    def fake_core_ml(path, input_name, output_name, contract, bgr):
        reference = runtime._executor_runner(path, input_name, output_name, contract)
        return Runner(run=lambda batch: reference.run(batch) * 1.001, runtime="stand-in Core ML")

    monkeypatch.setattr(runtime, "on_macos", lambda: True)
    monkeypatch.setattr(runtime, "_mlmodel_runner", fake_core_ml)
    report = export("conv_small", "coreml-fp32", tmp_path, img_size=SMALL, golden_count=2, **QUIET)
    result = report.result("coreml-fp32")
    assert result.runtime == "stand-in Core ML"
    (check,) = result.metadata["cross_checks"]
    assert check["runtime"] == runtime.LINUX_RUNTIME and check["parity"]["cosine"] > 0.99999
    assert 0 < check["vs_judged_runtime"]["max_abs"] and check["vs_judged_runtime"]["cosine"] > 0.9999
    assert json.loads((tmp_path / "report.json").read_text())["results"][0]["metadata"]["cross_checks"]
