"""The Horizon BPU handoff building blocks: march table, op check, hb_mapper YAML,
calibration files, NV12 emulation and the bundle README. Fast: tiny models and images."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from mnv4_deploy.converters.bpu import nv12
from mnv4_deploy.converters.bpu.calibration import (MIN_IMAGES, calibration_file_name, read_calibration_file,
                                        write_calibration_files)
from mnv4_deploy.converters.bpu.march import check_onnx_ops, get_march, load_march_table
from mnv4_deploy.converters.bpu.readme import NOT_MEASURED, render_readme
from mnv4_deploy.converters.bpu.yaml_config import hb_config_dict, render_hb_config, validate_hb_config
from mnv4_deploy.errors import UsageError
from mnv4_deploy.preprocess import Preprocess

# The two kinds of contract MNv4 checkpoints carry (values as timm's pretrained_cfg states them).
IMAGENET = Preprocess.from_timm_cfg({"input_size": (3, 224, 224), "crop_pct": 0.875,
                                     "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
HALF = Preprocess.from_timm_cfg({"input_size": (3, 256, 256), "crop_pct": 0.95,
                                 "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})


# ---- hb_mapper YAML ---------------------------------------------------------------------
def _render(pre: Preprocess = IMAGENET, **kw) -> str:
    return render_hb_config(pre, "./mobilenetv4_conv_medium_deploy.onnx", "bayes-e", **kw)


def test_yaml_reproduces_the_published_imagenet_mean_and_scale():
    text = _render()
    assert "  mean_value: 123.675 116.28 103.53\n" in text
    assert "  scale_value: 0.01712475 0.017507 0.01742919\n" in text
    cfg = yaml.safe_load(text)
    assert list(cfg) == ["model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters"]
    inputs = cfg["input_parameters"]
    assert (inputs["input_type_rt"], inputs["input_type_train"], inputs["input_layout_train"]) == ("nv12", "rgb", "NCHW")
    assert inputs["norm_type"] == "data_mean_and_scale"
    assert inputs["input_shape"] == "1x3x224x224"
    assert cfg["model_parameters"]["layer_out_dump"] is False
    assert cfg["compiler_parameters"] == {"compile_mode": "latency", "debug": False, "optimize_level": "O3"}
    validate_hb_config(cfg)


def test_yaml_for_a_half_mean_std_contract():
    cfg = yaml.safe_load(render_hb_config(HALF, "m.onnx", "bernoulli2", input_name="x"))
    mean = [float(v) for v in cfg["input_parameters"]["mean_value"].split()]
    scale = [float(v) for v in cfg["input_parameters"]["scale_value"].split()]
    assert mean == [127.5] * 3
    assert scale == pytest.approx([1 / 127.5] * 3, rel=1e-6)
    assert cfg["input_parameters"]["input_shape"] == "1x3x256x256"
    validate_hb_config(cfg)


def test_yaml_is_byte_identical_when_rendered_twice():
    assert _render() == _render()
    assert _render(input_type_rt="rgb") == _render(input_type_rt="rgb")


def test_featuremap_input_has_no_preprocessing_node():
    cfg = yaml.safe_load(_render(input_type_rt="featuremap"))
    inputs = cfg["input_parameters"]
    assert inputs["norm_type"] == "no_preprocess"
    assert inputs["input_type_train"] == "featuremap"
    assert "mean_value" not in inputs and "scale_value" not in inputs


@pytest.mark.parametrize("rt", ["rgb", "bgr", "yuv444"])
def test_other_image_runtime_types_state_a_layout(rt):
    cfg = yaml.safe_load(_render(input_type_rt=rt))
    assert cfg["input_parameters"]["input_layout_rt"] == "NHWC"
    validate_hb_config(cfg)


def test_gray_runtime_input_cannot_feed_an_rgb_model():
    with pytest.raises(UsageError, match="input_type_rt.*gray"):
        _render(input_type_rt="gray")


def test_input_space_and_range_is_written_only_when_asked():
    assert "input_space_and_range" not in _render()
    cfg = yaml.safe_load(_render(input_space_and_range="bt601_video"))
    assert cfg["input_parameters"]["input_space_and_range"] == "bt601_video"


def test_unknown_key_is_refused_with_its_name():
    cfg = hb_config_dict(IMAGENET, "m.onnx", "bayes-e")
    cfg["input_parameters"]["mean_valeu"] = "1 2 3"
    with pytest.raises(UsageError, match="input_parameters.mean_valeu") as err:
        validate_hb_config(cfg)
    assert "mean_value" in err.value.hint  # the allowed keys are listed


@pytest.mark.parametrize("section, key, bad, allowed", [
    ("compiler_parameters", "optimize_level", "O4", "O0, O1, O2, O3"),
    ("compiler_parameters", "compile_mode", "fast", "latency, bandwidth"),
    ("input_parameters", "input_type_rt", "nv21", "nv12"),
    ("input_parameters", "norm_type", "mean_std", "data_mean_and_scale"),
    ("calibration_parameters", "calibration_type", "minmax", "default, mix, kl, max, load, skip"),
    ("calibration_parameters", "cal_data_type", "float16", "float32, uint8"),
    ("model_parameters", "march", "bayes-x", "bayes-e"),
])
def test_bad_enum_is_refused_with_key_and_allowed_values(section, key, bad, allowed):
    cfg = copy.deepcopy(hb_config_dict(IMAGENET, "m.onnx", "bayes-e"))
    cfg[section][key] = bad
    with pytest.raises(UsageError) as err:
        validate_hb_config(cfg)
    assert f"{section}.{key}" in str(err.value) and allowed in str(err.value)


def test_missing_section_and_unknown_section_are_refused():
    cfg = hb_config_dict(IMAGENET, "m.onnx", "bayes-e")
    with pytest.raises(UsageError, match="missing section compiler_parameters"):
        validate_hb_config({k: v for k, v in cfg.items() if k != "compiler_parameters"})
    with pytest.raises(UsageError, match="unknown section compiler_params"):
        validate_hb_config({**cfg, "compiler_params": {}})


# ---- calibration files ------------------------------------------------------------------
def _images(tmp_path: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        size = (300 + 20 * i, 260)  # W x H, not square: exercises resize + centre crop
        path = tmp_path / "src" / f"img {i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_calibration_files_are_raw_float32_nchw_and_read_back_exactly(tmp_path):
    images = _images(tmp_path, 3)
    result = write_calibration_files(images, IMAGENET, tmp_path / "calibration_data_rgb_f32")
    h, w = IMAGENET.crop_size
    assert [p.name for p in result.files] == ["0000_img_0.rgb", "0001_img_1.rgb", "0002_img_2.rgb"]
    assert all(p.stat().st_size == 3 * h * w * 4 for p in result.files)
    back = read_calibration_file(result.files[1], (1, 3, h, w))
    np.testing.assert_array_equal(back[0], IMAGENET.load_pixels(images[1]))
    assert back.min() >= 0 and back.max() <= 255 and back.max() > 1  # 0-255, not normalized
    assert len(result.sha256) == 64
    assert str(MIN_IMAGES) in result.warning and "3 calibration" in result.warning


def test_calibration_is_deterministic_and_refuses_a_dirty_directory(tmp_path):
    images = _images(tmp_path, 2)
    first = write_calibration_files(images, IMAGENET, tmp_path / "a")
    second = write_calibration_files(images, IMAGENET, tmp_path / "b")
    assert first.sha256 == second.sha256
    with pytest.raises(UsageError, match="not empty"):
        write_calibration_files(images, IMAGENET, tmp_path / "a")
    again = write_calibration_files(images[:1], IMAGENET, tmp_path / "a", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [again.files[0].name]


def test_featuremap_calibration_is_normalized(tmp_path):
    images = _images(tmp_path, 1)
    result = write_calibration_files(images, HALF, tmp_path / "fm", normalized=True)
    back = read_calibration_file(result.files[0], HALF.input_shape)
    np.testing.assert_allclose(back[0], HALF.load_image(images[0]), rtol=0, atol=1e-6)


def test_calibration_names_are_safe_and_ordered():
    assert calibration_file_name(12, "/x/ILSVRC2012 val (1).JPEG") == "0012_ILSVRC2012_val_1_.rgb"


# ---- NV12 -------------------------------------------------------------------------------
def _flat(rgb, h=4, w=6) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=np.float32)[:, None, None], (3, h, w)).copy()


# ITU-R BT.601: full range (JFIF) and video range (16-235 / 16-240) Y, Cb, Cr of the primaries.
@pytest.mark.parametrize("space, rgb, yuv", [
    ("regular", (255, 0, 0), (76, 85, 255)),
    ("regular", (0, 255, 0), (150, 44, 21)),
    ("regular", (0, 0, 255), (29, 255, 107)),
    ("regular", (255, 255, 255), (255, 128, 128)),
    ("regular", (0, 0, 0), (0, 128, 128)),
    ("bt601_video", (255, 0, 0), (81, 90, 240)),
    ("bt601_video", (0, 255, 0), (145, 54, 34)),
    ("bt601_video", (0, 0, 255), (41, 240, 110)),
    ("bt601_video", (255, 255, 255), (235, 128, 128)),
    ("bt601_video", (0, 0, 0), (16, 128, 128)),
])
def test_known_colours_map_to_bt601_yuv(space, rgb, yuv):
    frame = nv12.rgb_to_nv12(_flat(rgb), space)
    assert frame.shape == (6, 6) and frame.dtype == np.uint8
    assert (frame[:4] == yuv[0]).all()
    assert (frame[4:, 0::2] == yuv[1]).all() and (frame[4:, 1::2] == yuv[2]).all()


@pytest.mark.parametrize("space", nv12.SPACES)
def test_constant_colours_round_trip_within_two_levels(space):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 128, 128)]
    colours += [tuple(c) for c in np.random.default_rng(1).integers(0, 256, (50, 3))]
    for rgb in colours:
        image = _flat(rgb)
        assert np.abs(nv12.rgb_nv12_roundtrip(image, space) - image).max() <= 2.0, rgb


def test_smooth_image_round_trips_closely_and_noise_stays_bounded():
    yy, xx = np.mgrid[0:64, 0:96].astype(np.float32)
    smooth = np.stack([xx * 2, yy * 3, 255 - xx - yy])  # gradients of 1-3 levels per pixel
    error = np.abs(nv12.rgb_nv12_roundtrip(smooth) - smooth)
    assert error.max() <= 4.0 and error.mean() <= 1.5
    noise = np.random.default_rng(2).uniform(0, 255, (2, 3, 16, 16)).astype(np.float32)
    out = nv12.rgb_nv12_roundtrip(noise)  # a batch works too
    assert out.shape == noise.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert np.abs(out - noise).mean() < 60  # 4:2:0 loses chroma detail, not everything
    # luma is not subsampled: the Y plane is the rounded luma of the input
    y_plane = nv12.rgb_to_nv12(noise[0])[:16]
    np.testing.assert_array_equal(y_plane, np.clip(np.rint(nv12.rgb_to_yuv444(noise[0])[0]), 0, 255))


def test_odd_sizes_and_bad_options_are_refused():
    with pytest.raises(UsageError, match="even"):
        nv12.rgb_to_nv12(np.zeros((3, 5, 4)))
    with pytest.raises(UsageError, match="even"):
        nv12.rgb_nv12_roundtrip(np.zeros((3, 4, 7)))
    with pytest.raises(UsageError, match="colour range"):
        nv12.rgb_to_nv12(np.zeros((3, 4, 4)), space="bt709")
    with pytest.raises(UsageError, match="NV12 buffer"):
        nv12.nv12_to_rgb(np.zeros((5, 4), np.uint8))


# ---- op check ---------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits=(), opset=11, ir_version=7) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def _tensor(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name, shape):
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def _cnn(opset=11, ir_version=7) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "c"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [_tensor("x", [1, 3, 8, 8])], [_tensor("y", [1, 10])],
                  [_init("w", [4, 3, 3, 3]), _init("fc_w", [10, 4]), _init("fc_b", [10])], opset, ir_version)


def test_small_cnn_stays_on_the_x5_bpu():
    check = check_onnx_ops(_cnn(), "bayes-e")
    assert check.ok and check.off_bpu == () and check.problems() == []


def test_x3_runs_flatten_on_the_cpu():
    check = check_onnx_ops(_cnn(), "bernoulli2")
    assert [(n.name, n.kind) for n in check.off_bpu] == [("flatten", "cpu")]


def test_gelu_softmax_and_attention_matmul_leave_the_x3_bpu():
    s = 1.4142135
    nodes = [
        helper.make_node("Constant", [], ["sqrt2"], value=numpy_helper.from_array(np.array(s, np.float32))),
        helper.make_node("Div", ["x", "sqrt2"], ["d"], name="gelu_div"),
        helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
        helper.make_node("MatMul", ["x", "k"], ["qk"], name="attn_qk"),       # activation x activation
        helper.make_node("Softmax", ["qk"], ["sm"], name="attn_softmax", axis=-1),
        helper.make_node("MatMul", ["sm", "wv"], ["y"], name="proj"),         # activation x weight: fine
        helper.make_node("Add", ["e", "y"], ["z"], name="out_add"),
    ]
    model = _model(nodes, [_tensor("x", [1, 4, 8, 8]), _tensor("k", [1, 4, 8, 8])], [_tensor("z", [1, 4, 8, 8])],
                   [_init("wv", [8, 8])])
    x3 = check_onnx_ops(model, "bernoulli2")
    assert {n.name: n.kind for n in x3.off_bpu} == {"gelu_erf": "cpu", "attn_qk": "cpu", "attn_softmax": "conditional"}
    assert any("attn_qk (MatMul)" in line for line in x3.problems())
    x5 = check_onnx_ops(model, "bayes-e")  # X5 runs Erf and activation MatMul on the BPU
    assert {n.name: n.kind for n in x5.off_bpu} == {"attn_softmax": "conditional"}


def test_x3_maps_shared_head_attention_matmul():
    nodes = [helper.make_node("MatMul", ["q", "k"], ["y"], name="qk")]  # 1xBxMxK @ 1x1xKxN
    model = _model(nodes, [_tensor("q", [1, 4, 16, 8]), _tensor("k", [1, 1, 8, 16])], [_tensor("y", [1, 4, 16, 16])])
    assert check_onnx_ops(model, "bernoulli2").ok


def test_constant_subgraphs_are_folded_and_unnamed_nodes_get_a_name():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["w", "shape"], ["w2"]),   # constants only: folded
        helper.make_node("Reshape", ["x", "shape2"], ["y"]),   # activation: CPU on X3
    ]
    model = _model(nodes, [_tensor("x", [1, 4, 2, 2])], [_tensor("y", [1, 16]), _tensor("w2", [2, 2])],
                   [_init("w", [4]), numpy_helper.from_array(np.array([2, 2], np.int64), "shape"),
                    numpy_helper.from_array(np.array([1, 16], np.int64), "shape2")])
    check = check_onnx_ops(model, "bernoulli2")
    assert [(n.name, n.op_type) for n in check.off_bpu] == [("Reshape#2", "Reshape")]


def test_opset_17_and_a_new_ir_version_are_flagged():
    check = check_onnx_ops(_cnn(opset=17, ir_version=8), "bayes-e")
    assert not check.opset_ok and not check.ir_version_ok and not check.ok
    assert "opset 17" in check.problems()[0] and "10, 11" in check.problems()[0]
    assert check.off_bpu == ()


def test_op_check_reads_a_file_and_refuses_an_unknown_march(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_cnn(), str(path))
    assert check_onnx_ops(path, "bayes-e").ok
    with pytest.raises(UsageError, match="unknown BPU march 'nash-x'"):
        check_onnx_ops(path, "nash-x")


# ---- march table ------------------------------------------------------------------------
def test_shipped_march_table_loads():
    table = load_march_table()
    assert {"bernoulli2", "bayes-e"} <= set(table)
    x5 = get_march("bayes-e", table)
    assert 11 in x5.onnx_opsets and "RDK X5" in x5.boards
    assert "Erf" in get_march("bernoulli2", table).cpu_ops


def _table_text() -> str:
    return (Path(__file__).resolve().parents[1] / "quant_configs" / "bpu_marches.yaml").read_text()


def test_march_table_typo_key_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text(_table_text().replace("    max_ir_version: 7", "    max_ir_verison: 7", 1))
    with pytest.raises(UsageError, match="marches.bernoulli2.max_ir_verison"):
        load_march_table(bad)
    bad.write_text(_table_text().replace("schema_version:", "schema_versoin:"))
    with pytest.raises(UsageError, match="unknown key schema_versoin"):
        load_march_table(bad)


def test_march_table_refuses_an_op_in_two_lists(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text(_table_text().replace("bpu_ops: [Add,", "bpu_ops: [Erf, Add,", 1))
    with pytest.raises(UsageError, match="Erf is listed in both"):
        load_march_table(bad)


# ---- README -----------------------------------------------------------------------------
def _readme(**kw) -> str:
    args = dict(model_name="mobilenetv4_conv_small", onnx_file="model.onnx", config_file="hb_config.yaml",
                march="bayes-e", input_name="input", input_shape=(1, 3, 224, 224), preprocess=IMAGENET,
                output_model_file_prefix="mnv4_small_224x224_nv12")
    args.update(kw)
    return render_readme(**args)


def test_readme_has_exact_commands_results_and_board_preprocessing():
    text = _readme(results={"float_top1": 73.756, "int8_cosine": 0.99912}, calibration_count=120,
                   march="bernoulli2", op_check=check_onnx_ops(_cnn(), "bernoulli2"))
    assert "hb_mapper checker --model-type onnx --march bernoulli2 --model model.onnx --input-shape input 1x3x224x224" in text
    assert "hb_mapper makertbin --config hb_config.yaml --model-type onnx" in text
    assert "| Float ONNX, contract preprocessing: top-1 (%) | 73.76 |" in text
    assert "| Emulated int8 vs float: logits cosine | 0.99912 |" in text
    assert f"| Emulated int8 (ONNX QDQ, NV12 input): top-1 (%) | {NOT_MEASURED} |" in text
    assert "short side is 256 px (bicubic" in text and "Centre-crop 224x224" in text
    assert "BT.601 full range" in text and "123.675 116.28 103.53" in text
    assert "flatten (Flatten): cpu" in text
    assert _readme(results={"float_top1": 73.756}) == _readme(results={"float_top1": 73.756})


def test_readme_refuses_unknown_result_keys_and_a_mismatched_op_check():
    with pytest.raises(UsageError, match="float_top_1"):
        _readme(results={"float_top_1": 70.0})
    with pytest.raises(UsageError, match="op check is for bernoulli2"):
        _readme(op_check=check_onnx_ops(_cnn(), "bernoulli2"))
