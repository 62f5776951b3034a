"""The run's findings, read back from its results JSON: the front page of report.html.

:func:`front_page` reads ``<run folder>/results/*.json`` (any run, also one made before this
module existed) and returns a :class:`FrontPage`: the fastest pipeline of each kind (PyTorch recipe,
offline backend) that passes the accuracy gate, with its paired speedup and CI, latency, memory and
the gate; the seed's chain beside this run's; peak memory; every gate verdict; and one line per
notebook saying what it found, linked to its executed copy. Speedups are paired (median over
images of B over A, above 1 = faster); latency changes are in percent, negative = faster.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import pandas as pd

from blendstudy.emulation import EMULATED_BANNER, EMULATED_NOTE, emulated
from blendstudy.results import ResultsFile, load_all_results
from blendstudy.study.notebook_lines import notebook_lines
from blendstudy.study.protocol import NOTEBOOKS, STAGE_NOTEBOOKS
from blendstudy.tables import Table, ci_text, show, text

__all__ = ["Candidate", "FrontPage", "SEED_CHAIN", "candidates", "chain_beside_seed", "fastest_table", "front_page",
           "gate_table", "memory_table", "verdict"]

#: the seed's chain (docs/reference_study.md, "The chain"): stage, what it changed, mean latency (ms)
SEED_CHAIN = (("baseline", "AdelaiDet + detectron2 DefaultPredictor", 144.0),
              ("p0", "resize on the device instead of PIL on the CPU", 95.9),
              ("p1", "no .cpu() syncs in the FCOS decode", 79.6),
              ("p2", "TASK_QUEUE_ENABLE=2, NUMA core binding, OMP_NUM_THREADS=1", 62.5),
              ("p3", "torch.compile(backbone)", 51.5),
              ("p4", "pad to multiples of 64, recompile limit 32", 39.5))
SPEEDUP = "paired speedup vs baseline (95% CI), above 1 = faster"
CHANGE_PREV = "latency change vs previous (%), negative = faster"
PYTORCH, OFFLINE = "PyTorch recipe", "offline backend"
Results = Mapping[str, ResultsFile]


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """A field of a record or of its dict."""
    return obj.get(key, default) if isinstance(obj, Mapping) else getattr(obj, key, default)


def verdict(gate: Any, report: Any = None) -> str:
    """The gate's verdict as a word: a ``verdict`` field (pass / fail / inconclusive) of the gate
    record or of the accuracy report where the study wrote one, else the boolean gate as pass /
    fail; "undecided" when neither says."""
    for source in (gate, report):
        word = _get(source, "verdict") if source is not None and not isinstance(source, (bool, str)) else None
        if isinstance(word, str) and word:
            return word.lower()
    if isinstance(gate, str):
        return gate.lower()
    passed = gate if isinstance(gate, bool) else _get(report, "gate")
    return "undecided" if passed is None else ("pass" if passed else "fail")


def ap_change_ci(gate: Any, report: Any = None) -> str:
    """The AP change's confidence interval (points) where the study wrote one (``ap_change_ci``:
    per iou type or one pair), as "bbox -0.95 to -0.65, segm ..."; "" when absent."""
    ci = None
    for source in (gate, report):
        if source is not None and not isinstance(source, (bool, str)):
            ci = _get(source, "ap_change_ci") or ci
    if not ci:
        return ""
    items = ci.items() if isinstance(ci, Mapping) else [("", ci)]
    out = []
    for k, bounds in items:
        lo, hi = (bounds.get("low"), bounds.get("high")) if isinstance(bounds, Mapping) else tuple(bounds)[:2]
        out.append(f"{k} {text(lo)} to {text(hi)}".strip())
    return ", ".join(out)


def _ap_change(report: Any) -> str:
    ap = _get(report, "ap")
    change = dict(ap.change) if ap is not None and hasattr(ap, "change") else {}
    return " / ".join(f"{v:+.2f}" for v in change.values()) if change else "-"


@dataclass
class Candidate:
    """One pipeline's standing against the baseline: paired speedup and CI, its own mean latency,
    the gate (verdict, AP change in points, its CI if recorded), peak memory where measured."""

    kind: str
    pipeline: str
    speedup: float
    ci_low: float
    ci_high: float
    mean_ms: Optional[float] = None
    verdict: str = "undecided"
    ap_change: str = "-"
    ap_change_ci: str = ""
    vs_fastest: str = ""
    memory_mib: Optional[float] = None

    @property
    def passes(self) -> bool:
        return self.verdict == "pass"


def _candidate(kind: str, name: str, comp: Any, gates: Mapping[str, Any], accuracy: Mapping[str, Any],
               mean_ms: Optional[float]) -> Candidate:
    key = f"{name} vs baseline"
    g, rep = gates.get(key), accuracy.get(key)
    return Candidate(kind, name, float(_get(comp, "median_speedup")), float(_get(comp, "ci_low")),
                     float(_get(comp, "ci_high")), mean_ms, verdict(g, rep), _ap_change(rep), ap_change_ci(g, rep))


def _pytorch(results: Results) -> List[Candidate]:
    out: Dict[str, Candidate] = {}
    for stage, nb in STAGE_NOTEBOOKS.items():
        rec = results[nb].extra if nb in results else None
        comp = _get(rec, "comparisons", {}).get(f"{stage} vs baseline") if rec is not None else None
        if comp is not None:
            stats = rec.latency.get(stage)
            out[stage] = _candidate(PYTORCH, stage, comp, rec.gate, rec.accuracy, _get(stats, "mean"))
    extras = _get(results["p4_pad64"].extra, "extras") if "p4_pad64" in results else None
    for name, comp in (_get(extras, "paired_vs_baseline") or {}).items():
        if name in out:  # a stage's own record holds its gate
            continue
        stats = extras.latency.get(name)
        out[name] = _candidate(PYTORCH, name, comp, extras.gate, extras.accuracy, _get(stats, "mean"))
    return list(out.values())


def _offline(results: Results) -> List[Candidate]:
    if "p6_offline" not in results:
        return []
    rec = results["p6_offline"].extra
    out = []
    for b in rec.backends:
        name = b["backend"]
        comp = rec.comparisons.get(f"{name} vs baseline")
        if comp is None:
            continue
        c = _candidate(OFFLINE, name, comp, rec.gate, rec.accuracy, _get(rec.latency.get(name), "mean"))
        vs = rec.comparisons.get(f"{name} vs {rec.fastest}")
        c.vs_fastest = f"{ci_text(vs.median_speedup, vs.ci_low, vs.ci_high)} vs {rec.fastest}" if vs else ""
        out.append(c)
    return out


def candidates(results: Results) -> List[Candidate]:
    """Every pipeline paired against the baseline: the stages and P4's extras (PyTorch recipes),
    P6's backends (offline), each with the peak memory P6 measured for it, if it did."""
    memory = {m["pipeline"]: m.get("peak_rss_mb") for m in _get(_get(results.get("p6_offline"), "extra"), "memory", [])}
    out = _pytorch(results) + _offline(results)
    for c in out:
        c.memory_mib = memory.get(c.pipeline)
    return out


