"""Tables and figures of a study run.

Tables are pandas DataFrames (latencies in milliseconds, throughput in images/s, changes as signed
percentage strings such as "-72.6%"). Figures are drawn on matplotlib ``Figure`` objects with an
Agg canvas -- no pyplot state, so nothing global changes and nothing needs closing in a notebook --
saved as PNG, and their Path returned. The latency tables and the figures are defined here; the
tables of the other records (accuracy, COCO, profiles, sweep, extras, tail, processes) in
:mod:`blendstudy.report_records`, re-exported here so ``report.<name>`` reaches them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from blendstudy.emulation import EMULATED_NOTE, emulated, says_emulated
from blendstudy.measure.latency import LatencyRun, LatencyStats, PairedComparison
from blendstudy.report_records import accuracy_table, coco_table, efficiency_table
from blendstudy.report_records import efficiency_row as efficiency_row
from blendstudy.report_records import extras_table as extras_table
from blendstudy.report_records import gate_line as gate_line
from blendstudy.report_records import process_table as process_table
from blendstudy.report_records import profile_overhead_table as profile_overhead_table
from blendstudy.report_records import stage_table as stage_table
from blendstudy.report_records import sweep_table as sweep_table
from blendstudy.report_records import tail_table as tail_table

PathLike = Union[str, "os.PathLike[str]"]
LatencyLike = Union[LatencyStats, LatencyRun, float, int]


# ----------------------------------------------------------------------------- tables
def _latency_ms(value: LatencyLike) -> float:
    """Mean latency in ms of a LatencyStats / LatencyRun, or a number already in ms."""
    if isinstance(value, LatencyRun):
        return float(value.stats.mean)
    if isinstance(value, LatencyStats):
        return float(value.mean)
    return float(value)


def pct_change(new: float, old: float) -> str:
    """Signed percentage change from ``old`` to ``new``: pct_change(39.5, 144) == "-72.6%"."""
    return f"{(new / old - 1.0) * 100.0:+.1f}%"


def change_column(reference: str) -> str:
    """The name of a latency-change column, with its sign convention: "latency change vs p3
    (negative = faster)"."""
    return f"latency change vs {reference} (negative = faster)"


def speedup_column(reference: str) -> str:
    """The name of a paired-speedup column, with its sign convention."""
    return f"paired speedup vs {reference} (above 1 = faster)"


@says_emulated
def latency_table(
    rows: Sequence[Tuple[str, Union[LatencyStats, LatencyRun]]],
    baseline: Optional[Union[int, str]] = None,
) -> pd.DataFrame:
    """One row per recipe: recipe, latency_ms (mean), P50, P90, P99 (ms), throughput (images/s)
    and "latency change vs baseline (negative = faster)" (mean latency vs the baseline row as
    "-72.6%"; "baseline" on that row).
    ``baseline``: row index or recipe name; default the first row."""
    rows = list(rows)
    if not rows:
        raise ValueError("latency_table needs at least one row")
    stats = [s.stats if isinstance(s, LatencyRun) else s for _, s in rows]
    names = [str(n) for n, _ in rows]
    if baseline is None:
        b = 0
    elif isinstance(baseline, str):
        if baseline not in names:
            raise ValueError(f"baseline {baseline!r} is not one of {names}")
        b = names.index(baseline)
    else:
        b = int(baseline)
    base = stats[b].mean
    return pd.DataFrame({
        "recipe": names,
        "latency_ms": [s.mean for s in stats],
        "P50": [s.p50 for s in stats],
        "P90": [s.p90 for s in stats],
        "P99": [s.p99 for s in stats],
        "throughput": [s.throughput for s in stats],
        change_column("baseline"): ["baseline" if i == b else pct_change(s.mean, base) for i, s in enumerate(stats)],
    })


