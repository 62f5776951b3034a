"""`python -m blendstudy compare`: the study's paired A/B and gate for two SPECs (recipe names or
offline models), on the embedded default (the tiny synthetic model) and a few small synthetic images."""

from __future__ import annotations

import json

import pytest

from blendstudy.cli import main
from blendstudy.data.synthetic import synthetic_split

MODEL = ["--config", "BlendMask/Tiny_synthetic", "--weights", "tiny_synthetic"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(annotations JSON, image folder) of three small synthetic images."""
    ann, image_dir = synthetic_split(tmp_path_factory.mktemp("data"), "compare", 3, seed=2, image_size=(96, 128))
    return ann, image_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A dynamic-size ONNX export of the tiny model (the export command)."""
    out = tmp_path_factory.mktemp("onnx") / "tiny"
    assert main(["export", *MODEL, "--dynamic", "--out", str(out)]) == 0
    return out


def _compare(images, a, b, tmp_path, *extra, model=MODEL):
    ann, image_dir = images
    out = tmp_path / "out.json"
    code = main(["compare", *model, "--device", "cpu", "--images", str(image_dir), "--annotations", str(ann),
                 "--a", a, "--b", b, "--rounds", "1", "--warmup", "0", "--output", str(out), *extra])
    return code, out


def test_two_recipes(images, tmp_path, capsys):
    code, out = _compare(images, "baseline", "p0", tmp_path)
    assert code == 0
    res = json.loads(out.read_text())
    assert {"speedup", "ci_low", "ci_high", "gate", "a", "b"} <= set(res)
    assert res["a"] == "baseline" and res["b"] == "p0"
    assert res["ci_low"] <= res["speedup"] <= res["ci_high"] and res["speedup"] > 0
    assert res["gate"] in ("pass", "fail", "inconclusive") and res["gate"] == res["accuracy"]["verdict"]
    assert set(res["ap_change_ci"]) == {"bbox", "segm"}  # annotations given: the AP check with its interval
    assert res["comparison"]["labels"] == ["000001.png", "000002.png", "000003.png"]
    printed = capsys.readouterr().out
    assert "p0 vs baseline: speedup" in printed and f"gate: {res['gate']}" in printed


def test_an_offline_model_with_a_recipes_host_switches(images, exported, tmp_path):
    spec = f"onnxruntime:{exported}@best_cpu"
    code, out = _compare(images, "baseline", spec, tmp_path)
    assert code == 0
    res = json.loads(out.read_text())
    assert res["b"] == spec and res["speedup"] > 0 and res["gate"] in ("pass", "fail", "inconclusive")
    assert "onnxruntime" in json.dumps(res["pipelines"][spec]["dense"]).lower()


@pytest.mark.parametrize("spec, message", [
    ("nosuch", "unknown recipe 'nosuch'"),
    ("tensorflow:somewhere@best_cpu", "unknown backend 'tensorflow'"),
    ("onnxruntime:{missing}@best_cpu", "no such model directory"),
    ("onnxruntime@best_cpu", "expected a recipe name or BACKEND:MODEL_DIR@RECIPE"),
])
def test_a_bad_spec_is_one_line_and_exit_2(images, tmp_path, capsys, spec, message):
    spec = spec.format(missing=tmp_path / "nowhere")
    code, out = _compare(images, "baseline", spec, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and err.startswith("blendstudy: ") and message in err


def test_a_stale_export_is_one_line_and_exit_2(images, exported, tmp_path, capsys):
    # exported from the trained checkpoint, compared with random weights: the checkpoint differs
    code, _ = _compare(images, "baseline", f"onnxruntime:{exported}@best_cpu", tmp_path,
                       model=["--config", "BlendMask/Tiny_synthetic"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "exported from checkpoint sha256" in err and "re-export" in err