def _fastest(cands: Sequence[Candidate], kind: str, passing: bool) -> Optional[Candidate]:
    pool = [c for c in cands if c.kind == kind and (c.passes or not passing) and not math.isnan(c.speedup)]
    return max(pool, key=lambda c: c.speedup, default=None)


def fastest_table(cands: Sequence[Candidate]) -> pd.DataFrame:
    """Per kind (PyTorch recipe, offline backend): the fastest pipeline that passes the gate and,
    when another one is faster but fails it, that one too. Kinds with no pipeline are left out."""
    rows = []
    for kind in (PYTORCH, OFFLINE):
        best, any_ = _fastest(cands, kind, True), _fastest(cands, kind, False)
        if any_ is None:
            continue
        if best is None:
            rows.append({"which": f"fastest gate-passing {kind}", "pipeline": "none passes the gate"})
        faster_failing = None if any_ is best else any_  # listed only when it is not the passing one
        for label, c in ((f"fastest gate-passing {kind}", best), (f"fastest {kind} (fails the gate)", faster_failing)):
            if c is None:
                continue
            rows.append({"which": label, "pipeline": c.pipeline, SPEEDUP: ci_text(c.speedup, c.ci_low, c.ci_high),
                         "vs the fastest PyTorch recipe": c.vs_fastest or "-", "mean latency (ms)": c.mean_ms,
                         "peak memory (MiB)": c.memory_mib, "gate vs baseline": c.verdict,
                         "AP change bbox / segm (points)": c.ap_change,
                         **({"AP change CI": c.ap_change_ci} if c.ap_change_ci else {})})
    return pd.DataFrame(rows)


