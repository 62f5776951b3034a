"""Report tables, figures and the results JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blendstudy.coco.evaluate import CocoMetrics
from blendstudy.measure.agreement import AccuracyReport, GateThresholds
from blendstudy.measure.latency import LatencyStats
from blendstudy.report import (
    accuracy_table,
    coco_table,
    efficiency_table,
    latency_table,
    paired_chain_table,
    pct_change,
    plot_latency_cdf,
    plot_latency_distribution,
    plot_speedup_waterfall,
    plot_stage_breakdown,
    speedup_column,
    stage_chain_table,
    to_markdown,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stats(mean: float) -> LatencyStats:
    return LatencyStats.from_samples([mean - 1, mean, mean + 1])


def test_pct_change():
    assert pct_change(39.5, 144.0) == "-72.6%"
    assert pct_change(150.0, 100.0) == "+50.0%"


def test_latency_table():
    df = latency_table([("baseline", _stats(144.0)), ("P4", _stats(39.5))])
    change = "latency change vs baseline (negative = faster)"  # the name says the sign: P4 is faster
    assert list(df.columns) == ["recipe", "latency_ms", "P50", "P90", "P99", "throughput", change]
    assert list(df[change]) == ["baseline", "-72.6%"]
    assert df["latency_ms"].tolist() == pytest.approx([144.0, 39.5])
    assert df["throughput"].tolist() == pytest.approx([1000 / 144.0, 1000 / 39.5])
    assert df["P90"].iloc[0] == pytest.approx(144.8)  # 143, 144, 145: 0.9 * 2 = 1.8 -> 144.8
    df2 = latency_table([("a", _stats(100.0)), ("b", _stats(50.0))], baseline="b")
    assert list(df2[change]) == ["+100.0%", "baseline"]  # a is slower than b: positive
    md = to_markdown(df)
    assert md.splitlines()[0].startswith("| recipe") and "-72.6%" in md


def test_stage_chain_table():
    df = stage_chain_table([("P0", "baseline", 144.0), ("P1", "fp16", _stats(72.0)), ("P2", "graph", 36.0)])
    prev, first = "latency change vs previous (negative = faster)", "latency change vs P0 (negative = faster)"
    assert list(df.columns) == ["stage", "change", "latency_ms", prev, first]
    assert list(df[prev]) == ["baseline", "-50.0%", "-50.0%"]
    assert list(df[first]) == ["baseline", "-50.0%", "-75.0%"]
    assert df["latency_ms"].tolist() == pytest.approx([144.0, 72.0, 36.0])


def test_paired_chain_table_carries_the_baseline_by_paired_ratios():
    from blendstudy.measure.latency import paired_compare

    comps = {
        "p0 vs baseline": {"median_speedup": 1.25, "ci_low": 1.2, "ci_high": 1.3},
        "p1 vs p0": {"median_speedup": 0.8, "ci_low": 0.7, "ci_high": 0.9},
        "p1 vs baseline": {"median_speedup": 1.0, "ci_low": 0.9, "ci_high": 1.1},
        # p2: no pair measured; p3 only against the baseline
        "p3 vs baseline": {"median_speedup": 2.0, "ci_low": 1.9, "ci_high": 2.1},
    }
    df = paired_chain_table(["baseline", "p0", "p1", "p2", "p3"], comps, baseline_ms=100.0)
    assert list(df["stage"]) == ["baseline", "p0", "p1", "p2", "p3"]
    assert df["paired_ms"].tolist()[:3] == pytest.approx([100.0, 80.0, 100.0])
    assert np.isnan(df["paired_ms"][3]) and df["paired_ms"][4] == pytest.approx(50.0)
    prev, base = speedup_column("previous"), speedup_column("baseline")
    assert prev == "paired speedup vs previous (above 1 = faster)"
    assert df[prev][2] == pytest.approx(0.8) and df[f"{prev} CI"][2] == "0.70-0.90"
    assert df[f"{base} CI"][3] == "not paired" and np.isnan(df[prev][4])
    # a real PairedComparison object is read the same way as its dict
    def slow(_):
        return sum(range(20000))

    def fast(_):
        return sum(range(2000))

    pc = paired_compare(slow, fast, {"a": None, "b": None, "c": None}, "cpu", rounds=2, warmup=0, progress=False)
    df2 = paired_chain_table(["a", "b"], {"b vs a": pc}, baseline_ms=10.0)
    assert df2[speedup_column("a")][1] == pytest.approx(pc.median_speedup)
    assert df2["paired_ms"][1] == pytest.approx(10.0 / pc.median_speedup)
    with pytest.raises(ValueError):
        paired_chain_table([], comps, 1.0)


def _report(**kw) -> AccuracyReport:
    base = dict(images=2, ref_instances=3, test_instances=3, matched=3, mean_box_iou=0.995,
                min_box_iou=0.98, mean_score_diff=0.001, max_score_diff=0.002, class_agreement=1.0,
                mean_mask_iou=None, unmatched_ref=0, unmatched_test=0, lost_above=0)
    base.update(kw)
    return AccuracyReport(**base)


def test_accuracy_table():
    reports = {"npu vs cpu": _report(), "fp16 vs cpu": _report(lost_above=1, unmatched_ref=1), "new": _report()}
    for name in ("npu vs cpu", "fp16 vs cpu"):
        reports[name].decide(GateThresholds())
    df = accuracy_table(reports)
    assert list(df["comparison"]) == ["npu vs cpu", "fp16 vs cpu", "new"]
    # the table reads the verdict decided with the params' thresholds; it never decides one itself
    assert list(df["gate"]) == ["pass", "FAIL", "undecided"]
    assert df["lost_above_0.3"].tolist() == [0, 1, 0]
    assert "-" in to_markdown(df)  # the missing mask IoU


def _metrics(iou_type: str, ap: float) -> CocoMetrics:
    vals = dict.fromkeys(["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "ARmax", "ARs",
                          "ARm", "ARl"], ap)
    return CocoMetrics(iou_type=iou_type, **vals, num_images=5000, num_gt_images=5000,
                       num_detections=27180, detections_per_image=5.436, score_thresh=0.3, max_dets=100)


def test_coco_table_with_reference():
    ref = {"model card": {"bbox": 44.8, "segm": 39.5}, "seed": {"bbox": 38.0, "segm": 34.2}}
    df = coco_table({"bbox": _metrics("bbox", 38.5), "segm": _metrics("segm", 34.0)}, reference=ref)
    for col in ("AP", "AP50", "APl", "AP model card", "diff model card", "AP seed", "dets/image",
                "score_thresh", "max_dets", "images", "detections"):
        assert col in df.columns
    assert df["AP model card"].tolist() == [44.8, 39.5]
    assert df["diff seed"].tolist() == pytest.approx([0.5, -0.2])
    assert df["dets/image"].tolist() == pytest.approx([5.436, 5.436])
    assert list(coco_table({"x": _metrics("bbox", 1.0)}).columns)[:3] == ["run", "iou_type", "AP"]


def _is_png(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    samples = {"P0": list(144 + rng.normal(0, 3, 20)), "P4": list(39.5 + rng.normal(0, 1, 20)),
               "single": [50.0]}
    assert _is_png(plot_latency_distribution(samples, tmp_path / "dist.png"))
    assert _is_png(plot_latency_cdf(samples, tmp_path / "sub" / "cdf.png"))
    breakdown = {"P0": {"preprocess": 10.0, "backbone": 100.0, "postprocess": 34.0},
                 "P4": {"preprocess": 4.0, "backbone": 30.0, "postprocess": 5.5}}
    assert _is_png(plot_stage_breakdown(breakdown, tmp_path / "stages.png"))
    out = plot_speedup_waterfall([("P0", 144.0), ("P1", 110.0), ("P2", 115.0), ("P4", 39.5)],
                                 tmp_path / "waterfall.png")
    assert isinstance(out, Path) and _is_png(out)


def test_efficiency_table_hand_computed():
    df = efficiency_table(2e9, 1e11, {"baseline": 100.0, "p4": 50.0})
    assert list(df["recipe"]) == ["baseline", "p4"]
    assert df["GFLOP/s"].tolist() == pytest.approx([20.0, 40.0])
    assert df["fraction of peak"].tolist() == pytest.approx([0.2, 0.4])
