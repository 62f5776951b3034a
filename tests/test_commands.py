"""The bench / profile / eval commands through blendstudy.cli.main, on the AdelaiDet fixture model (tests/fixtures).

The fixture's config is used through a _BASE_ file that only lowers the test size (800 -> 128) so
that the commands stay cheap on 2 loaded cores."""

from __future__ import annotations

import json

import pytest

from blendstudy import pipeline as pipeline_mod
from blendstudy.cli import main
from blendstudy.pipeline import STEPS
from conftest import fixture

SMALL_CONFIG = """_BASE_: {base}
INPUT:
  MIN_SIZE_TEST: 128
  MAX_SIZE_TEST: 200
"""


@pytest.fixture(scope="module")
def model_args(tmp_path_factory):
    root = fixture("adelaidet_blendmask_small")
    config = tmp_path_factory.mktemp("cfg") / "small.yaml"
    config.write_text(SMALL_CONFIG.format(base=root / "config.yaml"))
    return ["--config", str(config), "--weights", str(root / "model.pth"), "--device", "cpu"]


@pytest.fixture(scope="module")
def image():
    return str(fixture("adelaidet_blendmask_small", "images", "img1.png"))


def test_bench(model_args, image, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", *model_args, "--images", image, "--warmup", "0", "--output", str(out)]) == 0
    assert "baseline: mean" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["name"] == "bench_baseline"
    lat = rec["extra"]["latency"]
    assert lat["p50"] > 0 and lat["n"] == 1
    assert rec["params"]["recipe"] == "baseline" and rec["params"]["images"] == 1
    assert rec["params"]["options"]["resize"] == "pil"


def test_profile(model_args, image, capsys):
    assert main(["profile", *model_args, "--images", image, "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for step in STEPS:
        assert step in out, step
    assert "profiler overhead" in out and "input 400x600" in out


def test_bench_unknown_recipe_is_a_user_error(model_args, image, capsys):
    assert main(["bench", *model_args, "--images", image, "--recipe", "p9"]) == 2
    assert "blendstudy: unknown recipe 'p9'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from blendstudy.data.synthetic import generate_synthetic_coco

    ds = generate_synthetic_coco(tmp_path_factory.mktemp("synth"), 3, image_size=(128, 160), show_progress=False)
    return ds


@pytest.fixture(scope="module")
def synthetic_80(synthetic, tmp_path_factory):
    """The synthetic annotations with 72 extra, unused categories: the fixture model's 80 classes all
    map to a category (AP ~0: a COCO model on drawn shapes)."""
    data = json.loads(synthetic.ann_file.read_text())
    used = {c["id"] for c in data["categories"]}
    extra = [i for i in range(1, 200) if i not in used][: 80 - len(used)]
    data["categories"] += [{"id": i, "name": f"unused_{i}", "supercategory": "none"} for i in extra]
    path = tmp_path_factory.mktemp("ann") / "instances_80.json"
    path.write_text(json.dumps(data))
    return path


def _count_calls(monkeypatch):
    calls = []
    orig = pipeline_mod.Pipeline.__call__

    def counted(self, image):
        calls.append(image.shape)
        return orig(self, image)

    monkeypatch.setattr(pipeline_mod.Pipeline, "__call__", counted)
    return calls


def test_eval_writes_predictions_and_resumes(model_args, synthetic, synthetic_80, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    argv = ["eval", *model_args, "--annotations", str(synthetic_80), "--image-dir", str(synthetic.image_dir),
            "--out-dir", str(out)]
    calls = _count_calls(monkeypatch)
    assert main(argv) == 0
    assert len(calls) == 3
    preds = json.loads((out / "coco_predictions.json").read_text())
    assert isinstance(preds, list)
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} <= set(p) for p in preds)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {"bbox", "segm"}
    assert summary["metrics"]["bbox"]["num_images"] == 3
    assert summary["recipe"] == "baseline"
    assert "bbox: AP" in capsys.readouterr().out
    timing = (out / "per_image_timing.jsonl").read_text().splitlines()
    assert len(timing) == 3

    # the second run finds every image done: nothing is predicted again, same predictions
    calls.clear()
    assert main(argv) == 0
    assert calls == []
    assert json.loads((out / "coco_predictions.json").read_text()) == preds
    assert len((out / "per_image_timing.jsonl").read_text().splitlines()) == 3
    run_info = json.loads((out / "run_config.json").read_text())["run_info"]
    assert run_info["recipe"] == "baseline" and len(run_info["code"]) == 16

    # another recipe into the same folder: one clear error, the predictions kept
    capsys.readouterr()
    assert main(argv + ["--recipe", "p0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blendstudy: ") and "run_config.json" in err and "p0" in err
    assert json.loads((out / "coco_predictions.json").read_text()) == preds


def test_eval_on_fewer_categories_than_the_model_has(model_args, synthetic, tmp_path, capsys):
    out = tmp_path / "eval8"
    rc = main(["eval", *model_args, "--annotations", str(synthetic.ann_file), "--image-dir",
               str(synthetic.image_dir), "--out-dir", str(out), "--max-images", "1"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blendstudy: ") and "80 classes" in err and str(synthetic.ann_file) in err