def chain_beside_seed(results: Results) -> pd.DataFrame:
    """The seed's chain (its latency, its change vs the previous stage) beside this run's: the
    paired speedups vs the previous stage and vs the baseline, with CIs, the latency change they
    mean, and the gate against the baseline."""
    cands = {c.pipeline: c for c in _pytorch(results)}
    rows = []
    for i, (stage, change, ms) in enumerate(SEED_CHAIN):
        rec = results[STAGE_NOTEBOOKS[stage]].extra if STAGE_NOTEBOOKS[stage] in results else None
        prev = SEED_CHAIN[i - 1][0] if i else None
        comp = _get(rec, "comparisons", {}).get(f"{stage} vs {prev}") if rec is not None and prev else None
        s_prev = float(_get(comp, "median_speedup")) if comp is not None else None
        c = cands.get(stage)
        rows.append({"stage": stage, "what changes": change, "seed latency (ms)": ms,
                     f"seed {CHANGE_PREV}": f"{(ms / SEED_CHAIN[i - 1][2] - 1) * 100:+.1f}" if i else "-",
                     f"this run: {CHANGE_PREV} (paired)": f"{(1 / s_prev - 1) * 100:+.1f}" if s_prev else "-",
                     "this run: paired speedup vs previous (CI)": ci_text(s_prev, _get(comp, "ci_low"),
                                                                           _get(comp, "ci_high")),
                     f"this run: {SPEEDUP}": "1" if i == 0 else (ci_text(c.speedup, c.ci_low, c.ci_high) if c else "-"),
                     "gate vs baseline": "-" if i == 0 else (c.verdict if c else "-")})
    return pd.DataFrame(rows)


