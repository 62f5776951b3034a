"""The roofline's table and figure (rows from blendstudy.measure.roofline, as P4 and P6 record them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import pandas as pd

from blendstudy.emulation import EMULATED_NOTE, emulated, says_emulated
from blendstudy.jsonable import to_jsonable

PathLike = Union[str, Path]

__all__ = ["network_and_host", "plot_roofline", "roofline_frame", "roofline_summary"]


def _dicts(rows: Sequence[Any]) -> list:
    return [r if isinstance(r, Mapping) else to_jsonable(r) for r in rows]


@says_emulated
def roofline_frame(rows: Sequence[Any]) -> pd.DataFrame:
    """One line per (pipeline, part): precision, GFLOP per image, median ms, achieved GFLOP/s, the
    precision's measured peak and the percentage of it (host parts: time only, "-" elsewhere)."""
    df = pd.DataFrame(_dicts(rows))
    if df.empty:
        return df
    out = pd.DataFrame({
        "pipeline": df["pipeline"], "part": df["part"], "precision": df["precision"],
        "GFLOP/image": df["gflop"].round(3), "ms": df["ms"].round(2),
        "achieved GFLOP/s": df["achieved_gflops"].round(1), "peak GFLOP/s": df["peak_gflops"].round(1),
        "% of peak": (df["fraction_of_peak"] * 100).round(1),
        "note": ["over peak: count, peak or kernel (see blendstudy.measure.roofline)" if o else ""
                 for o in df.get("over_peak", pd.Series([False] * len(df)))],
    })
    return out.astype(object).where(out.notna(), "-")


@says_emulated
def roofline_summary(rows: Sequence[Any]) -> pd.DataFrame:
    """Per pipeline: total GFLOP, total part ms, the network parts' share of the time and their
    FLOP-weighted percentage of peak (what the network achieves), and the slowest part."""
    df = pd.DataFrame(_dicts(rows))
    if df.empty:
        return df
    out = []
    for name, g in df.groupby("pipeline", sort=False):
        net = g[g["gflop"] > 0]
        net_ms = float(net["ms"].sum())
        achieved = float(net["gflop"].sum()) / (net_ms / 1000.0) if net_ms > 0 else None
        peak = float((net["peak_gflops"] * net["gflop"]).sum() / net["gflop"].sum()) if len(net) else None
        out.append({"pipeline": name, "GFLOP/image": round(float(g["gflop"].sum()), 3),
                    "ms (parts)": round(float(g["ms"].sum()), 1),
                    "GEMM parts' share of time %": round(100 * net_ms / max(float(g["ms"].sum()), 1e-9), 1),
                    "GEMM parts' % of peak": None if not achieved or not peak else round(100 * achieved / peak, 1),
                    "slowest part": g.loc[g["ms"].idxmax(), "part"]})
    return pd.DataFrame(out)


#: the parts that are the network (a PyTorch recipe's, or an offline engine's dense network); the rest
#: -- pre-processing, decode+NMS, blender, paste -- is the host work around it
NETWORK_PARTS = ("backbone+FPN", "FCOS head", "basis module", "dense network")


def _split(df: pd.DataFrame, pipeline: str) -> Optional[dict]:
    g = df[df["pipeline"] == pipeline]
    if g.empty:
        return None
    net = g[g["part"].isin(NETWORK_PARTS) & (g["gflop"] > 0)]
    net_ms = float(net["ms"].sum())
    peak_ms = float((net["gflop"] / net["peak_gflops"]).sum()) * 1000.0 if net["peak_gflops"].notna().all() else None
    precisions = "+".join(dict.fromkeys(net["precision"])) or "-"
    return {"net_ms": net_ms, "host_ms": float(g["ms"].sum()) - net_ms, "precision": precisions,
            "pct": None if not peak_ms or net_ms <= 0 else 100.0 * peak_ms / net_ms}


def network_and_host(rows: Sequence[Any], a: str, b: str) -> Optional[str]:
    """Where two pipelines' times differ, from their roofline rows: each one's network (NETWORK_PARTS)
    in ms, its precision and the share of that precision's measured peak it achieves
    (the time the FLOPs would take at peak over the time they took), and its host work in ms; then
    which of the two accounts for most of the difference. None when either has no rows."""
    df = pd.DataFrame(_dicts(rows))
    if df.empty:
        return None
    x, y = _split(df, a), _split(df, b)
    if x is None or y is None:
        return None

    def one(name: str, s: dict) -> str:
        pct = "" if s["pct"] is None else f", {s['pct']:.0f}% of its peak"
        return f"{name}: network {s['net_ms']:.1f} ms in {s['precision']}{pct}, host {s['host_ms']:.1f} ms"

    d_net, d_host = y["net_ms"] - x["net_ms"], y["host_ms"] - x["host_ms"]
    side = "network" if abs(d_net) >= abs(d_host) else "host work"
    return (f"{one(a, x)}; {one(b, y)}. {b} minus {a}: network {d_net:+.1f} ms, host {d_host:+.1f} ms "
            f"-- the {side} accounts for most of the difference.")


def plot_roofline(rows: Sequence[Any], path: PathLike, title: Optional[str] = None) -> Path:
    """Bars of each part's achieved percentage of its precision's measured peak, one colour per
    pipeline (parts with GEMM FLOPs only); saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = pd.DataFrame(_dicts(rows))
    df = df[df["fraction_of_peak"].notna()].assign(pct=lambda d: d["fraction_of_peak"] * 100)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(10, 0.35 * max(len(df), 8) + 1.5))
        sns.barplot(data=df, y="part", x="pct", hue="pipeline", ax=ax, orient="h")
        ax.set_xlabel("achieved FLOP/s, % of this process's measured GEMM peak for the part's precision")
        ax.set_ylabel("")
        title = title or "Roofline: each part against its precision's peak"
        if emulated():  # every figure of the emulated Ascend stack says so in its title
            ax.set_title(f"{title}\n[{EMULATED_NOTE}]", color="firebrick")
        else:
            ax.set_title(title)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return path
