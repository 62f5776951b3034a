"""The dense part as an offline model: ONNX export, onnxruntime / OpenVINO / om (stand-in) backends,
their checks, and the pipeline fed by a backend instead of the three model calls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from blendstudy.backends import (
    REL_TOLERANCE,
    BackendError,
    ExportError,
    atc_command,
    export_onnx,
    load_backend,
    ort_providers,
    parse_npu_smi,
    quantize_onnx,
    soc_version,
)
from blendstudy.backends.common import network_record, scale_errors
from blendstudy.checkpoint import file_sha256
from blendstudy.config import load_config
from blendstudy.data.synthetic import render_synthetic_image
from blendstudy.loading import SHIPPED_WEIGHTS, load_pipeline
from blendstudy.model import build_model
from blendstudy.optimize import build_pipeline
from blendstudy.pipeline import Pipeline

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONFIG = "BlendMask/Tiny_synthetic"
WEIGHTS = "tiny_synthetic"
CHECK_SEED = 2024  # images neither trained (seed 0) nor validated (seed 1) on, as tests/test_tiny_model.py
TRAIN_SEED = 0     # calibration images come from the training split only


def _bgr(seed: int, index: int) -> np.ndarray:
    return np.ascontiguousarray(render_synthetic_image(seed, index).image[:, :, ::-1])


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def dense_pipeline(eager: Pipeline, backend) -> Pipeline:
    """The eager pipeline's model, sizes and options, with the backend where the network was."""
    return Pipeline(eager.model, eager.min_size, eager.max_size, eager.options, dense=backend)


# ---- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return load_pipeline(CONFIG, WEIGHTS, "cpu")


@pytest.fixture(scope="module")
def image():
    return _bgr(CHECK_SEED, 0)


@pytest.fixture(scope="module")
def batch(tiny, image):
    return tiny.pipeline.prepare(image)[0]


@pytest.fixture(scope="module")
def exports(tiny, batch, tmp_path_factory):
    """The tiny model exported at the image's padded size (traced on the image) and dynamic."""
    root = tmp_path_factory.mktemp("exports")
    model = tiny.pipeline.model
    h, w = batch.shape[-2:]
    fixed = export_onnx(model, root / "fixed", input_size=(h, w), config_name=CONFIG, checkpoint=WEIGHTS,
                        sample=batch)
    dynamic = export_onnx(model, root / "dynamic", dynamic=True, config_name=CONFIG, checkpoint=WEIGHTS)
    return {"fixed": fixed, "dynamic": dynamic}


def eager_dense(model, batch):
    with torch.no_grad():
        feats = model.extract_features(batch)
        return model.predict_head(feats), model.compute_bases(feats)


def assert_dense_close(got, ref, tol: float = REL_TOLERANCE) -> float:
    (gh, gb), (rh, rb) = got, ref
    worst = scale_errors(rb, gb)["max_rel"]
    for field in ("logits", "box_reg", "ctrness", "top_feats"):
        g, r = getattr(gh, field), getattr(rh, field)
        assert len(g) == len(r)
        for a, b in zip(g, r):
            assert a.dtype == torch.float32 and a.shape == b.shape
            worst = max(worst, scale_errors(b, a)["max_rel"])
    assert gh.box_towers == []
    assert worst <= tol, worst
    return worst


def assert_same_detections(a, b, box_atol: float = 0.05) -> None:
    assert len(a) == len(b) > 0
    assert torch.equal(a.classes, b.classes)
    assert torch.allclose(a.boxes, b.boxes, atol=box_atol, rtol=0)
    assert torch.allclose(a.scores, b.scores, atol=1e-4, rtol=0)
    inter = (a.masks & b.masks).flatten(1).sum(1).float()
    union = (a.masks | b.masks).flatten(1).sum(1).float().clamp(min=1)
    assert float((inter / union).min()) > 0.99


