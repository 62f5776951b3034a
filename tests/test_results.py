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
from blendstudy.measure.pixels import PixelDifference
from blendstudy.report import plot_speedup_waterfall
from blendstudy.results import (
    RECORD_TYPES,
    SCHEMA_VERSION,
    ExtrasResult,
    LatencyResult,
    PaddingStageResult,
    ResultsSchemaError,
    RuntimeStageResult,
    load_all_results,
    load_results,
    save_results,
)
from blendstudy.runtime import RuntimeConfig, SweepResult
from blendstudy.stage_results import STAGE_RECORDS, PaddedShapes, ShapeCompile
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


def _stage() -> PaddingStageResult:
    rep = AccuracyReport(images=2, ref_instances=3, test_instances=3, matched=3, mean_box_iou=0.995,
                         min_box_iou=0.98, mean_score_diff=0.001, max_score_diff=0.002, class_agreement=1.0,
                         mean_mask_iou=None, unmatched_ref=0, unmatched_test=0, lost_above=0,
                         ap=ApComparison(2, {"bbox": 50.0, "segm": math.nan}, {"bbox": 49.9, "segm": math.nan}))
    rep.decide(GateThresholds(max_ap_change=0.3))
    pc = paired_timers(lambda i: 10.0, lambda i: 5.0, ["a.png", "b.png"], rounds=2, warmup=0,
                       n_boot=50, progress=False, name_a="baseline", name_b="p4")
    out = PaddingStageResult(stage="p4", previous="p3", comparisons={"p4 vs baseline": pc},
                             accuracy={"p4 vs baseline": rep}, gate={"p4 vs baseline": bool(rep.gate)}, weights="w.pth")
    out.add_latency(LatencyResult("p4", _stats(10.0), [9.0, 10.0, 11.0], ["a", "b", "a"], 30.0,
                                  process={"pid": 1, "torch_threads": 2, "cpu_affinity": [0, 1]}))
    out.compile = [ShapeCompile("p4", (384, 640), 64, "a", 2, 3000.0, 32, "compiled", "inductor")]
    out.shapes = [PaddedShapes("p4", 64, [(384, 640)])]
    out.dynamo_counters = {"stats": {"unique_graphs": 1}}
    out.extras = ExtrasResult(gate={"best": True})
    out.extras.add_latency(LatencyResult("best", _stats(8.0), [8.0], ["a"], 20.0))
    return out


def test_a_stage_record_reads_back_as_the_same_types(tmp_path):
    fig = plot_speedup_waterfall([("P0", 144.0), ("P4", 39.5)], tmp_path / "figs" / "w.png")
    path = save_results(tmp_path, "p4_pad64", _stage(), {"score_thresh": 0.3}, {"waterfall": fig},
                        environment={"device": "cpu"}, effective_runtime={"stage": {"pid": 7}})
    assert path == tmp_path / "p4_pad64.json"
    raw = json.loads(path.read_text())
    assert {"name", "created", "created_by", "params", "environment", "figures", "extra",
            "effective_runtime"} <= set(raw)
    assert raw["schema"] == SCHEMA_VERSION == 2
    assert raw["figures"] == {"waterfall": "figs/w.png"} and raw["created_by"].startswith("blendstudy ")
    back = load_results(tmp_path, "p4_pad64")
    rec = back.extra
    assert isinstance(rec, PaddingStageResult) and back.effective_runtime == {"stage": {"pid": 7}}
    assert back.schema == SCHEMA_VERSION
    assert isinstance(rec.latency["p4"], LatencyStats) and rec.latency["p4"].mean == pytest.approx(10.0)
    assert rec.runs["p4"].process["cpu_affinity"] == [0, 1]
    assert rec.comparisons["p4 vs baseline"].median_speedup == pytest.approx(2.0)
    acc = rec.accuracy["p4 vs baseline"]
    assert isinstance(acc, AccuracyReport) and acc.gate is True and acc.gate_thresholds.max_ap_change == 0.3
    assert acc.ap.ref["bbox"] == 50.0 and math.isnan(acc.ap.ref["segm"])  # NaN written as null, read back
    assert rec.compile == _stage().compile and rec.shapes == [PaddedShapes("p4", 64, [(384, 640)])]
    assert rec.extras.gate == {"best": True} and rec.extras.runs["best"].samples_ms == [8.0]
    assert rec.extras.latency["best"].mean == pytest.approx(8.0)  # .latency: LatencyStats, as everywhere
    assert set(raw["extra"]["extras"]) >= {"runs", "latency"}
    assert list(load_all_results(tmp_path, ["env_check", "p4_pad64"])) == ["p4_pad64"]


