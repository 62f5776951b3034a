"""The figure each stage notebook (P0..P4) ends with, chosen for what that stage changes:

    P0  plot_pixel_difference  the resized images, PIL against the device, per image
    P1  plot_decode            decode+NMS against the rest of an image, before and after
    P2  plot_sweep             each runtime setting's P50, the best one highlighted
    P3  plot_compile           per padded shape: first call (the compile) against the steady call
    P4  plot_shapes_and_tail   the distinct shapes at each padding, and the fastest recipe's tail

Each ``plot_*`` takes the stage's record (blendstudy.stage_results: ResizeStageResult for P0 ...
PaddingStageResult for P4) and a path, draws with seaborn
on a matplotlib ``Figure`` with an Agg canvas (no pyplot state), saves a PNG and returns its Path.
The data each one plots comes from a ``*_frame`` function of the record's fields, so what a figure
shows can be read (and tested) as a DataFrame; a record without the stage's part (another stage's,
or the common StageResult) gives a figure that says so. On the emulated Ascend stack every title says so
(blendstudy.emulation.EMULATED_NOTE).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from blendstudy import fallbacks
from blendstudy.emulation import EMULATED_NOTE, emulated
from blendstudy.tables import ci_text, sig

__all__ = ["compile_frame", "decode_frame", "pixel_difference_frame", "plot_compile", "plot_decode",
           "plot_pixel_difference", "plot_shapes_and_tail", "plot_sweep", "shapes_frame", "sweep_frame",
           "tail_frame"]

PathLike = Union[str, "os.PathLike[str]"]
DECODE_PART = "decode+NMS"  # the stage profile's name for the FCOS decode and NMS (P1's change)
_GRAPH_COLORS = {"compiled": "tab:blue", "eager": "tab:red"}


# ----------------------------------------------------------------------------- drawing helpers
def _figure(size: Tuple[float, float], ncols: int = 1, **subplots: Any) -> Tuple[Any, List[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(np.atleast_1d(fig.subplots(1, ncols, squeeze=False, **subplots)[0]))


def _save(fig: Any, path: PathLike) -> Path:
    """Save as PNG; on the emulated stack every panel title and the figure's title say so."""
    if emulated():
        for ax in fig.axes:
            ax.set_title(f"{ax.get_title()}\n[{EMULATED_NOTE}]".strip(), color="firebrick")
        if fig.get_suptitle():
            fig.suptitle(f"{fig.get_suptitle()}\n[{EMULATED_NOTE}]", color="firebrick")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, format="png")
    fig.clf()
    return p


