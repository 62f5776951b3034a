"""What the compiled recipes' shapes got: a compiled graph, or an eager fallback past dynamo's
recompile limit (the seed's P3 problem, P4's fix), from the rows of study.steps.warm_shapes
(a blendstudy.stage_results.ShapeCompile per recipe and distinct input shape: recipe, shape,
pad_multiple, images, recompile_limit, graph = "compiled" | "eager"), and P4's distinct shapes
per padding (PaddedShapes). Tables for the notebooks and the finding in words.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import pandas as pd

from blendstudy.emulation import says_emulated
from blendstudy.stage_results import PaddedShapes, ShapeCompile

__all__ = ["by_recipe", "distinct_shapes_table", "finding", "shape_table"]

_SHAPE_COLUMNS = ["recipe", "shape (h, w)", "pad multiple", "graph", "images", "first call ms", "recompile limit"]


@says_emulated
def shape_table(rows: Sequence[ShapeCompile]) -> pd.DataFrame:
    """One row per recipe and shape, in the order they were compiled: compiled or eager, and how
    many benchmark images have that shape."""
    return pd.DataFrame([{k: r.row()[k] for k in _SHAPE_COLUMNS} for r in rows], columns=_SHAPE_COLUMNS)


def distinct_shapes_table(shapes: Sequence[PaddedShapes]) -> pd.DataFrame:
    """P4's distinct shapes: per recipe, its pad multiple, how many distinct shapes and which (h, w)."""
    return pd.DataFrame([s.row() for s in shapes], columns=["recipe", "pad multiple", "distinct shapes",
                                                            "shapes (h, w)"])


def by_recipe(rows: Sequence[ShapeCompile]) -> List[Dict[str, Any]]:
    """Per recipe (first-seen order): its recompile limit and pad multiple, shapes compiled and
    eager, and benchmark images that ran eager (every image of an eager shape does, on every call)."""
    out: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r.recipe, {"recipe": r.recipe, "pad multiple": r.pad_multiple,
                                      "recompile limit": r.recompile_limit, "shapes": 0,
                                      "compiled": 0, "eager": 0, "images": 0, "eager images": 0,
                                      "eager shapes": []})
        eager = r.graph == "eager"
        n = int(r.images or 0)
        s["shapes"] += 1
        s["eager" if eager else "compiled"] += 1
        s["images"] += n
        if eager:
            s["eager images"] += n
            s["eager shapes"].append(tuple(r.shape))
    return list(out.values())


def _shape(hw: Sequence[int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def finding(rows: Sequence[ShapeCompile]) -> str:
    """What the run found, one sentence per compiled recipe, e.g. "p3 (recompile limit 8, pad 32):
    compiled 8 of 9 shapes; 1 (384x608) ran eager: 4 of 40 benchmark images."."""
    if not rows:
        return "Nothing was compiled."
    said = []
    for s in by_recipe(rows):
        head = f"{s['recipe']} (recompile limit {s['recompile limit']}, pad {s['pad multiple']}): "
        if not s["eager"]:
            shapes = f"{s['shapes']} shape" + ("s" if s["shapes"] != 1 else "")
            said.append(head + f"{shapes}, all compiled; none of the {s['images']} benchmark images ran eager.")
        else:
            which = ", ".join(_shape(hw) for hw in s["eager shapes"])
            said.append(head + f"compiled {s['compiled']} of {s['shapes']} shapes; {s['eager']} ({which}) ran "
                        f"eager: {s['eager images']} of {s['images']} benchmark images.")
    return " ".join(said)
