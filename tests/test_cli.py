"""The CLI as a user runs it: predict over mixed good/bad inputs, the weight check, clear errors."""

import json
from pathlib import Path

import pytest

import blendstudy.config
from blendstudy.cli import main
from blendstudy.data.synthetic import write_bad_images
from conftest import fixture

FIXTURE = fixture("adelaidet_blendmask_small")
SMALL = ["--config", str(FIXTURE / "config.yaml"), "--weights", str(FIXTURE / "model.pth"), "--device", "cpu"]


def test_predict_reports_and_skips_bad_images_and_writes_the_rest(tmp_path, capsys):
    bad = write_bad_images(tmp_path / "inputs")
    out = tmp_path / "out.json"
    inputs = [str(bad[k]) for k in ("missing", "empty", "truncated", "not_image", "gray", "rgba", "gray16",
                                    "exif_rotated")]
    rc = main(["predict", *SMALL, "--score-thresh", "0.3", "--output-json", str(out), "--quiet", *inputs])
    err = capsys.readouterr().err
    assert rc == 1
    data = json.loads(out.read_text())
    for kind in ("missing", "empty", "truncated", "not_image"):
        path = str(bad[kind])
        assert any(path in line for line in err.splitlines()), kind
        assert any(path in v for v in data["errors"].values()), kind
    assert {bad[k].name for k in ("gray", "rgba", "gray16", "exif_rotated")} == set(data["images"])
    from PIL import Image

    for k in ("gray", "rgba", "gray16"):
        rec = data["images"][bad[k].name]
        w, h = Image.open(bad[k]).size
        assert (rec["height"], rec["width"]) == (h, w)
    rec = data["images"][bad["exif_rotated"].name]
    w, h = Image.open(bad["exif_rotated"]).size
    assert (rec["height"], rec["width"]) == (w, h)  # EXIF orientation 6 swaps the sides


def test_predict_visualize_and_random_weights_warning(tmp_path, capsys):
    out = tmp_path / "o.json"
    rc = main(["predict", "--config", str(FIXTURE / "config.yaml"), "--device", "cpu", "--score-thresh", "0.5",
               "--output-json", str(out), "--visualize", str(tmp_path / "vis"), "--quiet",
               str(FIXTURE / "images" / "img2.png")])
    assert rc == 0
    assert "RANDOM weights" in capsys.readouterr().err
    png = (tmp_path / "vis" / "img2.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_only_bad_inputs_is_one_clear_error(tmp_path, capsys):
    rc = main(["predict", *SMALL, "--output-json", str(tmp_path / "o.json"), str(tmp_path / "nope.jpg")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert any("nope.jpg" in line for line in err)


def test_weights_check_passes_and_fails(tmp_path, capsys):
    assert main(["weights", "--config", str(FIXTURE / "config.yaml"), "--weights", str(FIXTURE / "model.pth")]) == 0
    assert "coverage 100.0%" in capsys.readouterr().out
    rc = main(["weights", "--config", "BlendMask/R_50_1x", "--weights", str(FIXTURE / "model.pth"),
               "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "shape mismatch" in out and str(FIXTURE / "model.pth") in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


@pytest.mark.parametrize("argv, needle", [
    (["predict", "--config", "fcos_dcn.yaml", "--output-json", "x.json", "in.png"], "deformable FCOS towers"),
    (["predict", "--config", "BlendMask/R_50_1x", "--device", "npu", "--output-json", "x.json", "in.png"], "npu"),
    (["weights", "--config", "BlendMask/R_50_1x", "--weights", "/nonexistent/w.pth"], "/nonexistent/w.pth"),
])
def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.png").write_bytes((FIXTURE / "images" / "img0.png").read_bytes())
    base = Path(blendstudy.config.__file__).parent / "configs" / "BlendMask" / "R_50_1x.yaml"
    (tmp_path / "fcos_dcn.yaml").write_text(f"_BASE_: {base}\nMODEL:\n  FCOS:\n    USE_DEFORMABLE: True\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blendstudy: ") and needle in err