@says_emulated
def stage_chain_table(rows: Sequence[Tuple[str, str, LatencyLike]]) -> pd.DataFrame:
    """The optimization chain: stage, change, latency_ms (mean, ms), the latency change vs the
    previous stage and vs the first stage (columns named by change_column), both as "-20.1%";
    "baseline" on the first row."""
    rows = list(rows)
    if not rows:
        raise ValueError("stage_chain_table needs at least one row")
    ms = [_latency_ms(v) for _, _, v in rows]
    relative = ["baseline"] + [pct_change(ms[i], ms[i - 1]) for i in range(1, len(ms))]
    cumulative = ["baseline"] + [pct_change(ms[i], ms[0]) for i in range(1, len(ms))]
    return pd.DataFrame({
        "stage": [str(s) for s, _, _ in rows],
        "change": [str(c) for _, c, _ in rows],
        "latency_ms": ms,
        change_column("previous"): relative,
        change_column(str(rows[0][0])): cumulative,
    })


@says_emulated
def paired_chain_table(stages: Sequence[str], comparisons: Mapping[str, Mapping[str, Any]],
                       baseline_ms: float) -> pd.DataFrame:
    """The optimization chain from the notebooks' PAIRED comparisons. `stages` in chain order, the
    first being the reference; `comparisons` maps "<stage> vs <other>" to a paired_compare result
    (a PairedComparison or its dict: median_speedup, ci_low, ci_high). Per stage: speedup vs the
    previous stage and vs the first (median and CI, NaN where that pair was not measured) and
    paired_ms = baseline_ms / speedup vs the first -- the first stage's latency carried along the
    chain by paired ratios, immune to the drift between notebooks that unpaired means carry.
    Columns: stage, speedup_column("previous") and speedup_column(<first>), each followed by its
    "<column> CI" ("low-high"), and paired_ms."""
    stages = [str(x) for x in stages]
    if not stages:
        raise ValueError("paired_chain_table needs at least one stage")
    ref = stages[0]

    def get(name: str, key: str) -> float:
        c = comparisons.get(name)
        if c is None:
            return float("nan")
        return float(c[key] if isinstance(c, Mapping) else getattr(c, key))

    def ci(name: str) -> str:
        return f"{get(name, 'ci_low'):.2f}-{get(name, 'ci_high'):.2f}" if name in comparisons else "not paired"

    vs_prev, vs_ref = speedup_column("previous"), speedup_column(ref)
    rows = []
    for i, st in enumerate(stages):
        if i == 0:
            rows.append({"stage": st, vs_prev: 1.0, f"{vs_prev} CI": "", vs_ref: 1.0,
                         f"{vs_ref} CI": "", "paired_ms": float(baseline_ms)})
            continue
        prev = f"{st} vs {stages[i - 1]}"
        base = f"{st} vs {ref}"
        med_b = get(base, "median_speedup")
        rows.append({
            "stage": st,
            vs_prev: get(prev, "median_speedup"),
            f"{vs_prev} CI": ci(prev),
            vs_ref: med_b,
            f"{vs_ref} CI": ci(base),
            "paired_ms": float(baseline_ms) / med_b if med_b == med_b and med_b > 0 else float("nan"),
        })
    return pd.DataFrame(rows)


@says_emulated
def paired_table(comparisons: Mapping[str, PairedComparison], **extra: Any) -> pd.DataFrame:
    """One row per paired A/B: comparison, median speedup (B over A) with its CI, the two
    medians (ms), images and rounds; ``extra`` columns (e.g. weights=...) appended."""
    rows = [{"comparison": k, "median speedup": c.median_speedup, "CI low": c.ci_low, "CI high": c.ci_high,
             "median A ms": c.median_a_ms, "median B ms": c.median_b_ms, "images": len(c.speedup),
             "rounds": c.rounds} for k, c in comparisons.items()]
    return pd.DataFrame(rows).assign(**extra) if rows else pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f", missing: str = "-") -> str:
    """GitHub-flavoured markdown of a table (no index); NaN / None shown as ``missing``."""
    clean = df.astype(object).where(df.notna(), None)
    return clean.to_markdown(index=False, floatfmt=floatfmt, missingval=missing)