def _gate_rows(gates: Mapping[str, Any], accuracy: Mapping[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for name, g in gates.items():
        r = accuracy.get(name)
        score = _get(r, "gate_score")
        rows.append({"comparison": name, "verdict": verdict(g, r), "AP change CI (points)": ap_change_ci(g, r),
                     "AP change bbox / segm (points)": _ap_change(r), "mean box IoU": _get(r, "mean_box_iou"),
                     "min box IoU": _get(r, "min_box_iou"),
                     f"lost above score {score if score is not None else '?'}": _get(r, "lost_above"),
                     "instances ref / test / matched": (f"{_get(r, 'ref_instances')} / {_get(r, 'test_instances')}"
                                                        f" / {_get(r, 'matched')}") if r is not None else "-",
                     "mean mask IoU": _get(r, "mean_mask_iou"), "images": _get(r, "images")})
    return rows


def gate_table(results: Results) -> pd.DataFrame:
    """Every gate the notebooks decided, in the study's order: verdict (the AP change's CI beside
    it where recorded), AP change, box IoU, lost instances, instance counts, mask IoU."""
    rows: Dict[str, Dict[str, Any]] = {}
    for nb in NOTEBOOKS:
        rec = results[nb].extra if nb in results else None
        for part in (rec, _get(rec, "extras")):
            if part is not None and isinstance(_get(part, "gate"), Mapping):
                rows.update({r["comparison"]: r for r in _gate_rows(part.gate, _get(part, "accuracy") or {})})
    df = pd.DataFrame(list(rows.values()))
    if "AP change CI (points)" in df and not df["AP change CI (points)"].astype(bool).any():
        df = df.drop(columns=["AP change CI (points)"])
    return df


def memory_table(results: Results) -> pd.DataFrame:
    """Peak memory of each pipeline, each alone in a worker process of its own (P6's table)."""
    memory = _get(_get(results.get("p6_offline"), "extra"), "memory", [])
    df = pd.DataFrame([{"pipeline": m["pipeline"], "peak resident memory (MiB)": m.get("peak_rss_mb"),
                        "peak device memory (MiB)": m.get("peak_device_mb")} for m in memory])
    return df.dropna(axis=1, how="all") if len(df) else df


def context_line(results: Results) -> str:
    """Where the run measured: device, CPU, torch, weights (RANDOM said loudly), as HTML."""
    env = next((f.environment for f in results.values() if f.environment), {})
    weights = next((_get(f.extra, "weights") for f in results.values() if _get(f.extra, "weights")), "-")
    random = any(bool(_get(f.extra, "random_weights")) for f in results.values())
    line = (f"device {env.get('device', '-')} ({env.get('cpu_model', '-')}, {env.get('cpu_cores', '-')} cores), "
            f"torch {env.get('torch', '-')}, weights {weights}" + (" -- RANDOM weights" if random else ""))
    return f"<p>{html.escape(line)}. Speedups are paired (median over images, 95 % CI); above 1 = faster.</p>"


def _is_emulated(results: Results) -> bool:
    return emulated() or any(bool(_get(f, "environment", {}).get("emulated")) for f in results.values())


@dataclass
class FrontPage:
    """The findings as a notebook displays them (HTML) and as text (``str``): ``parts`` in order,
    each a heading, a Table or a list of lines."""

    parts: List[Union[str, Table, List[str]]] = field(default_factory=list)

    def _repr_html_(self) -> str:
        out = []
        for p in self.parts:
            if isinstance(p, Table):
                out.append(p._repr_html_())
            elif isinstance(p, list):
                out.append("<ul>" + "".join(f"<li>{line}</li>" for line in p) + "</ul>")
            else:
                out.append(p)
        return "\n".join(out)

    def __str__(self) -> str:
        return "\n\n".join(str(p) if not isinstance(p, list) else "\n".join(p) for p in self.parts)


def _table(df: pd.DataFrame, title: str, emulated_run: bool) -> Table:
    if emulated_run and len(df) and "emulated" not in df.columns:
        df = df.copy()
        df.insert(0, "emulated", EMULATED_NOTE)
    return show(df, title=title)


def front_page(run_folder: Union[str, Path]) -> FrontPage:
    """The findings of the run in ``run_folder`` (its results/*.json), in reading order."""
    results = load_all_results(Path(run_folder) / "results", list(NOTEBOOKS))
    emu = _is_emulated(results)
    parts: List[Union[str, Table, List[str]]] = []
    if emu:
        parts.append(f'<p style="color:#8b1a1a;font-weight:bold">{html.escape(EMULATED_BANNER)}</p>')
    parts.append("<h2>What this run found</h2>")
    parts.append(context_line(results))
    parts.append(_table(fastest_table(candidates(results)), "The fastest pipelines against the baseline", emu))
    parts.append(_table(chain_beside_seed(results), "The seed's chain beside this run's", emu))
    parts.append(_table(memory_table(results), "Peak memory, each pipeline alone in its own process", emu))
    parts.append(_table(gate_table(results), "The accuracy gates", emu))
    parts.append("<h3>What each notebook found</h3>")
    parts.append(notebook_lines(results))
    return FrontPage(parts)
