"""One line per notebook of a run: what it found, read from its results JSON, linked to its
executed copy (``<name>.html`` as the runner renders it, and ``<name>.ipynb``, both beside
report.html). Speedups are paired (median over images of B over A, above 1 = faster) with their
95 % CI; a notebook without results says so.
"""

from __future__ import annotations

import html
from typing import Any, Callable, Dict, List, Mapping, Optional

from blendstudy.results import ResultsFile
from blendstudy.roofline_report import network_and_host
from blendstudy.tables import ci_text, sig

__all__ = ["FINDERS", "notebook_lines"]


def _paired(rec: Any, key: str) -> Optional[str]:
    comp = (getattr(rec, "comparisons", None) or {}).get(key)
    return None if comp is None else ci_text(comp.median_speedup, comp.ci_low, comp.ci_high)


def _gate_word(gate: Any) -> str:
    word = getattr(gate, "verdict", None) or (gate.get("verdict") if isinstance(gate, Mapping) else None)
    return str(word) if word else ("pass" if gate else "fail")


def _env_check(f: ResultsFile) -> str:
    rec, env = f.extra, f.extra.environment
    counts: Dict[str, int] = {}
    for c in rec.checks:
        counts[c.get("status", "?")] = counts.get(c.get("status", "?"), 0) + 1
    failed = [c["name"] for c in rec.checks if c.get("status") == "fail"]
    kernel = (rec.kernels.get("deform_conv") or {}).get("selected", "-")
    return (f"device {rec.device}; Python {env.get('python')}, torch {env.get('torch')}"
            + (f", torch_npu {env['torch_npu']}" if env.get("torch_npu") else "")
            + f"; {env.get('cpu_model')}, {env.get('cpu_cores')} cores; doctor: "
            + ", ".join(f"{n} {s}" for s, n in counts.items()) + (f" ({', '.join(failed)})" if failed else "")
            + f"; deformable conv kernel: {kernel}")


def _weights_check(f: ResultsFile) -> str:
    rec = f.extra
    if rec.random_weights:
        return "no checkpoint: RANDOM weights, detections and accuracy are not meaningful"
    s = rec.summary
    return (f"{rec.weights}: {s.get('checkpoint tensors')} tensors for the model's {s.get('model tensors')}, "
            f"coverage {s.get('coverage')}, strict match {'yes' if s.get('strict match') else 'no'}")


def _baseline(f: ResultsFile) -> str:
    rec = f.extra
    st = rec.latency.get("baseline")
    line = "no latency" if st is None else (f"mean {sig(st.mean)} ms, P50 {sig(st.p50)}, P99 {sig(st.p99)} ms "
                                            f"({st.n} samples)")
    eff = rec.efficiency
    return line + (f"; {eff.fraction_of_peak:.0%} of the measured matmul peak" if eff is not None else "")


def _stage(f: ResultsFile) -> str:
    rec = f.extra
    prev, base = _paired(rec, f"{rec.stage} vs {rec.previous}"), _paired(rec, f"{rec.stage} vs baseline")
    gate = rec.gate.get(f"{rec.stage} vs baseline")
    pairs = [(prev, rec.previous)] + ([(base, "baseline")] if rec.previous != "baseline" else [])
    line = (f"{rec.stage}: " + ", ".join(f"{s or 'not paired'} vs {other}" for s, other in pairs)
            + f" (paired speedup); gate vs baseline: {'-' if gate is None else _gate_word(gate)}")
    best = getattr(rec, "best", None)  # P2's (RuntimeStageResult)
    if best is not None:
        line += f"; best runtime setting: {best.config.name}"
    rows = getattr(rec, "compile", None)  # P3's and P4's (CompileStageResult)
    if rows:
        compiled = sum(1 for r in rows if r.graph == "compiled" and r.recipe == rec.stage)
        total = sum(1 for r in rows if r.recipe == rec.stage)
        line += f"; {compiled} of {total} padded shapes compiled"
    extras = getattr(rec, "extras", None)  # P4's (PaddingStageResult)
    if extras is not None and extras.paired_vs_baseline:
        name, c = max(extras.paired_vs_baseline.items(), key=lambda kv: kv[1].median_speedup)
        line += (f"; fastest extra: {name} {ci_text(c.median_speedup, c.ci_low, c.ci_high)} vs baseline "
                 f"(gate: {_gate_word(extras.gate.get(f'{name} vs baseline'))})")
    return line


def _offline(f: ResultsFile) -> str:
    rec = f.extra
    paired = {b["backend"]: rec.comparisons[f"{b['backend']} vs baseline"] for b in rec.backends
              if f"{b['backend']} vs baseline" in rec.comparisons}
    if not paired:
        return "no backend measured" + (f" ({'; '.join(rec.errors)})" if rec.errors else "")
    name, c = max(paired.items(), key=lambda kv: kv[1].median_speedup)
    vs = _paired(rec, f"{name} vs {rec.fastest}")
    failed = f"; failed: {', '.join(rec.errors)}" if rec.errors else ""
    why = network_and_host(rec.roofline, rec.fastest, name) if rec.fastest != name else None
    return (f"fastest backend: {name}, {ci_text(c.median_speedup, c.ci_low, c.ci_high)} vs baseline"
            + (f", {vs} vs {rec.fastest}" if vs else "") + " (paired speedup); gate vs baseline: "
            + _gate_word(rec.gate.get(f"{name} vs baseline")) + failed + (f". Roofline: {why}" if why else ""))


def _eval(f: ResultsFile) -> str:
    rec = f.extra
    if not rec.evaluated:
        return f"{rec.recipe}: not evaluated (no ground truth)"
    ap = " / ".join(f"{k} AP {sig(m.AP)}" for k, m in rec.metrics.items())
    return (f"{rec.recipe} on {rec.num_images} images: {ap}, {rec.num_detections} detections "
            f"(seed on COCO val2017: bbox 38.0 / segm 34.2)")


def _summary(f: Optional[ResultsFile]) -> str:
    return "this page: the findings above, the tables and figures below"


#: what each notebook's line says, by notebook name
FINDERS: Dict[str, Callable[[Any], str]] = {
    "env_check": _env_check, "weights_check": _weights_check, "baseline": _baseline, "p0_resize": _stage,
    "p1_decode": _stage, "p2_runtime": _stage, "p3_compile": _stage, "p4_pad64": _stage, "p6_offline": _offline,
    "p5_eval": _eval, "summary": _summary}


def _link(name: str) -> str:
    n = html.escape(name)
    return f'<a href="{n}.html"><b>{n}</b></a> (<a href="{n}.ipynb">ipynb</a>)'


def notebook_lines(results: Mapping[str, ResultsFile], names: Optional[List[str]] = None) -> List[str]:
    """One HTML line per notebook (``names``, default FINDERS' order): a link to its executed copy
    and what it found; "no results" where it wrote none or they cannot be read as expected."""
    out = []
    for name in names or list(FINDERS):
        if name not in results and name != "summary":  # the summary writes its own results last
            out.append(f"{_link(name)}: no results")
            continue
        try:
            found = FINDERS[name](results.get(name)) if name in FINDERS else "results written"
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            found = f"results not readable here ({type(exc).__name__}: {exc})"
        out.append(f"{_link(name)}: {html.escape(found)}")
    return out