def _nothing(ax: Any, what: str) -> None:
    """An empty panel that says what the record lacks, instead of a notebook that stops."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, fontsize=10, wrap=True)


def _style():
    import seaborn as sns

    return sns.axes_style("whitegrid")


# ----------------------------------------------------------------------------- P0
def pixel_difference_frame(rows: Sequence[Any]) -> pd.DataFrame:
    """One row per image of ``resize_difference`` (P0, a PixelDifference each): image, size, mean /
    p99 / max absolute difference in grey levels (0-255), differs (share of values that differ, 0-1)
    and differs %; the largest difference first, then the largest share."""
    cols = ["image", "size", "mean", "p99", "max", "differs"]
    df = pd.DataFrame([{k: getattr(r, k) for k in cols} for r in rows], columns=cols)
    for c in cols[2:]:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df["differs %"] = df["differs"] * 100.0
    return df.sort_values(["max", "differs"], ascending=False, kind="stable").reset_index(drop=True)


def plot_pixel_difference(result: Any, path: PathLike, title: Optional[str] = None) -> Path:
    """P0: per image, the share of resized values that differ from PIL's (left) and the largest,
    99th-percentile and mean difference in grey levels (right), images ordered by the largest."""
    import seaborn as sns

    df = pixel_difference_frame(getattr(result, "resize_difference", []))
    with _style():
        fig, (left, right) = _figure((9.0, 1.8 + 0.22 * max(len(df), 3)), ncols=2, sharey=True)
        if df.empty:
            _nothing(left, "no per-image pixel difference in these results")
            right.set_axis_off()
        else:
            sns.barplot(data=df, x="differs %", y="image", color="tab:blue", ax=left)
            left.set_xlabel("values that differ (%)")
            sns.barplot(data=df, x="max", y="image", color="0.8", label="max", ax=right)
            sns.scatterplot(data=df, x="p99", y="image", marker="D", color="tab:orange", label="p99", ax=right)
            sns.scatterplot(data=df, x="mean", y="image", marker="o", color="k", s=18, label="mean", ax=right)
            right.set_xlabel("absolute difference (grey levels, 0-255)")
            right.legend(loc="lower right", fontsize=8)
            left.set_title("share of values that differ")
            right.set_title("largest, p99 and mean difference")
        left.set_ylabel("")
        said = (f"\nlargest difference {sig(df['max'].max())} grey levels; {sig(df['differs %'].mean())} % of "
                f"values differ (mean over {len(df)} images)") if not df.empty else ""
        fig.suptitle(title or f"{result.stage}: resized pixels, PIL against the device, per image{said}")
    return _save(fig, path)


# ----------------------------------------------------------------------------- P1
def decode_frame(profiles: Mapping[str, Any], part: str = DECODE_PART) -> pd.DataFrame:
    """Per stage profile (StageProfile, or its stage_ms mapping) two rows: ``part`` and "the rest"
    (every other stage's median summed): profile, part, ms, share (of the two together, 0-1)."""
    rows = []
    for name, prof in profiles.items():
        stage_ms = {k: float(v) for k, v in getattr(prof, "stage_ms", prof).items()}
        mine = stage_ms.get(part, 0.0)
        rest = sum(v for k, v in stage_ms.items() if k != part)
        for label, ms in ((part, mine), ("the rest", rest)):
            rows.append({"profile": str(name), "part": label, "ms": ms, "share": ms / max(mine + rest, 1e-12)})
    return pd.DataFrame(rows, columns=["profile", "part", "ms", "share"])


def plot_decode(result: Any, path: PathLike, title: Optional[str] = None) -> Path:
    """P1: stacked bars per profile (the previous stage's and this one's, on the same images):
    decode+NMS and the rest of the image's stages in ms, with the paired end-to-end speedup
    (95 % CI) of this stage over the previous one in the title."""
    df = decode_frame(getattr(result, "decode_profiles", {}))
    with _style():
        fig, (ax,) = _figure((8.0, 1.8 + 0.6 * max(df["profile"].nunique(), 1)))
        if df.empty:
            _nothing(ax, "no stage profiles in these results")
        names = list(dict.fromkeys(df["profile"]))
        left = np.zeros(len(names))
        for part, color in ((DECODE_PART, "tab:red"), ("the rest", "0.75")):
            ms = np.array([float(df.loc[(df["profile"] == n) & (df["part"] == part), "ms"].sum()) for n in names])
            ax.barh(names, ms, left=left, color=color, label=part)
            if part == DECODE_PART:
                for y, v in enumerate(ms):
                    ax.text(v, y, f" {sig(v)} ms", va="center", fontsize=8)
            left += ms
        for y, total in enumerate(left):
            ax.text(total, y, f" {sig(total)} ms", va="center", fontsize=8)
        if names:
            ax.invert_yaxis()
            ax.set_xlim(0, float(left.max()) * 1.15 or 1.0)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("ms per image (median per stage, summed)")
        comp = result.comparisons.get(f"{result.stage} vs {result.previous}")
        speed = (f"\npaired speedup vs {result.previous}: {ci_text(comp.median_speedup, comp.ci_low, comp.ci_high)}"
                 " (above 1 = faster)") if comp is not None else ""
        ax.set_title(title or f"{result.stage}: {DECODE_PART} against the rest, before and after{speed}")
    return _save(fig, path)


# ----------------------------------------------------------------------------- P2
def sweep_frame(sweep: Sequence[Any], best: Any = None) -> pd.DataFrame:
    """One row per runtime setting (SweepResult): setting, p50_ms, p99_ms, mean_ms, best (the
    setting of ``best``, default the lowest P50), error; fastest P50 first, failed settings last."""
    rows = [{"setting": s.config.name, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "mean_ms": s.mean_ms,
             "error": s.error} for s in sweep]
    df = pd.DataFrame(rows, columns=["setting", "p50_ms", "p99_ms", "mean_ms", "error"])
    for c in ("p50_ms", "p99_ms", "mean_ms"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df = df.sort_values("p50_ms", na_position="last", kind="stable").reset_index(drop=True)
    if best is not None:
        name = best.config.name
    else:
        name = df["setting"].iloc[0] if len(df) and not np.isnan(df["p50_ms"].iloc[0]) else None
    df.insert(4, "best", df["setting"] == name)
    return df


def plot_sweep(result: Any, path: PathLike, title: Optional[str] = None) -> Path:
    """P2: each runtime setting's P50 (ms) as a bar, fastest first, the best setting highlighted,
    its P99 as a mark; a setting that could not be measured is listed with its error."""
    import seaborn as sns

    df = sweep_frame(getattr(result, "sweep", []), getattr(result, "best", None))
    with _style():
        fig, (ax,) = _figure((8.0, 1.8 + 0.45 * max(len(df), 2)))
        if df.empty:
            _nothing(ax, "no runtime sweep in these results")
        else:
            df["which"] = np.where(df["best"], "best", "other")
            sns.barplot(data=df, x="p50_ms", y="setting", hue="which", dodge=False,
                        palette={"best": "tab:green", "other": "0.7"}, legend=False, ax=ax)
            sns.scatterplot(data=df, x="p99_ms", y="setting", marker="|", s=200, color="k", label="P99", ax=ax)
            for y, row in df.iterrows():
                text = f" {sig(row['p50_ms'])} ms" if not np.isnan(row["p50_ms"]) else f" failed: {row['error']}"
                ax.text(0 if np.isnan(row["p50_ms"]) else row["p50_ms"], y, text, va="center", fontsize=8)
            ax.set_xlim(0, float(np.nanmax(df[["p50_ms", "p99_ms"]].to_numpy(), initial=1.0)) * 1.15)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("P50 per image (ms), each setting in its own process")
        ax.set_ylabel("")
        best = df.loc[df["best"], "setting"].tolist() if not df.empty else []
        ax.set_title(title or f"{result.stage}: runtime sweep (best: {best[0] if best else 'none'})")
    return _save(fig, path)


# ----------------------------------------------------------------------------- P3
def _image_medians(run: Any) -> Dict[str, float]:
    """Median ms per image label of a LatencyResult (its samples_ms beside its labels)."""
    if run is None:
        return {}
    by: Dict[str, List[float]] = {}
    for label, ms in zip(run.labels, run.samples_ms):
        by.setdefault(str(label), []).append(float(ms))
    return {k: float(np.median(v)) for k, v in by.items()}


def compile_frame(rows: Sequence[Any], runs: Mapping[str, Any], recipe: str,
                  previous: Optional[str] = None) -> pd.DataFrame:
    """One row per padded shape ``recipe`` met (its ShapeCompile rows, blendstudy.fallbacks): shape
    ("HxW"), graph (compiled / eager), images, first call s (the compile, for a compiled shape),
    steady ms (median of ``recipe``'s measured calls on the shape's first image, from ``runs``) and
    previous ms (the same for ``previous``, None without it)."""
    mine, before = _image_medians(runs.get(recipe)), _image_medians(runs.get(previous) if previous else None)
    out = []
    for r in rows:
        if r.recipe != recipe:
            continue
        h, w = r.shape
        image = str(r.image)
        out.append({"shape": f"{h}x{w}", "graph": r.graph, "images": int(r.images or 0),
                    "first call s": float(r.first_call_ms or 0.0) / 1000.0, "image": image,
                    "steady ms": mine.get(image), "previous ms": before.get(image)})
    cols = ["shape", "graph", "images", "first call s", "image", "steady ms", "previous ms"]
    return pd.DataFrame(out, columns=cols)


def plot_compile(result: Any, path: PathLike, title: Optional[str] = None) -> Path:
    """P3: per padded shape, its first call in seconds (left: the compile where a graph was made;
    eager shapes in red) against a steady call in ms (right: this stage and the previous stage on
    the shape's first image), with the compiled / eager count in the title."""
    import seaborn as sns

    rows = getattr(result, "compile", [])
    df = compile_frame(rows, result.runs, result.stage, result.previous)
    with _style():
        fig, (left, right) = _figure((10.0, 1.9 + 0.4 * max(len(df), 2)), ncols=2, sharey=True)
        if df.empty:
            _nothing(left, f"{result.stage} compiled nothing in these results")
            right.set_axis_off()
        else:
            sns.barplot(data=df, x="first call s", y="shape", hue="graph", dodge=False, palette=_GRAPH_COLORS, ax=left)
            for y, row in df.iterrows():
                left.text(row["first call s"], y, f" {sig(row['first call s'])} s"
                          + (" (eager: no graph)" if row["graph"] == "eager" else ""), va="center", fontsize=8)
            left.set_xlim(0, float(df["first call s"].max()) * 1.2 or 1.0)
            sns.scatterplot(data=df, x="steady ms", y="shape", hue="graph", palette=_GRAPH_COLORS, s=60,
                            legend=False, ax=right)
            if df["previous ms"].notna().any():
                sns.scatterplot(data=df, x="previous ms", y="shape", marker="o", facecolor="none",
                                edgecolor="0.3", s=60, label=f"{result.previous}", ax=right)
                right.legend(loc="lower right", fontsize=8)
            left.set_title("first call (s): the compile, where a graph was made")
            right.set_title(f"steady call (ms), {result.stage} (filled) and {result.previous}")
        left.set_ylabel("padded shape (h x w)")
        left.set_xlabel("first call (s)")
        right.set_xlabel("median ms per call on the shape's first image")
        s = next(iter(fallbacks.by_recipe([r for r in rows if r.recipe == result.stage])), None)
        said = (f": {s['compiled']} of {s['shapes']} shapes compiled (recompile limit {s['recompile limit']}), "
                f"{s['eager']} eager -- {s['eager images']} of {s['images']} images") if s else ""
        fig.suptitle(title or f"{result.stage}: compile against steady state{said}")
    return _save(fig, path)


# ----------------------------------------------------------------------------- P4
def shapes_frame(shapes: Sequence[Any], rows: Sequence[Any] = ()) -> pd.DataFrame:
    """One row per distinct padded shape of each recipe (P4's ``shapes``, a PaddedShapes per recipe):
    recipe, pad multiple, h, w, grid (e.g. "pad 64 (p4): 4 shapes"), and from the compile ``rows``
    (ShapeCompile) of the same recipe and shape images (benchmark images of that shape) and graph
    (compiled / eager); None where they do not say."""
    said = {(r.recipe, tuple(int(x) for x in r.shape)): r for r in rows}
    out = []
    for s in shapes:
        grid = f"pad {s.pad_multiple} ({s.recipe}): {len(s.shapes)} shapes"
        for h, w in s.shapes:
            row = said.get((s.recipe, (int(h), int(w))))
            out.append({"recipe": s.recipe, "pad multiple": s.pad_multiple, "h": int(h), "w": int(w), "grid": grid,
                        "images": getattr(row, "images", None), "graph": getattr(row, "graph", None)})
    return pd.DataFrame(out, columns=["recipe", "pad multiple", "h", "w", "grid", "images", "graph"])


def tail_frame(tail: Any) -> pd.DataFrame:
    """A TailBreakdown as three rows -- the whole run, its per-image medians (the images' part) and
    the one-image control run (the machine's part; absent without one): part, p50_ms, p99_ms,
    p99/p50, calls."""
    if tail is None:
        return pd.DataFrame(columns=["part", "p50_ms", "p99_ms", "p99/p50", "calls"])
    rows = [("the run", tail.p50_ms, tail.p99_ms, tail.p99_over_p50, tail.calls),
            ("the images\n(per-image medians)", tail.content_p50_ms, tail.content_p99_ms,
             tail.content_p99_over_p50, tail.inputs)]
    if tail.control_p99_over_p50 is not None:
        rows.append(("the machine\n(one image repeated)", tail.control_p50_ms, tail.control_p99_ms,
                     tail.control_p99_over_p50, tail.control_calls))
    return pd.DataFrame(rows, columns=["part", "p50_ms", "p99_ms", "p99/p50", "calls"])


def plot_shapes_and_tail(result: Any, path: PathLike, title: Optional[str] = None) -> Path:
    """P4, two panels: the distinct padded shapes (w x h) at the previous padding and at 64, sized
    by their benchmark images, eager ones crossed; and the fastest recipe's tail, P99/P50 of the run against its
    per-image medians and the one-image control run (result.extras.tail)."""
    import seaborn as sns

    shapes = shapes_frame(getattr(result, "shapes", []), getattr(result, "compile", []))
    extras = getattr(result, "extras", None)
    tail = tail_frame(extras.tail if extras is not None else None)
    with _style():
        fig, (left, right) = _figure((12.0, 4.6), ncols=2, width_ratios=(1.0, 1.2))
        if shapes.empty:
            _nothing(left, "no shapes in these results")
        else:
            sized = shapes["images"].notna().all()
            sns.scatterplot(data=shapes, x="w", y="h", hue="grid", style="grid", size="images" if sized else None,
                            sizes=(40, 320), alpha=0.6, markers=["o", "s", "^", "D"][:shapes["grid"].nunique()],
                            ax=left)
            eager = shapes[shapes["graph"] == "eager"]
            if len(eager):
                left.scatter(eager["w"], eager["h"], marker="x", s=90, color="tab:red", label="ran eager")
            left.legend(loc="best", fontsize=7)
            left.set_xlabel("padded width (px)")
            left.set_ylabel("padded height (px)")
            left.set_title("distinct padded shapes: a graph each, or eager")
        if tail.empty:
            _nothing(right, "no tail split in these results")
        else:
            sns.barplot(data=tail, x="p99/p50", y="part", color="tab:purple", ax=right)
            for y, row in tail.iterrows():
                right.text(row["p99/p50"], y, f" {row['p99/p50']:.2f} (P99 {sig(row['p99_ms'])} / P50 "
                           f"{sig(row['p50_ms'])} ms)", va="center", fontsize=8)
            right.axvline(1.0, color="0.4", lw=0.8, ls="--")
            right.set_xlim(0, float(tail["p99/p50"].max()) * 1.6)
            right.set_xlabel("P99 / P50")
            right.set_ylabel("")
            right.set_title(f"the tail of {extras.tail_recipe}: the images or the machine?")
        fig.suptitle(title or f"{result.stage}: shapes at each padding, and the tail")
    return _save(fig, path)
