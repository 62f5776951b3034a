"""P6's bf16 variant: the fp32 export run by OpenVINO in bfloat16 where the CPU computes it natively."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blendstudy import device as device_mod
from blendstudy.backends import export_onnx, load_backend
from blendstudy.data.synthetic import render_synthetic_image
from blendstudy.device import no_native_bf16
from blendstudy.loading import load_pipeline
from blendstudy.measure.agreement import compare_runs
from blendstudy.pipeline import Pipeline
from blendstudy.study.offline import bf16_plan
from blendstudy.study.offline_int8 import runs_on
from blendstudy.study.offline_stage import bf16_variant

CONFIG, WEIGHTS = "BlendMask/Tiny_synthetic", "tiny_synthetic"
CPU = torch.device("cpu")


def test_auto_makes_the_variant_only_where_bf16_is_native(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_flags", lambda *a: ["avx2", "avx512f", "avx512_vnni"])
    assert "neither AVX512_BF16 nor AMX-BF16" in no_native_bf16(CPU)
    assert bf16_plan("auto", CPU) == (False, no_native_bf16(CPU))
    assert bf16_plan(True, CPU)[0] and bf16_plan(False, CPU) == (False, "offline.bf16 is false")
    monkeypatch.setattr(device_mod, "cpu_flags", lambda *a: ["avx2", "amx_bf16"])
    assert no_native_bf16(CPU) is None and bf16_plan("auto", CPU) == (True, None)
    assert "CPU-runtime setting" in no_native_bf16(torch.device("meta"))
    assert bf16_plan("auto", torch.device("meta"))[0] is False


def test_the_variant_reuses_the_static_export_and_only_openvino_runs_it():
    static = {"kind": "static", "dirs": {"96x128": "/m/static_96x128"}, "export_s": 3.0}
    dynamic = {"kind": "dynamic", "dirs": {"dynamic": "/m/dynamic"}, "export_s": 2.0}
    nncf = {"kind": "static-nncf", "dirs": {}, "int8": True}
    v = bf16_variant([dynamic, static, nncf])
    assert v == {**static, "kind": "static-bf16", "precision": "bf16", "export_s": 0.0}
    assert bf16_variant([dynamic, nncf])["kind"] == "dynamic-bf16" and bf16_variant([nncf]) is None
    assert runs_on("openvino", v) and not runs_on("onnxruntime", v) and not runs_on("om", v)


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline(CONFIG, WEIGHTS, "cpu")


def test_openvino_bf16_runs_the_fp32_export_and_keeps_the_detections(tiny, tmp_path):
    """The backend reports the precision OpenVINO compiled with (bf16 where native, as asked), and the
    bf16 pipeline finds the fp32 pipeline's confident instances again at the gate's IoU."""
    pytest.importorskip("openvino")
    model_dir = export_onnx(tiny.pipeline.model, tmp_path / "dynamic", dynamic=True, config_name=CONFIG,
                            checkpoint=WEIGHTS).model_dir
    fp32 = load_backend("openvino", model_dir)
    bf16 = load_backend("openvino", model_dir, properties={"INFERENCE_PRECISION_HINT": "bf16"})
    assert fp32.precision == "f32"
    if no_native_bf16(CPU) is None:
        assert bf16.precision == "bf16"
    p = tiny.pipeline
    runs = {}
    for name, backend in (("fp32", fp32), ("bf16", bf16)):
        pipe = Pipeline(p.model, p.min_size, p.max_size, p.options, dense=backend)
        runs[name] = {str(i): pipe(np.ascontiguousarray(render_synthetic_image(1, i).image[:, :, ::-1]))
                      for i in range(3)}
    report = compare_runs(runs["fp32"], runs["bf16"], 0.5, 0.3)
    assert report.ref_instances > 0 and report.lost_above == 0
