"""The stage notebooks' records (P0..P4): the chain every stage shares, and each stage's own part.

:class:`StageResult` holds what every stage of the chain has: its latency runs (``runs``, with the
views of :class:`~blendstudy.recipe_runs.RecipeRuns`), the paired A/Bs, the accuracy gate and the
processes that measured them. One subclass per notebook adds only that notebook's part:

    p0_resize   ResizeStageResult    resize_difference: a PixelDifference per image
    p1_decode   DecodeStageResult    decode_profiles: the stage profile before and after
    p2_runtime  RuntimeStageResult   sweep, best, best_files, kernel
    p3_compile  CompileStageResult   compile: a ShapeCompile per recipe and padded shape
    p4_pad64    PaddingStageResult   compile, shapes (a PaddedShapes per recipe), dynamo_counters, extras

``STAGE_RECORDS`` says which record each stage recipe gets. :func:`upgrade_v1` turns a record
as results schema 1 wrote it (the one StageResult of every field, its rows as dicts with the
tables' column names) into what these records read. Units: ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from blendstudy.measure.agreement import AccuracyReport
from blendstudy.measure.latency import PairedComparison, TailBreakdown
from blendstudy.measure.pixels import PixelDifference
from blendstudy.measure.profile import StageProfile
from blendstudy.measure.roofline import RooflineRow
from blendstudy.recipe_runs import LatencyResult, RecipeRuns
from blendstudy.runtime import SweepResult

__all__ = ["CompileStageResult", "DecodeStageResult", "ExtrasResult", "PaddedShapes", "PaddingStageResult",
           "ResizeStageResult", "RuntimeStageResult", "STAGE_RECORDS", "ShapeCompile", "StageResult", "upgrade_v1"]


@dataclass
class ShapeCompile:
    """A compiled recipe's first call on one distinct padded input shape (study.steps.warm_shapes):
    its first image and how many benchmark images share the shape, the first call in ms (the
    compile, for a compiled shape), the recompile limit it ran under, and whether dynamo made a
    graph ("compiled") or the shape ran "eager" (past the limit)."""

    recipe: str
    shape: Tuple[int, int]  # (h, w)
    pad_multiple: int
    image: str
    images: int
    first_call_ms: float
    recompile_limit: int
    graph: str
    backend: str = ""

    def row(self) -> Dict[str, Any]:
        """As the tables show it (and as results schema 1 stored it)."""
        return {"recipe": self.recipe, "shape (h, w)": list(self.shape), "pad multiple": self.pad_multiple,
                "image": self.image, "images": self.images, "first call ms": self.first_call_ms,
                "recompile limit": self.recompile_limit, "graph": self.graph, "backend": self.backend}


@dataclass
class PaddedShapes:
    """The distinct padded input shapes (h, w) of the benchmark images under one recipe's padding."""

    recipe: str
    pad_multiple: int
    shapes: List[Tuple[int, int]] = field(default_factory=list)

    def row(self) -> Dict[str, Any]:
        """As the tables show it (and as results schema 1 stored it)."""
        return {"recipe": self.recipe, "pad multiple": self.pad_multiple, "distinct shapes": len(self.shapes),
                "shapes (h, w)": [list(s) for s in self.shapes]}


@dataclass
class ExtrasResult(RecipeRuns):
    """P4's recipes beyond the seed: their latency runs (``runs``, with the views of RecipeRuns:
    ``latency`` is LatencyStats by recipe), the gate against the baseline, paired speedups against
    the baseline, stage profiles, and the fastest recipe's tail split."""

    runs: Dict[str, LatencyResult] = field(default_factory=dict)
    accuracy: Dict[str, AccuracyReport] = field(default_factory=dict)
    gate: Dict[str, bool] = field(default_factory=dict)
    paired_vs_baseline: Dict[str, PairedComparison] = field(default_factory=dict)
    profiles: Dict[str, StageProfile] = field(default_factory=dict)
    tail_recipe: Optional[str] = None
    tail: Optional[TailBreakdown] = None
    same_as: Dict[str, str] = field(default_factory=dict)
    #: per recipe (the baseline included) and part: FLOPs, time, achieved vs this process's GEMM peak
    roofline: List[RooflineRow] = field(default_factory=list)


