"""The stage notebooks' shared sections (blendstudy.study.sections) and P0's pixel summary."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from blendstudy.measure.latency import LatencyStats, PairedComparison
from blendstudy.measure.pixels import PixelDifference, resize_difference_summary
from blendstudy.measure.roofline import Peaks, rows
from blendstudy.results import DecodeStageResult, LatencyResult, save_results
from blendstudy.study import sections
from blendstudy.tables import Table


def _study(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(weights="tiny_synthetic.pth", run_folder=tmp_path,
                           figure=lambda name: tmp_path / "figures" / name)


def _stats(mean: float) -> LatencyStats:
    return LatencyStats.from_samples([mean] * 4)


def _stage() -> DecodeStageResult:
    res = DecodeStageResult(stage="p1", previous="p0")
    res.recipes = [{"recipe": "p1", "switches": "device_resize, sync_free_decode"}]
    for name, ms in (("p0", 20.0), ("p1", 10.0)):
        res.add_latency(LatencyResult(name, _stats(ms), [ms] * 4, ["a"] * 4, first_call_ms=3 * ms,
                                      process={"pid": 1}))
    res.processes = {"stage worker": {"pid": 1, "threads": 2, "env": {"OMP_NUM_THREADS": "2"}}}
    res.comparisons = {"p1 vs p0": PairedComparison("p0", "p1", ["a", "b"], [20.0, 20.0], [10.0, 10.0], [2.0, 2.0],
                                                    median_speedup=2.0, ci_low=1.9, ci_high=2.1, rounds=1,
                                                    n_boot=100, seed=0)}
    res.gate = {"p1 vs baseline": True}
    return res


def test_resize_difference_summary():
    rows_ = [PixelDifference("a", "4x4", mean=1.0, p99=4.0, max=9.0, differs=0.5),
             PixelDifference("b", "4x4", mean=3.0, p99=2.0, max=5.0, differs=0.1)]
    mean, worst = resize_difference_summary(rows_)
    assert mean["over images"] == "mean" and mean["mean"] == 2.0 and mean["images"] == 2
    assert worst["max"] == 9.0 and worst["differs"] == 0.5
    assert resize_difference_summary([]) == []


def test_shared_sections_render_without_an_index_and_with_the_weights_once(tmp_path):
    study, res = _study(tmp_path), _stage()
    table, processes = sections.latency(study, res)
    assert isinstance(table, Table) and "first call ms" in table.frame.columns
    assert table.caption["weights"] == "tiny_synthetic.pth" and "weights" not in table.frame.columns
    assert "OMP_NUM_THREADS=2" in processes.frame.to_string()
    paired, lines = sections.paired(study, res.comparisons)
    assert "2.00" in paired.frame.to_string() and "p1" in lines.data
    assert sections.recipes(study, res).frame.iloc[0]["recipe"] == "p1"


def test_finding_is_computed_from_the_saved_results(tmp_path):
    study, res = _study(tmp_path), _stage()
    save_results(tmp_path / "results", "p1_decode", res, params={})
    found = sections.finding(study, "p1_decode").data
    assert found.startswith("**Found in this run:** p1: 2.00 (1.90-2.10) vs p0")
    assert "gate vs baseline: pass" in found
    with pytest.raises(FileNotFoundError):
        sections.finding(study, "p3_compile")


def test_roofline_section(tmp_path):
    peaks = Peaks({"fp32": 100e9}, "AVX2", [], 256)
    rs = rows("p4", {"backbone+FPN": 10.0, "mask paste": 2.0}, {"backbone+FPN": 0.5e9}, {}, peaks)
    summary, per_part, image = sections.roofline(_study(tmp_path), rs, "roof.png", "roofline")
    assert (tmp_path / "figures" / "roof.png").is_file()
    assert per_part.frame.shape[0] == 2 and summary.frame.iloc[0]["pipeline"] == "p4"
    assert "No roofline" in sections.roofline(_study(tmp_path), [], "x.png", "t")[0].data