def test_each_stage_notebook_reads_back_as_its_own_record(tmp_path):
    setting = RuntimeConfig("threads=1", env={"OMP_NUM_THREADS": "1"}, torch_threads=1)
    p2 = RuntimeStageResult(stage="p2", previous="p1", best=SweepResult(setting, None, 9.0, 9.5, 12.0))
    save_results(tmp_path, "p2_runtime", p2, {})
    assert load_results(tmp_path, "p2_runtime").extra.best.config == setting
    for stage, name in (("p0", "p0_resize"), ("p1", "p1_decode"), ("p3", "p3_compile"), ("p4", "p4_pad64")):
        save_results(tmp_path, name, STAGE_RECORDS[stage](stage=stage, previous="x"), {})
        rec = load_results(tmp_path, name).extra
        assert type(rec) is STAGE_RECORDS[stage] is RECORD_TYPES[name] and rec.stage == stage
    assert not hasattr(load_results(tmp_path, "p0_resize").extra, "compile")  # each holds only its own part


def _v1_run() -> dict:
    """A p4_pad64 record as results schema 1 wrote it: every stage's field, rows keyed by column."""
    run = {"recipe": "best", "stats": to_jsonable(_stats(8.0)), "samples_ms": [8.0], "labels": ["a"],
           "first_call_ms": 20.0, "warmup_ms": [], "peak_memory_mb": None, "process": {"pid": 3}}
    return {"stage": "p4", "previous": "p3", "recipes": [], "runs": {"p4": {**run, "recipe": "p4"}},
            "comparisons": {}, "accuracy": {}, "gate": {"p4 vs baseline": True}, "ap_note": "", "resize_difference": [],
            "decode_profiles": {}, "sweep": [], "best": None, "best_files": {}, "kernel": {},
            "compile": [{"recipe": "p4", "shape (h, w)": [384, 640], "pad multiple": 64, "image": "a", "images": 2,
                         "first call ms": 3000.0, "recompile limit": 32, "graph": "compiled", "backend": "inductor"}],
            "shapes": [{"recipe": "p4", "pad multiple": 64, "distinct shapes": 1, "shapes (h, w)": [[384, 640]]}],
            "dynamo_counters": {"stats": {"unique_graphs": 1}},
            "extras": {"latency": {"best": run}, "accuracy": {}, "gate": {"best vs baseline": False},
                       "paired_vs_baseline": {}, "profiles": {}, "tail_recipe": "best", "tail": None, "same_as": {},
                       "roofline": []},
            "processes": {}, "weights": "w.pth", "random_weights": False, "model": {},
            "latency": {"p4": to_jsonable(_stats(8.0))}, "first_call_ms": {"p4": 20.0}, "samples_ms": {"p4": [8.0]},
            "peak_memory_mb": {"p4": None}}


def _write_v1(folder: Path, name: str, extra: dict, **envelope) -> None:
    data = {"name": name, "created": "2024-01-01T00:00:00+00:00", "created_by": "blendstudy 0.1.0", "params": {},
            "environment": {}, "figures": {}, "extra": extra, "effective_runtime": {}, **envelope}
    (folder / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")


def test_a_results_file_of_schema_1_reads_back_as_this_schemas_records(tmp_path):
    _write_v1(tmp_path, "p4_pad64", _v1_run())
    back = load_results(tmp_path, "p4_pad64")
    rec = back.extra
    assert back.schema == 1 and isinstance(rec, PaddingStageResult)
    assert rec.compile == [ShapeCompile("p4", (384, 640), 64, "a", 2, 3000.0, 32, "compiled", "inductor")]
    assert rec.shapes == [PaddedShapes("p4", 64, [(384, 640)])]
    assert rec.extras.runs["best"].process == {"pid": 3} and rec.extras.latency["best"].mean == pytest.approx(8.0)
    assert rec.latency["p4"].mean == pytest.approx(8.0) and rec.gate == {"p4 vs baseline": True}
    assert not hasattr(rec, "sweep") and not hasattr(rec, "resize_difference")  # other stages' fields: ignored
    p0 = {k: v for k, v in _v1_run().items() if k not in ("extras", "compile", "shapes")}
    p0.update(stage="p0", previous="baseline", resize_difference=[
        {"image": "a.png", "size": "64x48", "mean": 0.25, "p99": 1.0, "max": 2.0, "differs": 0.1}])
    _write_v1(tmp_path, "p0_resize", p0)
    assert load_results(tmp_path, "p0_resize").extra.resize_difference == [
        PixelDifference("a.png", "64x48", 0.25, 1.0, 2.0, 0.1)]


def test_a_results_file_of_an_unknown_schema_is_refused_in_one_line(tmp_path):
    _write_v1(tmp_path, "p3_compile", {"stage": "p3", "previous": "p2"}, schema=99)
    with pytest.raises(ResultsSchemaError) as err:
        load_results(tmp_path, "p3_compile")
    said = str(err.value)
    assert "\n" not in said and "p3_compile.json" in said
    assert "schema version 99" in said and f"reads version {SCHEMA_VERSION}" in said


def test_coco_metrics_nan_round_trip():
    m = _metrics("bbox", 38.0)
    back = from_jsonable(CocoMetrics, json.loads(json.dumps(to_jsonable(m))))
    assert back.AP == 38.0 and math.isnan(back.APs)


def test_missing_results_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="baseline.json"):
        load_results(tmp_path, "baseline")
