"""P3 as the seed measured it: dynamo's default recompile limit, shapes past it eager (counted per
image); P4 raises the limit to 32, each for its own compiled parts only (the process's dynamo
setting stays as it is). study.steps.warm_shapes on the tiny model with dynamo's "eager"
backend (what is compiled is a graph either way; no inductor build in a unit test), and the
finding of blendstudy.fallbacks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from blendstudy import device as devmod
from blendstudy import fallbacks, optimize
from blendstudy.loading import load_pipeline
from blendstudy.stage_results import PaddedShapes, ShapeCompile
from blendstudy.study.steps import images_by_shape, warm_shapes

# (h, w) -> padded input of the tiny model (short side 384, long side <= 640), padded to 32 and 64:
# 480x640 -> 384x512, 427x640 -> 384x576, 640x480 -> 512x384: three shapes at either padding
SIZES = {"a": (480, 640), "b": (427, 640), "c": (640, 480), "d": (480, 640)}


@pytest.fixture
def study(monkeypatch, dynamo_limit):
    """The tiny model compiled with dynamo's eager backend, dynamo's default limit patched to 2, and
    four benchmark images of three shapes (a and d share one)."""
    monkeypatch.setattr(devmod, "default_compile_backend", lambda device: "eager")
    monkeypatch.setattr(optimize, "default_recompile_limit", lambda: 2)
    base = load_pipeline("BlendMask/Tiny_synthetic", "tiny_synthetic", "cpu").pipeline
    rng = np.random.default_rng(0)
    images = {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in SIZES.items()}
    return SimpleNamespace(base=base, ctx=SimpleNamespace(images=images, device=torch.device("cpu")))


def _graph(rows):
    return [(tuple(r.shape), r.graph, r.images) for r in rows]


def test_p3_keeps_dynamos_default_limit_and_runs_the_shapes_past_it_eager(study, dynamo_limit):
    process_limit = dynamo_limit.recompile_limit
    pipe = optimize.build_pipeline(study.base, "p3")
    assert pipe.recipe_info["compile"].recompile_limit == 2  # dynamo's default (patched), not raised
    rows = warm_shapes(study.ctx, "p3", pipe)
    assert _graph(rows) == [((384, 512), "compiled", 2), ((384, 576), "compiled", 1), ((512, 384), "eager", 1)]
    assert {r.recompile_limit for r in rows} == {2}
    assert dynamo_limit.recompile_limit == process_limit  # the limit was P3's backbone's own
    assert all(r.pad_multiple == 32 and r.first_call_ms > 0 for r in rows)
    # the eager shape stays eager: calling it again compiles nothing
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    pipe(study.ctx.images["c"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    # warming again reports the same rows (nothing new compiled, nothing re-timed)
    assert warm_shapes(study.ctx, "p3", pipe) is rows
    assert fallbacks.finding(rows) == ("p3 (recompile limit 2, pad 32): compiled 2 of 3 shapes; 1 (512x384) ran "
                                       "eager: 1 of 4 benchmark images.")


def test_p4_raises_the_limit_to_32_even_after_p3_hit_its_own_in_the_same_process(study, dynamo_limit):
    process_limit = dynamo_limit.recompile_limit
    p3 = optimize.build_pipeline(study.base, "p3")
    p4 = optimize.build_pipeline(study.base, "p4")  # P4's limit is its backbone's own ...
    assert dynamo_limit.recompile_limit == process_limit
    assert [r.graph for r in warm_shapes(study.ctx, "p3", p3)].count("eager") == 1  # ... P3 still gets 2
    rows = warm_shapes(study.ctx, "p4", p4)
    assert p4.recipe_info["compile"].recompile_limit == optimize.RECOMPILE_LIMIT == 32
    assert _graph(rows) == [((384, 512), "compiled", 2), ((384, 576), "compiled", 1), ((512, 384), "compiled", 1)]
    assert {r.recompile_limit for r in rows} == {32} and dynamo_limit.recompile_limit == process_limit
    # and P3, called again after P4 ran, still has only its own two graphs: its third shape stays eager
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    p3(study.ctx.images["c"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert all(r.pad_multiple == 64 for r in rows)
    assert fallbacks.finding(rows) == ("p4 (recompile limit 32, pad 64): 3 shapes, all compiled; none of the 4 "
                                       "benchmark images ran eager.")


def test_a_recipe_that_compiles_nothing_warms_nothing(study):
    pipe = optimize.build_pipeline(study.base, "p2")
    assert warm_shapes(study.ctx, "p2", pipe) == []
    assert list(images_by_shape(study.ctx, pipe).values()) == [["a", "d"], ["b"], ["c"]]


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).relu()


def test_each_compiled_module_has_its_own_code_so_its_own_limit(dynamo_limit):
    """Two compiled instances of one class: the first hitting its limit leaves the second free."""
    dynamo_limit.recompile_limit = 1
    first, second = (torch.compile(optimize.own_forward(_Tiny()), backend="eager", dynamic=False) for _ in "ab")
    assert first._orig_mod.forward.__code__ is not second._orig_mod.forward.__code__
    counters = torch._dynamo.utils.counters["stats"]
    for model, expected in ((first, [1, 0]), (second, [1, 0])):
        new = []
        for size in (8, 9):
            before = counters["unique_graphs"]
            model(torch.zeros(1, 3, size, size))
            new.append(counters["unique_graphs"] - before)
        assert new == expected
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(first(x), first._orig_mod.conv(x).relu())


def test_default_recompile_limit_is_dynamos_whatever_the_knob_says(dynamo_limit):
    dynamo_limit.recompile_limit = 32
    assert optimize.default_recompile_limit() == 8


ROWS = [
    ShapeCompile("p3", (384, 512), pad_multiple=32, image="a", images=5, first_call_ms=30000.0, recompile_limit=8,
                 graph="compiled"),
    ShapeCompile("p3", (384, 608), pad_multiple=32, image="b", images=4, first_call_ms=200.0, recompile_limit=8,
                 graph="eager"),
    ShapeCompile("p3", (352, 640), pad_multiple=32, image="c", images=1, first_call_ms=200.0, recompile_limit=8,
                 graph="eager"),
    ShapeCompile("p4", (384, 640), pad_multiple=64, image="a", images=10, first_call_ms=3000.0, recompile_limit=32,
                 graph="compiled"),
]


def test_by_recipe_counts_shapes_and_images():
    p3, p4 = fallbacks.by_recipe(ROWS)
    assert (p3["shapes"], p3["compiled"], p3["eager"], p3["images"], p3["eager images"]) == (3, 1, 2, 10, 5)
    assert p3["eager shapes"] == [(384, 608), (352, 640)] and p3["recompile limit"] == 8
    assert (p4["shapes"], p4["eager"], p4["eager images"], p4["pad multiple"]) == (1, 0, 0, 64)


def test_finding_says_what_each_recipe_got():
    assert fallbacks.finding(ROWS) == (
        "p3 (recompile limit 8, pad 32): compiled 1 of 3 shapes; 2 (384x608, 352x640) ran eager: 5 of 10 "
        "benchmark images. p4 (recompile limit 32, pad 64): 1 shape, all compiled; none of the 10 benchmark "
        "images ran eager.")
    assert fallbacks.finding([]) == "Nothing was compiled."


def test_shape_table_has_a_row_per_shape():
    table = fallbacks.shape_table(ROWS)
    assert list(table["graph"]) == ["compiled", "eager", "eager", "compiled"]
    assert list(table.columns[:4]) == ["recipe", "shape (h, w)", "pad multiple", "graph"]
    assert fallbacks.shape_table([]).empty


def test_distinct_shapes_table_shows_each_paddings_shapes():
    table = fallbacks.distinct_shapes_table([PaddedShapes("p3", 32, [(64, 96), (96, 64)]), PaddedShapes("p4", 64, [])])
    assert list(table.columns) == ["recipe", "pad multiple", "distinct shapes", "shapes (h, w)"]
    assert table["distinct shapes"].tolist() == [2, 0] and table.loc[0, "shapes (h, w)"] == [[64, 96], [96, 64]]
