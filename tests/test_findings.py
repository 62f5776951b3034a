"""The run's findings (blendstudy.study.findings, notebook_lines): the front page of report.html,
read back from results JSON written with the study's schema -- and from a run made before verdicts
had three values."""

from __future__ import annotations

import html
import json

import pytest

from blendstudy.emulation import EMULATE_VAR, EMULATED_NOTE
from blendstudy.measure.agreement import AccuracyReport
from blendstudy.measure.latency import LatencyStats, PairedComparison
from blendstudy.measure.roofline import Peaks, rows
from blendstudy.results import ExtrasResult, LatencyResult, OfflineResult, StageResult, load_all_results, save_results
from blendstudy.stage_results import STAGE_RECORDS
from blendstudy.study import findings
from blendstudy.study.notebook_lines import notebook_lines


def _pair(a: str, b: str, s: float) -> PairedComparison:
    return PairedComparison(a, b, ["1.png"], [10.0], [10.0 / s], [s], s, s - 0.1, s + 0.1, 2, 100, 0)


def _run(recipe: str, mean: float) -> LatencyResult:
    return LatencyResult(recipe, LatencyStats.from_samples([mean - 1, mean, mean + 1]), [mean], ["1.png"], mean)


def _acc(passed: bool, **kw) -> AccuracyReport:
    rep = AccuracyReport(images=40, ref_instances=985, test_instances=985, matched=985, mean_box_iou=0.9996,
                         min_box_iou=0.99, mean_score_diff=0.001, max_score_diff=0.01, class_agreement=1.0,
                         mean_mask_iou=0.999, unmatched_ref=0, unmatched_test=0, lost_above=0, gate=passed)
    for k, v in kw.items():
        setattr(rep, k, v)
    return rep


def _stage(stage: str, previous: str, speedup: float, passed: bool, **extra) -> StageResult:
    kind = STAGE_RECORDS.get(stage, StageResult)
    rec = kind(stage=stage, previous=previous, runs={stage: _run(stage, 100.0 / speedup)},
               comparisons={f"{stage} vs baseline": _pair("baseline", stage, speedup),
                            f"{stage} vs {previous}": _pair(previous, stage, 1.1)},
               accuracy={f"{stage} vs baseline": _acc(passed)}, gate={f"{stage} vs baseline": passed})
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


PEAKS = Peaks({"fp32": 100e9, "bf16": 200e9}, "AVX512", ["avx512_bf16"], 1024)


def _write_run(folder):
    results = folder / "results"
    save_results(results, "p0_resize", _stage("p0", "baseline", 1.03, True), {})
    extras = ExtrasResult(runs={"best_cpu": _run("best_cpu", 60.0)},
                          accuracy={"best_cpu vs baseline": _acc(False)}, gate={"best_cpu vs baseline": False},
                          paired_vs_baseline={"p4": _pair("baseline", "p4", 0.93),
                                              "best_cpu": _pair("baseline", "best_cpu", 1.69)})
    save_results(results, "p4_pad64", _stage("p4", "p3", 0.93, False, extras=extras), {})
    backends = [{"backend": "onnxruntime dynamic"}, {"backend": "openvino static"}]
    p6 = OfflineResult(fastest="best_cpu", backends=backends,
                       runs={"onnxruntime dynamic": _run("onnxruntime dynamic", 50.0)},
                       comparisons={"onnxruntime dynamic vs baseline": _pair("baseline", "ort", 2.11),
                                    "onnxruntime dynamic vs best_cpu": _pair("best_cpu", "ort", 1.34),
                                    "openvino static vs baseline": _pair("baseline", "ov", 1.91)},
                       gate={"onnxruntime dynamic vs baseline": False, "openvino static vs baseline": True},
                       memory=[{"pipeline": "baseline", "peak_rss_mb": 568.1, "peak_device_mb": None},
                               {"pipeline": "openvino static", "peak_rss_mb": 676.3, "peak_device_mb": None}],
                       roofline=rows("best_cpu", {"resize": 5.0, "backbone+FPN": 40.0, "mask paste": 15.0},
                                     {"backbone+FPN": 2e9}, {"backbone+FPN": "bf16"}, PEAKS)
                       + rows("onnxruntime dynamic", {"resize": 5.0, "dense network": 30.0, "mask paste": 15.0},
                              {"dense network": 2e9}, {}, PEAKS))
    save_results(results, "p6_offline", p6, {}, environment={"emulated": False, "device": "cpu"})
    return load_all_results(results, ["p0_resize", "p4_pad64", "p6_offline"])


def test_fastest_gate_passing_pipeline_of_each_kind_and_the_faster_failing_one(tmp_path):
    df = findings.fastest_table(findings.candidates(_write_run(tmp_path)))
    rows = {r["which"]: r for r in df.to_dict("records")}
    assert rows["fastest gate-passing PyTorch recipe"]["pipeline"] == "p0"
    assert rows["fastest PyTorch recipe (fails the gate)"]["pipeline"] == "best_cpu"
    assert rows["fastest gate-passing offline backend"]["pipeline"] == "openvino static"
    assert rows["fastest offline backend (fails the gate)"]["pipeline"] == "onnxruntime dynamic"
    ort = rows["fastest offline backend (fails the gate)"]
    assert ort[findings.SPEEDUP] == "2.11 (2.01-2.21)"
    assert ort["vs the fastest PyTorch recipe"] == "1.34 (1.24-1.44) vs best_cpu"
    assert rows["fastest gate-passing offline backend"]["peak memory (MiB)"] == pytest.approx(676.3)


