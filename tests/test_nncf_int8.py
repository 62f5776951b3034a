"""int8 through NNCF: plain PTQ and accuracy control on a dynamic export, the fixed-size copies per
padded size, what the CPU plugin runs, and the backends' refusals."""

from __future__ import annotations

import numpy as np
import pytest

from blendstudy.backends import BackendError, ExportError, export_onnx, load_backend
from blendstudy.backends.common import read_meta
from blendstudy.backends.engines import OpenVINOBackend
from blendstudy.backends.nncf_int8 import quantize_openvino, specialize
from blendstudy.data.synthetic import render_synthetic_image
from blendstudy.loading import load_pipeline
from blendstudy.pipeline import Pipeline
from blendstudy.study.offline_int8 import int8_methods, runs_on

pytest.importorskip("openvino")
pytest.importorskip("nncf")

CONFIG, WEIGHTS = "BlendMask/Tiny_synthetic", "tiny_synthetic"


def _bgr(seed: int, index: int) -> np.ndarray:
    return np.ascontiguousarray(render_synthetic_image(seed, index).image[:, :, ::-1])


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline(CONFIG, WEIGHTS, "cpu")


@pytest.fixture(scope="module")
def calibration(tiny):
    """Two training-split images (seed 0) prepared as the pipeline prepares them."""
    return [tiny.pipeline.prepare(_bgr(0, i))[0].numpy() for i in range(2)]


@pytest.fixture(scope="module")
def dynamic(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("nncf")
    return export_onnx(tiny.pipeline.model, root / "dynamic", dynamic=True, config_name=CONFIG,
                       checkpoint=WEIGHTS).model_dir


@pytest.fixture(scope="module")
def plain(dynamic, calibration, tmp_path_factory):
    return quantize_openvino(dynamic, calibration, tmp_path_factory.mktemp("nncf") / "plain")


def _detections(tiny, backend, image):
    pipe = Pipeline(tiny.pipeline.model, tiny.pipeline.min_size, tiny.pipeline.max_size, tiny.pipeline.options,
                    dense=backend)
    return pipe(image)


def test_plain_ptq_writes_an_int8_ir_that_openvino_serves(plain, tiny):
    meta = read_meta(plain)
    q = meta["quantization"]
    assert q["tool"] == "nncf.quantize" and q["max_drop"] is None
    assert meta["model_file"] == "model.xml" and (plain / "model.xml").is_file()
    assert any(k.split()[0] in ("u8", "i8") for k in q["cpu_kernels"]), q["cpu_kernels"]  # int8 kernels ran
    backend = load_backend("openvino", plain, config=CONFIG, checkpoint=WEIGHTS)
    image = _bgr(2024, 0)
    ref, got = tiny.pipeline(image), _detections(tiny, backend, image)
    assert len(got) > 0 and abs(len(got) - len(ref)) <= max(2, len(ref) // 4)


def test_static_copy_per_padded_size(plain, calibration, tmp_path):
    h, w = calibration[0].shape[-2:]
    fixed = specialize(plain, (h, w), tmp_path / f"{h}x{w}")
    meta = read_meta(fixed)
    assert meta["dynamic"] is False and meta["input_size"] == [h, w]
    backend = load_backend("openvino", fixed)
    assert backend.input_size == (h, w)
    head, bases = backend(__import__("torch").from_numpy(calibration[0]))
    assert bases.shape[-2:] == (h // 4, w // 4)


def test_accuracy_control_calls_the_metric_and_records_it(dynamic, calibration, tmp_path, tiny):
    seen = []
    meta = read_meta(dynamic)

    def validate(compiled, items):
        seen.append(len(items))
        backend = OpenVINOBackend(dynamic, meta, "cpu", compiled=compiled)
        return float(sum(len(_detections(tiny, backend, _bgr(0, i))) for i in items))

    out = quantize_openvino(dynamic, calibration, tmp_path / "ac", validate=validate, validation_items=[0, 1],
                            max_drop=1000.0, metric="detections")
    q = read_meta(out)["quantization"]
    assert seen and q["tool"] == "nncf.quantize_with_accuracy_control"
    assert q["metric"] == "detections" and q["max_drop"] == 1000.0 and isinstance(q["kept_fp32"], list)


def test_refusals(plain, dynamic, calibration, tmp_path):
    with pytest.raises(BackendError, match="OpenVINO IR"):
        load_backend("onnxruntime", plain)
    with pytest.raises(ExportError, match="already quantized"):
        quantize_openvino(plain, calibration, tmp_path / "again")
    with pytest.raises(ExportError, match="calibration batch"):
        quantize_openvino(dynamic, [], tmp_path / "none")


def test_int8_methods_and_who_runs_what():
    assert int8_methods(True) == ["onnxruntime", "nncf", "nncf-accuracy"]
    assert int8_methods(False) == [] and int8_methods(None) == [] and int8_methods("nncf") == ["nncf"]
    with pytest.raises(ValueError, match="offline.int8: unknown method"):
        int8_methods(["fp8"])
    assert runs_on("openvino", {"kind": "static-nncf-ac"}) and not runs_on("onnxruntime", {"kind": "static-nncf"})
    assert runs_on("onnxruntime", {"kind": "static-int8"}) and not runs_on("openvino", {"kind": "dynamic-int8"})
    assert runs_on("om", {"kind": "static"}) and not runs_on("om", {"kind": "dynamic"})


def test_export_quantize_int8_cli(tmp_path, capsys):
    from PIL import Image

    from blendstudy.cli import main

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(2):
        Image.fromarray(np.ascontiguousarray(_bgr(0, i)[:, :, ::-1])).save(calib / f"train_{i}.png")
    (calib / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "int8"
    rc = main(["export", "--config", CONFIG, "--weights", WEIGHTS, "--out", str(out), "--input-size", "384", "512",
               "--quantize", "int8", "--calibration-images", str(calib)])
    err = capsys.readouterr().err
    assert rc == 0 and "broken.png" in err and len(err.strip().splitlines()) == 1
    meta = read_meta(out)
    assert meta["input_size"] == [384, 512] and meta["quantization"]["calibration_batches"] == 2
    assert (tmp_path / "int8-fp32" / "model.onnx").is_file() and not (tmp_path / "int8-dynamic-int8").exists()
    assert main(["export", "--config", CONFIG, "--out", str(tmp_path / "x"), "--dynamic", "--quantize", "int8"]) == 2