# ---- export -------------------------------------------------------------------------------------
def test_export_fixed_writes_checked_onnx_and_record(exports, batch):
    res = exports["fixed"]
    onnx.checker.check_model(str(res.onnx_path))
    meta = json.loads(res.meta_path.read_text())
    h, w = batch.shape[-2:]
    assert meta["input_size"] == [h, w] and meta["dynamic"] is False
    assert meta["checkpoint_sha256"] == file_sha256(SHIPPED_WEIGHTS[WEIGHTS])
    assert meta["config"] == CONFIG and meta["network"] == network_record(load_config(CONFIG))
    assert meta["levels"] == ["p3", "p4", "p5", "p6"]
    assert meta["output_names"][:2] == ["logits_p3", "logits_p4"] and meta["output_names"][-1] == "bases"
    assert len(meta["output_names"]) == 4 * 4 + 1
    assert meta["opset"] == 17 and meta["exporter"].startswith("torchscript")
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["onnx"] == onnx.__version__
    assert meta["pixel_mean"] == pytest.approx([103.53, 116.28, 123.675]) and meta["pixel_std"] == [1.0] * 3
    assert meta["export_seconds"] > 0 and meta["verification"]["passed"] is True
    assert res.max_rel <= REL_TOLERANCE
    graph = onnx.load(str(res.onnx_path))
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == meta["output_names"]


