"""The roofline: FLOPs per part as the pipeline executes them, peaks, rows, table and figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blendstudy import optimize
from blendstudy.loading import load_pipeline
from blendstudy.measure.profile import count_flops
from blendstudy.measure.roofline import (
    Peaks,
    gemm_peak,
    mean_stage_flops,
    part_totals,
    recipe_precision,
    rows,
    stage_flops,
)
from blendstudy.roofline_report import network_and_host, plot_roofline, roofline_frame, roofline_summary


@pytest.fixture(scope="module")
def loaded():
    return load_pipeline("BlendMask/Tiny_synthetic", "tiny_synthetic", "cpu")


def _image(h: int = 300, w: int = 410, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


PEAKS = Peaks({"fp32": 100e9, "bf16": 200e9, "int8": 400e9}, "AVX2", ["avx2"], 1024)


def test_stage_flops_add_up_to_the_whole_count(loaded):
    image = _image()
    per = stage_flops(loaded.pipeline, image)
    assert per["backbone+FPN"] > 0 and per["FCOS head"] > 0 and per["basis module"] > 0
    assert per.get("resize", 0.0) == 0.0 and per.get("mask paste", 0.0) == 0.0
    assert sum(per.values()) == pytest.approx(count_flops(loaded.pipeline, image))


def test_switches_change_the_count_where_they_act(loaded):
    image = _image()
    plain = stage_flops(loaded.pipeline, image)
    lazy = stage_flops(optimize.build_pipeline(loaded.pipeline, ["lazy_attention"]), image)
    assert lazy["FCOS head"] < plain["FCOS head"]                 # the attention conv only at detections
    assert lazy["backbone+FPN"] == plain["backbone+FPN"]
    padded = stage_flops(optimize.build_pipeline(loaded.pipeline, ["pad64"]), image)
    assert padded["backbone+FPN"] > plain["backbone+FPN"]        # 64-padding adds pixels to a 32-padded input


def test_mean_over_images_and_part_totals(loaded):
    a, b = _image(seed=1), _image(240, 320, seed=2)
    mean = mean_stage_flops(loaded.pipeline, [a, b])
    one, two = stage_flops(loaded.pipeline, a), stage_flops(loaded.pipeline, b)
    assert mean["backbone+FPN"] == pytest.approx((one["backbone+FPN"] + two["backbone+FPN"]) / 2)
    parts = part_totals({"read": 1.0, "resize": 2.0, "backbone+FPN": 3.0, "mask paste": 4.0, "result extraction": 5.0})
    assert parts == {"host pre": 3.0, "backbone+FPN": 3.0, "host post": 9.0}


def test_rows_against_the_precisions_peak():
    ms = {"resize": 2.0, "backbone+FPN": 10.0, "FCOS head": 5.0, "mask paste": 1.0}
    flops = {"backbone+FPN": 0.5e9, "FCOS head": 0.25e9}
    out = {r.part: r for r in rows("p4", ms, flops, {"backbone+FPN": "bf16"}, PEAKS)}
    assert out["backbone+FPN"].achieved_gflops == pytest.approx(50.0)
    assert out["backbone+FPN"].peak_gflops == pytest.approx(200.0)
    assert out["backbone+FPN"].fraction_of_peak == pytest.approx(0.25)
    assert out["FCOS head"].precision == "fp32" and out["FCOS head"].fraction_of_peak == pytest.approx(0.5)
    assert out["host pre"].precision == "-" and out["host pre"].fraction_of_peak is None
    assert out["host post"].ms == 1.0


def test_a_part_over_its_peak_is_flagged_not_hidden():
    (row,) = rows("x", {"FCOS head": 1.0}, {"FCOS head": 1e9}, {}, PEAKS)
    assert row.fraction_of_peak == pytest.approx(10.0) and row.over_peak
    assert "over peak" in roofline_frame([row])["note"].iloc[0]
    (ok,) = rows("x", {"FCOS head": 100.0}, {"FCOS head": 1e9}, {}, PEAKS)
    assert not ok.over_peak and roofline_frame([ok])["note"].iloc[0] == ""


def test_recipe_precision():
    assert recipe_precision(["half"], "bf16")["FCOS head"] == "bf16"
    assert recipe_precision(["mixed_half"], "bf16") == {"backbone+FPN": "bf16", "basis module": "bf16"}
    assert recipe_precision(["mixed_half", "half_towers"], "fp16")["FCOS head"] == "fp16"
    assert recipe_precision(["pad64"], "bf16") == {}


def test_measured_peaks_are_positive():
    fp32 = gemm_peak(torch.device("cpu"), "fp32", n=128, repeats=2)
    assert fp32 and fp32 > 0
    ort_fp32 = pytest.importorskip("blendstudy.measure.roofline").ort_fp32_gemm_peak(n=128, repeats=2)
    assert ort_fp32 is None or ort_fp32 > 0
    from blendstudy.device import no_native_bf16
    from blendstudy.measure.roofline import openvino_gemm_peak

    pytest.importorskip("openvino")
    assert openvino_gemm_peak("fp32", n=128, repeats=2) > 0
    ov_bf16 = openvino_gemm_peak("bf16", n=128, repeats=2)
    assert ov_bf16 > 0 if no_native_bf16(torch.device("cpu")) is None else (ov_bf16 is None or ov_bf16 > 0)
    # the bf16 peak is the best of torch's and OpenVINO's (the offline bf16 backend's kernels)
    assert gemm_peak(torch.device("cpu"), "bf16", n=128, repeats=2) > 0
    pytest.importorskip("onnxruntime")
    int8 = gemm_peak(torch.device("cpu"), "int8", n=128, repeats=2)
    assert int8 and int8 > 0


def test_table_summary_and_figure(tmp_path):
    ms = {"resize": 2.0, "backbone+FPN": 10.0, "FCOS head": 5.0, "mask paste": 1.0}
    flops = {"backbone+FPN": 0.5e9, "FCOS head": 0.25e9}
    rs = rows("p4", ms, flops, {}, PEAKS) + rows("best", ms, flops, {"FCOS head": "int8"}, PEAKS)
    table = roofline_frame(rs)
    assert list(table.columns)[:3] == ["pipeline", "part", "precision"]
    assert table.loc[(table["pipeline"] == "p4") & (table["part"] == "host pre"), "% of peak"].item() == "-"
    summary = roofline_summary(rs).set_index("pipeline")
    assert summary.loc["p4", "GEMM parts' % of peak"] == pytest.approx(50.0)  # 0.75 GFLOP in 15 ms of a 100 peak
    assert summary.loc["p4", "slowest part"] == "backbone+FPN"
    png = plot_roofline(rs, tmp_path / "roofline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_network_and_host_says_which_side_makes_the_difference():
    """A bf16 PyTorch network against an offline fp32 one, the same host work: the sentence puts each
    network's time, precision and share of its peak side by side and blames the network."""
    torch_rows = rows("best_cpu", {"resize": 2.0, "backbone+FPN": 10.0, "FCOS head": 2.0, "mask paste": 4.0},
                      {"backbone+FPN": 1.6e9, "FCOS head": 0.2e9}, {"backbone+FPN": "bf16", "FCOS head": "bf16"},
                      PEAKS)
    offline = rows("openvino static", {"resize": 2.0, "dense network": 30.0, "mask paste": 4.0},
                   {"dense network": 1.8e9}, {"dense network": "fp32"}, PEAKS)
    line = network_and_host(torch_rows + offline, "best_cpu", "openvino static")
    # 1.8 GFLOP at the 200 GFLOP/s bf16 peak is 9 ms of 12 ms (75%); at the 100 fp32 peak 18 of 30 ms (60%)
    assert "best_cpu: network 12.0 ms in bf16, 75% of its peak, host 6.0 ms" in line
    assert "openvino static: network 30.0 ms in fp32, 60% of its peak, host 6.0 ms" in line
    assert "network +18.0 ms, host +0.0 ms -- the network accounts for most" in line
    slower_host = rows("x", {"resize": 40.0, "dense network": 12.0}, {"dense network": 1.8e9}, {}, PEAKS)
    assert "the host work accounts" in network_and_host(torch_rows + slower_host, "best_cpu", "x")
    assert network_and_host(offline, "best_cpu", "openvino static") is None
