"""Tables of the study's records besides latency: the accuracy gate, COCO AP with its protocol,
FLOP efficiency, stage profiles, P2's sweep, P4's extras, the tail split, the measuring processes.

Re-exported by :mod:`blendstudy.report` (``report.accuracy_table`` and the rest), where callers
import them from. Latencies in milliseconds, AP in percent points.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import pandas as pd

from blendstudy.coco.evaluate import CocoMetrics
from blendstudy.emulation import says_emulated
from blendstudy.measure.agreement import AccuracyReport
from blendstudy.measure.latency import TailBreakdown
from blendstudy.measure.profile import Efficiency, StageProfile, efficiency
from blendstudy.runtime import SweepResult
from blendstudy.tables import kv_text

__all__ = ["accuracy_table", "coco_table", "efficiency_row", "efficiency_table", "extras_table", "gate_line",
           "process_table", "profile_overhead_table", "stage_table", "sweep_table", "tail_table"]


def _verdict_word(r: AccuracyReport) -> str:
    """The gate's decided verdict: pass / FAIL / inconclusive (records before verdicts had three
    values: from ``gate``), "undecided" when none was decided."""
    if getattr(r, "verdict", None):
        return "FAIL" if r.verdict == "fail" else str(r.verdict)
    return "undecided" if r.gate is None else ("pass" if r.gate else "FAIL")


def _ap_columns(r: AccuracyReport) -> Dict[str, Any]:
    """The AP change per iou type (test - ref, points) with its paired bootstrap interval beside it."""
    if r.ap is None:
        return {}
    ci = r.ap.change_ci or {}
    out: Dict[str, Any] = {}
    for t, v in r.ap.change.items():
        out[f"{t} AP change (points)"] = v
        if t in ci:
            out[f"{t} AP change (points) CI"] = f"{ci[t][0]:.2f} to {ci[t][1]:.2f}"
    return out


@says_emulated
def accuracy_table(reports: Mapping[str, AccuracyReport]) -> pd.DataFrame:
    """One row per comparison (e.g. "npu vs cpu"): instance counts, IoU / score / class agreement,
    losses, images missing on either side, the AP change (test - ref, points) where ground truth
    was given, and the gate verdict the study decided with its params (pass / FAIL)."""
    out: List[Dict[str, Any]] = []
    for name, r in reports.items():
        out.append({
            "comparison": str(name),
            "images": r.images,
            "ref_instances": r.ref_instances,
            "test_instances": r.test_instances,
            "matched": r.matched,
            "mean_box_iou": r.mean_box_iou,
            "min_box_iou": r.min_box_iou,
            "mean_score_diff": r.mean_score_diff,
            "max_score_diff": r.max_score_diff,
            "class_agreement": r.class_agreement,
            "mean_mask_iou": r.mean_mask_iou,
            "unmatched_ref": r.unmatched_ref,
            "unmatched_test": r.unmatched_test,
            f"lost_above_{r.gate_score:g}": r.lost_above,
            "missing_images": len(r.only_in_ref) + len(r.only_in_test),
            **_ap_columns(r),
            "gate": _verdict_word(r),
        })
    return pd.DataFrame(out)


@says_emulated
def coco_table(
    metrics: Mapping[str, CocoMetrics],
    reference: Optional[Mapping[str, Mapping[str, float]]] = None,
) -> pd.DataFrame:
    """COCO AP (percent) beside reference values, with the protocol that produced each number.

    ``metrics``: label -> CocoMetrics (e.g. the dict evaluate_coco returns, keyed by iou type).
    ``reference``: source -> {iou type -> AP}, e.g. {"model card": {"bbox": 44.8, "segm": 39.5},
    "seed": {"bbox": 38.0, "segm": 34.2}}; adds "AP <source>" and "diff <source>" (ours minus
    theirs) columns. Protocol columns: images, detections, dets/image, score_thresh, max_dets.
    """
    reference = reference or {}
    out: List[Dict[str, Any]] = []
    for label, m in metrics.items():
        row: Dict[str, Any] = {"run": str(label), "iou_type": m.iou_type, "AP": m.AP, "AP50": m.AP50,
                               "AP75": m.AP75, "APs": m.APs, "APm": m.APm, "APl": m.APl}
        for source, values in reference.items():
            ref = values.get(m.iou_type)
            row[f"AP {source}"] = ref
            row[f"diff {source}"] = None if ref is None else m.AP - float(ref)
        row.update({
            "images": m.num_images,
            "detections": m.num_detections,
            "dets/image": m.detections_per_image,
            "score_thresh": m.score_thresh,
            "max_dets": m.max_dets,
        })
        out.append(row)
    return pd.DataFrame(out)


@says_emulated
def efficiency_table(flops_per_image: float, peak_flops: float, latencies_ms: Mapping[str, float]) -> pd.DataFrame:
    """How far each recipe is from the device's limit: model FLOPs per image over its mean latency,
    against the measured matmul peak. Columns: recipe / latency_ms / GFLOP/s / fraction of peak."""
    rows = []
    for name, ms in latencies_ms.items():
        eff = efficiency(flops_per_image, ms, peak_flops)
        rows.append({"recipe": name, "latency_ms": ms, "GFLOP/s": eff.achieved_flops / 1e9,
                     "peak GFLOP/s": peak_flops / 1e9, "fraction of peak": eff.fraction_of_peak})
    return pd.DataFrame(rows, columns=["recipe", "latency_ms", "GFLOP/s", "peak GFLOP/s", "fraction of peak"])


def gate_line(gate: Mapping[str, bool], note: str = "", reports: Optional[Mapping[str, AccuracyReport]] = None
              ) -> str:
    """The gate verdicts the study decided, as one markdown line: PASS / FAIL / INCONCLUSIVE per
    comparison (the three-valued verdict of ``reports`` where it has one, else ``gate``)."""
    def word(k: str, ok: bool) -> str:
        r = (reports or {}).get(k)
        return _verdict_word(r).upper() if r is not None else ("PASS" if ok else "FAIL")

    verdicts = " · ".join(f"**{k}: {word(k, ok)}**" for k, ok in gate.items())
    return f"{verdicts} · {note}" if note else verdicts


@says_emulated
def stage_table(profiles: Mapping[str, StageProfile]) -> pd.DataFrame:
    """Median ms per pipeline stage (rows) for each profile (columns)."""
    return pd.DataFrame({k: p.stage_ms for k, p in profiles.items()}).round(2)


@says_emulated
def profile_overhead_table(profiles: Mapping[str, StageProfile]) -> pd.DataFrame:
    """Per profile: profiled total, unprofiled end-to-end, the profiler's overhead (ms), peak memory."""
    return pd.DataFrame({k: {"profiled total ms": p.total_ms, "end-to-end ms": p.end_to_end_ms,
                             "profiler overhead ms": p.overhead_ms, "peak memory MiB": p.peak_memory_mb}
                         for k, p in profiles.items()})


