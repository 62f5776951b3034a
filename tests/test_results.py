"""The results schema (blendstudy.results) and its JSON codec (blendstudy.jsonable): every record a
notebook writes reads back as the same types, with NaN/None and nested records intact."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from blendstudy.coco.evaluate import CocoMetrics
from blendstudy.jsonable import from_jsonable, to_jsonable
from blendstudy.measure.agreement import AccuracyReport, ApComparison, GateThresholds
from blendstudy.measure.latency import LatencyStats, paired_timers
from blendstudy.report import plot_speedup_waterfall
from blendstudy.results import (
    RECORD_TYPES,
    ExtrasResult,
    LatencyResult,
    StageResult,
    load_all_results,
    load_results,
    save_results,
)
from blendstudy.runtime import RuntimeConfig, SweepResult
from blendstudy.study.protocol import NOTEBOOKS


def _stats(mean: float) -> LatencyStats:
    return LatencyStats.from_samples([mean - 1, mean, mean + 1])


def _metrics(iou_type: str, ap: float) -> CocoMetrics:
    vals = dict.fromkeys(["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "ARmax", "ARs",
                          "ARm", "ARl"], ap)
    vals["APs"] = math.nan  # no small objects: pycocotools' -1
    return CocoMetrics(iou_type=iou_type, **vals, num_images=5, num_gt_images=5,
                       num_detections=27, detections_per_image=5.4, score_thresh=0.05, max_dets=100)


def test_to_jsonable():
    @dataclasses.dataclass
    class Row:
        x: float
        arr: np.ndarray

    obj = {"row": Row(math.nan, np.arange(3)), "t": torch.tensor([1.5]), "p": Path("a/b"),
           "n": np.float32(2.5), "s": {3, 1}, "dev": torch.device("cpu"), 4: (1, 2)}
    out = to_jsonable(obj)
    assert out == {"row": {"x": None, "arr": [0, 1, 2]}, "t": [1.5], "p": "a/b", "n": 2.5, "s": [1, 3],
                   "dev": "cpu", "4": [1, 2]}
    json.dumps(out)


def test_every_notebook_has_a_record_type():
    assert set(NOTEBOOKS) <= set(RECORD_TYPES)


def _stage() -> StageResult:
    rep = AccuracyReport(images=2, ref_instances=3, test_instances=3, matched=3, mean_box_iou=0.995,
                         min_box_iou=0.98, mean_score_diff=0.001, max_score_diff=0.002, class_agreement=1.0,
                         mean_mask_iou=None, unmatched_ref=0, unmatched_test=0, lost_above=0,
                         ap=ApComparison(2, {"bbox": 50.0, "segm": math.nan}, {"bbox": 49.9, "segm": math.nan}))
    rep.decide(GateThresholds(max_ap_change=0.3))
    pc = paired_timers(lambda i: 10.0, lambda i: 5.0, ["a.png", "b.png"], rounds=2, warmup=0,
                       n_boot=50, progress=False, name_a="baseline", name_b="p0")
    out = StageResult(stage="p0", previous="baseline", comparisons={"p0 vs baseline": pc},
                      accuracy={"p0 vs baseline": rep}, gate={"p0 vs baseline": bool(rep.gate)}, weights="w.pth")
    out.add_latency(LatencyResult("p0", _stats(10.0), [9.0, 10.0, 11.0], ["a", "b", "a"], 30.0,
                                  process={"pid": 1, "torch_threads": 2, "cpu_affinity": [0, 1]}))
    setting = RuntimeConfig("threads=1", env={"OMP_NUM_THREADS": "1"}, torch_threads=1)
    out.best = SweepResult(setting, None, 9.0, 9.5, 12.0)
    out.extras = ExtrasResult(gate={"best": True})
    return out


def test_a_stage_record_reads_back_as_the_same_types(tmp_path):
    fig = plot_speedup_waterfall([("P0", 144.0), ("P4", 39.5)], tmp_path / "figs" / "w.png")
    path = save_results(tmp_path, "p0_resize", _stage(), {"score_thresh": 0.3}, {"waterfall": fig},
                        environment={"device": "cpu"}, effective_runtime={"stage": {"pid": 7}})
    assert path == tmp_path / "p0_resize.json"
    raw = json.loads(path.read_text())
    assert {"name", "created", "created_by", "params", "environment", "figures", "extra",
            "effective_runtime"} <= set(raw)
    assert raw["figures"] == {"waterfall": "figs/w.png"} and raw["created_by"].startswith("blendstudy ")
    back = load_results(tmp_path, "p0_resize")
    rec = back.extra
    assert isinstance(rec, StageResult) and back.effective_runtime == {"stage": {"pid": 7}}
    assert isinstance(rec.latency["p0"], LatencyStats) and rec.latency["p0"].mean == pytest.approx(10.0)
    assert rec.runs["p0"].process["cpu_affinity"] == [0, 1]
    assert rec.comparisons["p0 vs baseline"].median_speedup == pytest.approx(2.0)
    acc = rec.accuracy["p0 vs baseline"]
    assert isinstance(acc, AccuracyReport) and acc.gate is True and acc.gate_thresholds.max_ap_change == 0.3
    assert acc.ap.ref["bbox"] == 50.0 and math.isnan(acc.ap.ref["segm"])  # NaN written as null, read back
    assert rec.best.config == RuntimeConfig("threads=1", env={"OMP_NUM_THREADS": "1"}, torch_threads=1)
    assert rec.extras.gate == {"best": True}
    assert list(load_all_results(tmp_path, ["env_check", "p0_resize"])) == ["p0_resize"]


def test_coco_metrics_nan_round_trip():
    m = _metrics("bbox", 38.0)
    back = from_jsonable(CocoMetrics, json.loads(json.dumps(to_jsonable(m))))
    assert back.AP == 38.0 and math.isnan(back.APs)


def test_missing_results_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="baseline.json"):
        load_results(tmp_path, "baseline")