# ----------------------------------------------------------------------------- figures


def _figure(figsize: Tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike) -> Path:
    if emulated():  # every figure of the emulated Ascend stack says so in each title
        for ax in fig.axes:
            ax.set_title(f"{ax.get_title()}\n[{EMULATED_NOTE}]".strip(), color="firebrick")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, format="png")
    fig.clf()
    return p


def _long_samples(samples: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    rows = [(str(name), float(v)) for name, vals in samples.items() for v in vals]
    if not rows:
        raise ValueError("no latency samples to plot")
    return pd.DataFrame(rows, columns=["recipe", "ms"])


def plot_latency_distribution(samples: Mapping[str, Sequence[float]], path: PathLike,
                              title: str = "Per-image latency") -> Path:
    """Violin (with quartiles) plus the individual samples per recipe; x axis in ms."""
    import seaborn as sns

    df = _long_samples(samples)
    order = list(dict.fromkeys(df["recipe"]))
    with sns.axes_style("whitegrid"):
        fig = _figure((7.0, 1.0 + 0.7 * len(order)))
        ax = fig.add_subplot()
        sns.violinplot(data=df, x="ms", y="recipe", order=order, hue="recipe", hue_order=order,
                       legend=False, cut=0, inner="quartile", density_norm="width", ax=ax)
        sns.stripplot(data=df, x="ms", y="recipe", order=order, color="k", size=2, alpha=0.4,
                      jitter=0.15, ax=ax)
        for i, name in enumerate(order):
            vals = df.loc[df["recipe"] == name, "ms"]
            ax.annotate(f"p50 {float(np.median(vals)):.1f} ms", (float(vals.max()), i), xytext=(6, 0),
                        textcoords="offset points", ha="left", va="center", fontsize=8)
        lo, hi = float(df["ms"].min()), float(df["ms"].max())
        ax.set_xlim(lo - 0.05 * (hi - lo + 1.0), hi + 0.25 * (hi - lo + 1.0))
        ax.set_xlabel("latency per image (ms)")
        ax.set_ylabel("")
        ax.set_title(title)
    return _save(fig, path)


def plot_latency_cdf(samples: Mapping[str, Sequence[float]], path: PathLike,
                     title: str = "Latency CDF", log_x: bool = False) -> Path:
    """Empirical CDF of per-image latency (ms) per recipe, with the p50 / p99 levels marked."""
    import seaborn as sns

    df = _long_samples(samples)
    with sns.axes_style("whitegrid"):
        fig = _figure((7.0, 4.0))
        ax = fig.add_subplot()
        sns.ecdfplot(data=df, x="ms", hue="recipe", ax=ax, log_scale=log_x)
        for q in (0.5, 0.99):
            ax.axhline(q, color="0.6", lw=0.8, ls="--")
            ax.text(1.0, q, f" p{int(q * 100)}", transform=ax.get_yaxis_transform(), va="center",
                    fontsize=8, color="0.4")
        ax.set_xlabel("latency per image (ms)")
        ax.set_ylabel("fraction of images")
        ax.set_title(title)
    return _save(fig, path)


def plot_stage_breakdown(data: Union[pd.DataFrame, Mapping[str, Mapping[str, float]]], path: PathLike,
                         title: str = "Where the time goes") -> Path:
    """Stacked horizontal bars: one bar per run, one segment per pipeline stage (ms), total at the
    end. ``data``: {run: {stage: ms}} or a DataFrame with runs as index and stages as columns."""
    import seaborn as sns

    if isinstance(data, pd.DataFrame):
        df = data.copy()
    else:
        stages = list(dict.fromkeys(s for per_run in data.values() for s in per_run))
        df = pd.DataFrame([[float(per_run.get(s, 0.0)) for s in stages] for per_run in data.values()],
                          index=[str(k) for k in data.keys()], columns=stages)
    df = df.fillna(0.0).astype(float)
    if df.empty:
        raise ValueError("no stage timings to plot")
    # one distinct colour per stage: tab10 repeats after ten and the profile has eleven stages
    n_colors = max(len(df.columns), 1)
    colors = sns.color_palette("tab10" if n_colors <= 10 else "tab20", n_colors=n_colors)
    with sns.axes_style("whitegrid"):
        fig = _figure((8.0, 1.4 + 0.6 * len(df)))
        ax = fig.add_subplot()
        y = np.arange(len(df))
        left = np.zeros(len(df))
        for k, stage in enumerate(df.columns):
            vals = df[stage].to_numpy()
            ax.barh(y, vals, left=left, color=colors[k % len(colors)], label=str(stage))
            left += vals
        for yi, total in zip(y, left):
            ax.text(total, yi, f" {total:.1f} ms", va="center", fontsize=8)
        ax.set_yticks(y, [str(i) for i in df.index])
        ax.invert_yaxis()
        ax.set_xlim(0, float(left.max()) * 1.15 if left.max() > 0 else 1.0)
        ax.set_xlabel("ms per image")
        ax.set_title(title)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_speedup_waterfall(stages: Sequence[Tuple[str, float]], path: PathLike,
                           title: Optional[str] = None) -> Path:
    """Waterfall from the baseline latency to the last stage's (all ms): the first bar is the
    baseline, each following bar floats between the previous and its own latency (green when it
    saves time, red when it costs), a final bar shows the result. Bars carry the ms change and
    the percent change vs the previous stage."""
    stages = [(str(n), float(ms)) for n, ms in stages]
    if not stages:
        raise ValueError("no stages to plot")
    import seaborn as sns

    names = [n for n, _ in stages]
    ms = [v for _, v in stages]
    with sns.axes_style("whitegrid"):
        fig = _figure((max(6.0, 1.1 * (len(stages) + 1)), 4.5))
        ax = fig.add_subplot()
        ax.bar(0, ms[0], color="0.55")
        ax.text(0, ms[0], f"{ms[0]:.1f}", ha="center", va="bottom", fontsize=8)
        for i in range(1, len(ms)):
            lo, hi = sorted((ms[i - 1], ms[i]))
            color = "tab:green" if ms[i] <= ms[i - 1] else "tab:red"
            ax.bar(i, hi - lo, bottom=lo, color=color)
            ax.plot([i - 1.4, i + 0.4], [ms[i - 1], ms[i - 1]], color="0.4", lw=0.7, ls=":")
            ax.text(i, hi, f"{ms[i] - ms[i - 1]:+.1f}\n({pct_change(ms[i], ms[i - 1])})",
                    ha="center", va="bottom", fontsize=7)
        labels = list(names)
        if len(ms) > 1:
            k = len(ms)
            ax.bar(k, ms[-1], color="tab:blue")
            ax.plot([k - 1.4, k + 0.4], [ms[-1], ms[-1]], color="0.4", lw=0.7, ls=":")
            ax.text(k, ms[-1], f"{ms[-1]:.1f}\n({ms[0] / ms[-1]:.2f}x)", ha="center", va="bottom",
                    fontsize=8)
            labels.append("result")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_ylim(0, max(ms) * 1.2)
        ax.set_ylabel("latency per image (ms)")
        ax.set_title(title or f"{names[0]} {ms[0]:.1f} ms -> {names[-1]} {ms[-1]:.1f} ms")
    return _save(fig, path)


__all__ = [
    "efficiency_table",
    "paired_table",
    "pct_change",
    "change_column",
    "speedup_column",
    "latency_table",
    "stage_chain_table",
    "paired_chain_table",
    "accuracy_table",
    "coco_table",
    "to_markdown",
    "plot_latency_distribution",
    "plot_latency_cdf",
    "plot_stage_breakdown",
    "plot_speedup_waterfall",
]