def test_export_dynamic_verifies_two_sizes(exports):
    meta = exports["dynamic"].meta
    assert meta["dynamic"] is True and meta["input_size"] is None
    assert len(meta["verification"]["sizes"]) == 2 and meta["verification"]["passed"] is True
    dims = onnx.load(str(exports["dynamic"].onnx_path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == [1, 3, "height", "width"]


def test_export_refuses_deformable_configs_and_models(tiny, tmp_path):
    with pytest.raises(ExportError) as exc:
        export_onnx(tiny.pipeline.model, tmp_path, input_size=(64, 64), config_name="BlendMask/R_101_dcni3_5x")
    msg = _one_line(exc)
    assert msg.startswith("BlendMask/R_101_dcni3_5x: MODEL.RESNETS.DEFORM_ON_PER_STAGE=[False, True, True, True]")
    assert "not exportable until" in msg
    # a deformable model given without its config is recognised by its layers
    cfg = load_config(CONFIG, overrides={"MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, True]})
    with pytest.raises(ExportError) as exc:
        export_onnx(build_model(cfg), tmp_path, input_size=(64, 64))
    msg = _one_line(exc)
    assert "DeformBottleneckBlock" in msg and "not exportable until" in msg
    assert not (tmp_path / "model.onnx").exists()


def test_export_rejects_bad_sizes(tiny, tmp_path):
    model = tiny.pipeline.model
    with pytest.raises(ExportError) as exc:
        export_onnx(model, tmp_path, input_size=(100, 64))
    assert "multiples of 32" in _one_line(exc)
    with pytest.raises(ExportError) as exc:
        export_onnx(model, tmp_path)
    assert "input_size" in _one_line(exc)


def test_export_fails_loudly_past_tolerance_and_backend_refuses_it(tiny, tmp_path):
    with pytest.raises(ExportError) as exc:
        export_onnx(tiny.pipeline.model, tmp_path, input_size=(64, 64), config_name=CONFIG, rel_tolerance=0.0)
    assert "differs from eager PyTorch" in _one_line(exc)
    assert json.loads((tmp_path / "model.json").read_text())["verification"]["passed"] is False
    with pytest.raises(BackendError) as exc:
        load_backend("onnxruntime", tmp_path)
    assert "failed its verification" in _one_line(exc)


# ---- engines against eager ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engine_matches_eager_dense_part(engine, kind, exports, tiny, batch):
    if engine == "openvino":
        pytest.importorskip("openvino")
    backend = load_backend(engine, exports[kind].model_dir, config=CONFIG, checkpoint=WEIGHTS)
    assert backend.session_seconds > 0 and backend.providers
    d = backend.describe()
    assert d["backend"] == engine and d["dynamic"] == (kind == "dynamic") and d["runtime_version"]
    assert_dense_close(backend(batch), eager_dense(tiny.pipeline.model, batch))
    if kind == "dynamic":
        other = batch[:, :, :320, :448].contiguous()
        assert_dense_close(backend(other), eager_dense(tiny.pipeline.model, other))


@pytest.mark.parametrize("engine,kind", [("onnxruntime", "fixed"), ("onnxruntime", "dynamic"),
                                         ("openvino", "dynamic")])
def test_pipeline_with_backend_gives_eager_detections(engine, kind, exports, tiny, image):
    if engine == "openvino":
        pytest.importorskip("openvino")
    backend = load_backend(engine, exports[kind].model_dir)
    eager = tiny.pipeline(image)
    got = dense_pipeline(tiny.pipeline, backend)(image)
    assert_same_detections(got, eager)


def test_lazy_attention_export_leaves_the_attention_to_the_host(tiny, image, tmp_path):
    """With lazy attention the graph stops at the bbox towers; the host computes the attention at
    the detections after NMS (BlendMask.attend): the same detections as the eager lazy pipeline."""
    res = export_onnx(tiny.pipeline.model, tmp_path / "lazy", dynamic=True, config_name=CONFIG,
                      checkpoint=WEIGHTS, lazy_attention=True)
    assert res.meta["lazy_attention"] is True
    assert any(n.startswith("box_towers_") for n in res.meta["output_names"])
    assert not any(n.startswith("top_feats_") for n in res.meta["output_names"])
    backend = load_backend("onnxruntime", res.model_dir)
    head, _ = backend(tiny.pipeline.prepare(image)[0])
    assert head.top_feats == [] and len(head.box_towers) == len(head.logits)
    lazy_eager = build_pipeline(tiny.pipeline, "baseline+lazy_attention")
    assert_same_detections(dense_pipeline(tiny.pipeline, backend)(image), lazy_eager(image))


def test_fixed_size_pads_smaller_batches_and_refuses_larger(exports, tiny, batch):
    backend = load_backend("onnxruntime", exports["fixed"].model_dir)
    h, w = batch.shape[-2:]
    small = batch[:, :, : h - 32, : w - 64].contiguous()
    padded = torch.nn.functional.pad(small, (0, 64, 0, 32))
    head, bases = backend(small)
    assert bases.shape[-2:] == (h // 4, w // 4)
    assert_dense_close((head, bases), eager_dense(tiny.pipeline.model, padded))
    with pytest.raises(BackendError) as exc:
        backend(torch.nn.functional.pad(batch, (0, 32)))
    assert "larger than the exported fixed size" in _one_line(exc)
    with pytest.raises(BackendError) as exc:
        backend(batch.half())
    assert "float32" in _one_line(exc)


def test_dynamic_refuses_sizes_off_the_divisibility(exports, batch):
    backend = load_backend("onnxruntime", exports["dynamic"].model_dir)
    with pytest.raises(BackendError) as exc:
        backend(batch[:, :, :100, :96].contiguous())
    assert "not a multiple of 32" in _one_line(exc)


# ---- load_backend's checks ----------------------------------------------------------------------
def _copy_export(res, dest: Path) -> Path:
    shutil.copytree(res.model_dir, dest)
    return dest


def test_load_backend_names_what_is_wrong(exports, tmp_path):
    cases = []
    with pytest.raises(BackendError) as exc:
        load_backend("onnxruntime", tmp_path / "nowhere")
    cases.append((exc, "no such model directory"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError) as exc:
        load_backend("onnxruntime", tmp_path / "empty")
    cases.append((exc, "model.json: missing"))
    bad = _copy_export(exports["fixed"], tmp_path / "bad")
    (bad / "model.json").write_text("{not json")
    with pytest.raises(BackendError) as exc:
        load_backend("onnxruntime", bad)
    cases.append((exc, "unreadable"))
    nograph = _copy_export(exports["fixed"], tmp_path / "nograph")
    (nograph / "model.onnx").unlink()
    with pytest.raises(BackendError) as exc:
        load_backend("openvino", nograph)
    cases.append((exc, "model.onnx: missing"))
    with pytest.raises(BackendError) as exc:
        load_backend("tvm", exports["fixed"].model_dir)
    cases.append((exc, "unknown backend 'tvm'"))
    other = tmp_path / "other.pth"
    other.write_bytes(b"not the tiny checkpoint")
    with pytest.raises(BackendError) as exc:
        load_backend("onnxruntime", exports["fixed"].model_dir, checkpoint=str(other))
    cases.append((exc, f"exported from checkpoint sha256 {file_sha256(SHIPPED_WEIGHTS[WEIGHTS])[:12]}"))
    with pytest.raises(BackendError) as exc:
        load_backend("onnxruntime", exports["fixed"].model_dir, checkpoint="random")
    cases.append((exc, "none (random weights)"))
    with pytest.raises(BackendError) as exc:
        load_backend("onnxruntime", exports["fixed"].model_dir, config="BlendMask/R_50_1x")
    cases.append((exc, "exported from BlendMask/Tiny_synthetic but BlendMask/R_50_1x differs in MODEL.RESNETS"))
    for exc, expected in cases:
        msg = _one_line(exc)
        assert expected in msg, msg
    assert "re-export with `python -m blendstudy export" in str(cases[-1][0].value)
    # a decode-only change (score threshold) does not make the export stale
    cfg = load_config(CONFIG, overrides={"MODEL.FCOS.INFERENCE_TH_TEST": 0.5})
    assert load_backend("onnxruntime", exports["fixed"].model_dir, config=cfg).dynamic is False


def test_load_backend_without_the_engine(exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError) as exc:
        load_backend("onnxruntime", exports["fixed"].model_dir)
    assert "onnxruntime is not installed: pip install onnxruntime" in _one_line(exc)
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "openvino.runtime", None)
    with pytest.raises(BackendError) as exc:
        load_backend("openvino", exports["fixed"].model_dir)
    assert "openvino is not installed" in _one_line(exc)


def test_ort_providers():
    assert ort_providers("cpu", ["CPUExecutionProvider"]) == [("CPUExecutionProvider", {})]
    assert ort_providers("auto", ["CPUExecutionProvider"]) == [("CPUExecutionProvider", {})]
    assert ort_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == \
        ("CUDAExecutionProvider", {"device_id": 1})
    trt = ort_providers("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert [p for p, _ in trt] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers("auto", ["CANNExecutionProvider", "CPUExecutionProvider"])[0][0] == "CANNExecutionProvider"
    with pytest.raises(BackendError) as exc:
        ort_providers("cuda", ["CPUExecutionProvider"])
    assert "install onnxruntime-gpu" in _one_line(exc)
    with pytest.raises(BackendError) as exc:
        ort_providers("npu:0", ["CPUExecutionProvider"])
    assert "onnxruntime-cann" in _one_line(exc)


# ---- Ascend: ATC command, SoC, the om backend through a stand-in ais_bench -----------------------
def test_atc_command_and_soc_version():
    assert atc_command("out/model.onnx", "out/model.om", "Ascend910B3", (384, 512)) == [
        "atc", "--model=out/model.onnx", "--framework=5", "--output=out/model", "--soc_version=Ascend910B3",
        "--input_shape=images:1,3,384,512"]
    assert atc_command("m.onnx", "m", "Ascend310P3", (1, 3, 64, 64), precision_mode="force_fp32")[-1] == \
        "--precision_mode=force_fp32"
    with pytest.raises(BackendError):
        atc_command("m.onnx", "m", "", (64, 64))
    table = textwrap.dedent("""\
        +---------------------------+---------------+----------------------------------------------------+
        | NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
        | Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
        +===========================+===============+====================================================+
        | 0     910B3               | OK            | 93.6        38                0    / 0             |
        | 0                         | 0000:C1:00.0  | 0           0    / 0          3162 / 65536         |
        """)
    assert parse_npu_smi(table) == "Ascend910B3"
    assert parse_npu_smi("no npu here") is None
    soc = soc_version()
    assert soc is None or soc.startswith("Ascend")


EMULATION = Path(__file__).resolve().parents[1] / "emulation" / "npu"
AIS_MODULES = ("ais_bench", "ais_bench.infer", "ais_bench.infer.interface", "emulated_ascend")


@pytest.fixture
def fake_ais_bench(monkeypatch):
    """The emulated Ascend stack's ais_bench (an InferSession over ONNX Runtime, emulation/npu/site) on
    sys.path; its atc on PATH (with this interpreter, which has onnx)."""
    for mod in AIS_MODULES:
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.syspath_prepend(str(EMULATION / "site"))
    monkeypatch.setenv("PATH", f"{EMULATION / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("BLENDSTUDY_EMULATE_PYTHON", sys.executable)
    monkeypatch.setenv("BLENDSTUDY_EMULATE_NPUS", "4")
    yield
    for mod in AIS_MODULES:
        sys.modules.pop(mod, None)


def _om_dir(exports, tmp_path) -> Path:
    """A copy of the fixed-size export with the model.om the emulated atc compiles from it."""
    d = _copy_export(exports["fixed"], tmp_path / "om")
    h, w = json.loads((d / "model.json").read_text())["input_size"]
    proc = subprocess.run(atc_command(d / "model.onnx", d / "model", "Ascend910B3", (h, w)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and (d / "model.om").is_file(), proc.stderr
    return d


def test_om_backend_through_stand_in_session(fake_ais_bench, exports, tiny, batch, image, tmp_path):
    d = _om_dir(exports, tmp_path)
    backend = load_backend("om", d, device="npu:3", config=CONFIG, checkpoint=WEIGHTS)
    assert backend.providers == ["npu:3"] and backend.input_size == tuple(batch.shape[-2:])
    assert_dense_close(backend(batch), eager_dense(tiny.pipeline.model, batch))
    assert_same_detections(dense_pipeline(tiny.pipeline, backend)(image), tiny.pipeline(image))
    assert backend.session.device_id == 3
    backend.close()
    assert backend.session.freed


def test_om_backend_errors(fake_ais_bench, exports, tmp_path, monkeypatch):
    with pytest.raises(BackendError) as exc:
        load_backend("om", exports["fixed"].model_dir)
    msg = _one_line(exc)
    assert "model.om: missing" in msg and "atc --model=" in msg and "--framework=5" in msg
    d = _om_dir(exports, tmp_path)
    with pytest.raises(BackendError) as exc:
        load_backend("om", d, device="cpu")
    assert "Ascend NPU" in _one_line(exc)
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", None)
    with pytest.raises(BackendError) as exc:
        load_backend("om", d)
    assert "ais_bench is not installed" in _one_line(exc)


# ---- int8 -----------------------------------------------------------------------------------------
def test_quantize_int8_from_training_images(exports, tiny, tmp_path):
    pipe = tiny.pipeline
    calib = [pipe.prepare(_bgr(TRAIN_SEED, i))[0] for i in range(2)]
    out = quantize_onnx(exports["dynamic"].model_dir, calib, tmp_path / "int8")
    meta = json.loads((out / "model.json").read_text())
    q = meta["quantization"]
    assert q["calibration_batches"] == 2 and q["activations"] == "int8"
    assert set(q["errors_vs_fp32"]) == set(meta["output_names"])
    backend = load_backend("onnxruntime", out, checkpoint=WEIGHTS)
    head, bases = backend(calib[0])
    assert bases.shape == (1, 4) + tuple(s // 4 for s in calib[0].shape[-2:])
    assert all(torch.isfinite(t).all() for t in head.logits)
    with pytest.raises(ExportError):
        quantize_onnx(out, calib, tmp_path / "int8-again")


# ---- the big config -------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_r101_random_weights_small(tmp_path):
    lp = load_pipeline("BlendMask/R_101_3x", None, "cpu", warn_random=False)
    res = export_onnx(lp.pipeline.model, tmp_path, input_size=(256, 320), config_name="BlendMask/R_101_3x")
    assert res.meta["checkpoint_sha256"] is None and res.max_rel <= REL_TOLERANCE
    assert res.meta["levels"] == ["p3", "p4", "p5", "p6", "p7"]
    backend = load_backend("onnxruntime", tmp_path, config="BlendMask/R_101_3x", checkpoint="random")
    x = res.meta["trace_size"]
    batch = torch.zeros(1, 3, x[0], x[1])
    assert_dense_close(backend(batch), eager_dense(lp.pipeline.model, batch))