@dataclass
class StageResult(RecipeRuns):
    """A stage of the chain (P0..P4) against its previous stage and the baseline.

    runs (and its views latency / first_call_ms / samples_ms) keyed by recipe; comparisons by "<stage> vs <other>"
    (paired A/B); accuracy and gate by "<stage> vs <reference>". recipes: the recipe table, with
    any switch a device cannot run and why (``skipped``). Each stage notebook's own part is in its
    subclass (see the module's table).
    """

    stage: str
    previous: str
    recipes: List[Dict[str, Any]] = field(default_factory=list)
    runs: Dict[str, LatencyResult] = field(default_factory=dict)
    comparisons: Dict[str, PairedComparison] = field(default_factory=dict)
    accuracy: Dict[str, AccuracyReport] = field(default_factory=dict)
    gate: Dict[str, bool] = field(default_factory=dict)
    ap_note: str = ""
    processes: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    weights: str = ""
    random_weights: bool = False
    model: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ResizeStageResult(StageResult):
    """P0: resize on the device; how far its resized pixels are from PIL's, per image."""

    resize_difference: List[PixelDifference] = field(default_factory=list)


@dataclass
class DecodeStageResult(StageResult):
    """P1: the sync-free decode; the stage profile of the previous stage and this one, same images."""

    decode_profiles: Dict[str, StageProfile] = field(default_factory=dict)


@dataclass
class RuntimeStageResult(StageResult):
    """P2: the runtime sweep (one worker per setting), the best setting and the files it was
    written to (best_files: "json" / "sh" -> path), and what the notebook's own (interactive)
    kernel reads back about itself (``kernel``) -- on an NPU, the task queue torch_npu forces off
    there, which is why nothing is measured in the kernel."""

    sweep: List[SweepResult] = field(default_factory=list)
    best: Optional[SweepResult] = None
    best_files: Dict[str, str] = field(default_factory=dict)
    kernel: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CompileStageResult(StageResult):
    """P3: torch.compile; a row per recipe and distinct padded shape, compiled or eager."""

    compile: List[ShapeCompile] = field(default_factory=list)


@dataclass
class PaddingStageResult(CompileStageResult):
    """P4: pad to 64 (a compiled stage too): the distinct shapes at each padding, dynamo's counters
    ("stats", "frames", "recompiles"), and the recipes beyond the seed (``extras``, once run)."""

    shapes: List[PaddedShapes] = field(default_factory=list)
    dynamo_counters: Dict[str, Dict[str, int]] = field(default_factory=dict)
    extras: Optional[ExtrasResult] = None


#: Which record each stage recipe's measurement fills (any other stage: the common StageResult).
STAGE_RECORDS: Dict[str, type] = {"p0": ResizeStageResult, "p1": DecodeStageResult, "p2": RuntimeStageResult,
                                  "p3": CompileStageResult, "p4": PaddingStageResult}

_COMPILE_KEYS = {"shape (h, w)": "shape", "pad multiple": "pad_multiple", "first call ms": "first_call_ms",
                 "recompile limit": "recompile_limit"}
_SHAPES_KEYS = {"pad multiple": "pad_multiple", "shapes (h, w)": "shapes"}


def _renamed(row: Any, keys: Dict[str, str]) -> Any:
    return {keys.get(k, k): v for k, v in row.items()} if isinstance(row, dict) else row


def upgrade_v1(extra: Any) -> Any:
    """A stage record as results schema 1 wrote it, in schema 2's field names: compile and shapes
    rows keyed by field instead of column name, P4's ``extras.latency`` (its LatencyResults) as
    ``extras.runs``. Fields a stage's record no longer has are left for the reader to ignore; any
    other record comes back unchanged."""
    if not isinstance(extra, dict):
        return extra
    out = dict(extra)
    if isinstance(out.get("compile"), list):
        out["compile"] = [_renamed(r, _COMPILE_KEYS) for r in out["compile"]]
    if isinstance(out.get("shapes"), list):
        out["shapes"] = [_renamed(r, _SHAPES_KEYS) for r in out["shapes"]]
    extras = out.get("extras")
    if isinstance(extras, dict) and "runs" not in extras and "latency" in extras:
        out["extras"] = {**{k: v for k, v in extras.items() if k != "latency"}, "runs": extras["latency"]}
    return out