@says_emulated
def efficiency_row(eff: Efficiency) -> pd.DataFrame:
    """FLOPs per image, latency, achieved FLOP/s against the measured matmul peak."""
    return pd.DataFrame([{"GFLOPs/image": eff.flops_per_image / 1e9, "latency ms": eff.latency_ms,
                          "achieved GFLOP/s": eff.achieved_flops / 1e9, "matmul peak GFLOP/s": eff.peak_flops / 1e9,
                          "fraction of peak": f"{eff.fraction_of_peak:.1%}"}])


@says_emulated
def sweep_table(sweep: Sequence[SweepResult]) -> pd.DataFrame:
    """P2's sweep: one row per runtime setting (its own worker process) with what that process
    read back (threads, cores) beside what the setting asked for (its variables as "KEY=value")."""
    return pd.DataFrame([{"setting": r.config.name, "env": kv_text(r.config.env or {}),
                          "cores asked": len(r.config.cpu_cores or []) or "-",
                          "threads read back": r.process.get("torch_threads"),
                          "cores read back": len(r.process.get("cpu_affinity") or []) or None,
                          "mean ms": r.mean_ms, "P50 ms": r.p50_ms, "P99 ms": r.p99_ms, "error": r.error}
                         for r in sweep])


@says_emulated
def extras_table(extras: Any) -> pd.DataFrame:
    """P4's extra recipes: paired speedup against the baseline (median, CI), mean and P99/P50 of
    the recipe's own run, and the gate's verdict (an ExtrasResult)."""
    rows = []
    for r, c in extras.paired_vs_baseline.items():
        s = extras.latency[r]
        rows.append({"recipe": r, "median speedup vs baseline": c.median_speedup, "CI low": c.ci_low,
                     "CI high": c.ci_high, "mean ms": s.mean, "P99/P50": s.p99 / s.p50,
                     "gate": "-" if r not in extras.gate else ("pass" if extras.gate[r] else "FAIL")})
    for r, other in getattr(extras, "same_as", {}).items():  # this device runs it as another recipe's pipeline
        rows.append({"recipe": r, "gate": f"same pipeline as {other} here (its switches are skipped)"})
    return pd.DataFrame(rows)


@says_emulated
def tail_table(recipe: str, tail: TailBreakdown) -> pd.DataFrame:
    """The tail split: P99/P50 over all calls, over the per-image medians, and of the control run."""
    return pd.DataFrame([{"recipe": recipe, "P99/P50 (all calls)": tail.p99_over_p50,
                          "P99/P50 of per-image medians": tail.content_p99_over_p50,
                          "slowest image": f"{tail.slowest_input} ({tail.slowest_input_ms:.1f} ms)",
                          "control image": f"{tail.control_input} x {tail.control_calls}",
                          "control P99/P50": tail.control_p99_over_p50}]).round(3)


@says_emulated
def process_table(processes: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Which process measured what: pid, interactive, torch threads, cores, (on an NPU) the task
    queue level in force, runtime variables (as "KEY=value" text)."""
    df = pd.DataFrame([{"role": k, "pid": p.get("pid"), "interactive": p.get("interactive"),
                        "torch threads": p.get("torch_threads"), "cores": len(p.get("cpu_affinity") or []),
                        "env": kv_text(p.get("env") or {})} for k, p in processes.items()])
    queues = [(p.get("task_queue") or {}).get("value") for p in processes.values()]
    if any(q is not None for q in queues):  # torch_npu loaded: the dispatch queue level each process ran with
        df.insert(4, "npu task queue", ["-" if q is None else q for q in queues])
    return df