def test_no_failing_row_when_the_fastest_pipeline_passes(tmp_path):
    cands = [c for c in findings.candidates(_write_run(tmp_path)) if c.passes or c.kind != findings.OFFLINE]
    df = findings.fastest_table(cands)
    offline = df[df["which"].str.contains("offline")]
    assert offline["which"].tolist() == ["fastest gate-passing offline backend"]


def test_a_stage_keeps_its_own_gate_when_p4s_extras_pair_it_again(tmp_path):
    cands = {c.pipeline: c for c in findings.candidates(_write_run(tmp_path))}
    assert cands["p4"].verdict == "fail" and cands["p0"].verdict == "pass"


def test_the_seed_chain_beside_this_run(tmp_path):
    df = findings.chain_beside_seed(_write_run(tmp_path))
    assert df["stage"].tolist() == ["baseline", "p0", "p1", "p2", "p3", "p4"]
    assert df["seed latency (ms)"].tolist() == [144.0, 95.9, 79.6, 62.5, 51.5, 39.5]
    p4 = df.set_index("stage").loc["p4"]
    assert p4[f"seed {findings.CHANGE_PREV}"] == "-23.3"  # 39.5 ms after 51.5: faster, so negative
    assert p4[f"this run: {findings.CHANGE_PREV} (paired)"] == "-9.1"  # 1.1x vs p3
    assert p4["gate vs baseline"] == "fail" and df.set_index("stage").loc["p1", "gate vs baseline"] == "-"


def test_verdicts_with_and_without_a_confidence_interval():
    assert findings.verdict(True) == "pass" and findings.verdict(False) == "fail"
    assert findings.verdict(None) == "undecided" and findings.verdict({"verdict": "Inconclusive"}) == "inconclusive"
    rep = _acc(False, verdict="inconclusive")
    assert findings.verdict(False, rep) == "inconclusive"
    assert findings.ap_change_ci(False, {"ap_change_ci": {"bbox": [-0.95, -0.65], "segm": [-1.0, 0.1]}}) == \
        "bbox -0.950 to -0.650, segm -1.00 to 0.100"
    assert findings.ap_change_ci(True, _acc(True)) == ""


def test_gate_table_shows_the_ci_only_when_a_run_recorded_one(tmp_path):
    results = _write_run(tmp_path)
    df = findings.gate_table(results)
    assert "AP change CI (points)" not in df.columns
    assert df.set_index("comparison").loc["openvino static vs baseline", "verdict"] == "pass"
    ci = {"bbox": [-0.4, 0.1]}
    results["p0_resize"].extra.gate["p0 vs baseline"] = {"verdict": "inconclusive", "ap_change_ci": ci}
    row = findings.gate_table(results).set_index("comparison").loc["p0 vs baseline"]
    assert row["verdict"] == "inconclusive" and row["AP change CI (points)"] == "bbox -0.400 to 0.100"


def test_a_run_written_before_verdicts_still_renders(tmp_path):
    """Results JSON of an older run: no verdict, no ap_change_ci, gates as booleans."""
    _write_run(tmp_path)
    path = tmp_path / "results" / "p0_resize.json"
    data = json.loads(path.read_text())
    for rep in data["extra"]["accuracy"].values():
        rep.pop("verdict", None)
        rep.pop("ap_change_ci", None)
    path.write_text(json.dumps(data))
    page = findings.front_page(tmp_path)
    body = page._repr_html_()
    assert "What this run found" in body and "fastest gate-passing PyTorch recipe" in body
    assert 'href="p0_resize.html"' in body and 'href="p0_resize.ipynb"' in body
    assert "<td>pass</td>" in body


def test_one_line_per_notebook_with_links(tmp_path):
    lines = notebook_lines(_write_run(tmp_path))
    assert len(lines) == 11 and all('href="' in line for line in lines)
    by_name = {line.split('"')[1][:-5]: line for line in lines}
    assert by_name["baseline"].endswith(": no results")
    assert "p0: 1.10 (1.00-1.20) vs baseline" in by_name["p0_resize"]  # previous is the baseline: said once
    assert "fastest extra: best_cpu 1.69 (1.59-1.79) vs baseline (gate: fail)" in by_name["p4_pad64"]
    assert "fastest backend: onnxruntime dynamic, 2.11 (2.01-2.21) vs baseline" in by_name["p6_offline"]
    # the roofline says where the fastest backend and the PyTorch recipe it is paired with differ
    assert ("Roofline: best_cpu: network 40.0 ms in bf16, 25% of its peak, host 20.0 ms; onnxruntime dynamic: "
            "network 30.0 ms in fp32, 67% of its peak, host 20.0 ms") in by_name["p6_offline"]
    assert "this page" in by_name["summary"]


def test_the_emulated_label_stays_in_the_findings(tmp_path, monkeypatch):
    results = _write_run(tmp_path)
    path = tmp_path / "results" / "p6_offline.json"
    data = json.loads(path.read_text())
    data["environment"]["emulated"] = True
    path.write_text(json.dumps(data))
    monkeypatch.delenv(EMULATE_VAR, raising=False)
    page = findings.front_page(tmp_path)
    body = page._repr_html_()
    assert "EMULATED NPU" in body.split("What this run found")[0]  # said before the findings
    assert body.count(html.escape(EMULATED_NOTE)) >= 4  # a column on every table's rows
    assert results  # the run itself
