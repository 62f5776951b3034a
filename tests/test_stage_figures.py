"""The figure each stage notebook ends with (blendstudy.stage_figures), on small hand-made records:
each writes a PNG, plots what the record says (its ``*_frame``), survives a record without that
stage's data, and on the emulated stack says so in every title."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from blendstudy import stage_figures as sf
from blendstudy.emulation import EMULATE_VAR, EMULATED_NOTE
from blendstudy.measure.latency import LatencyStats, PairedComparison, TailBreakdown
from blendstudy.measure.pixels import PixelDifference
from blendstudy.measure.profile import StageProfile
from blendstudy.results import (
    CompileStageResult,
    DecodeStageResult,
    ExtrasResult,
    LatencyResult,
    PaddingStageResult,
    ResizeStageResult,
    RuntimeStageResult,
    StageResult,
)
from blendstudy.runtime import RuntimeConfig, SweepResult
from blendstudy.stage_results import PaddedShapes, ShapeCompile

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def titles(monkeypatch):
    """The titles (each panel's, then the figure's own) of every figure saved during the test."""
    seen = []
    save = Figure.savefig

    def record(fig, *args, **kwargs):
        seen.append([ax.get_title() for ax in fig.axes] + ([fig.get_suptitle()] if fig.get_suptitle() else []))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return seen


def _png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
    return path


# ----------------------------------------------------------------------------- records
def _p0():
    rows = [PixelDifference("a.png", "64x48", mean=0.01, p99=0.0, max=1.0, differs=0.01),
            PixelDifference("b.png", "64x48", mean=0.0, p99=0.0, max=0.0, differs=0.0),
            PixelDifference("c.png", "48x64", mean=0.2, p99=1.0, max=2.0, differs=0.15)]
    return ResizeStageResult(stage="p0", previous="baseline", resize_difference=rows)


def _profile(stage_ms):
    total = sum(stage_ms.values())
    return StageProfile(stage_ms=stage_ms, samples_ms={k: [v] for k, v in stage_ms.items()}, total_ms=total,
                        end_to_end_ms=total, overhead_ms=0.0, peak_memory_mb=None, input_size="64x48", runs=1)


def _paired(a, b, speedup, low, high):
    return PairedComparison(name_a=a, name_b=b, labels=["a.png"], a_ms=[2.0], b_ms=[1.0], speedup=[speedup],
                            median_speedup=speedup, ci_low=low, ci_high=high, rounds=1, n_boot=10, seed=0)


def _p1():
    profiles = {"p0": _profile({"resize": 1.0, "decode+NMS": 4.0, "blender": 5.0}),
                "p1": _profile({"resize": 1.0, "decode+NMS": 1.0, "blender": 5.0})}
    return DecodeStageResult(stage="p1", previous="p0", decode_profiles=profiles,
                             comparisons={"p1 vs p0": _paired("p0", "p1", 1.42, 1.30, 1.55)})


def _sweep(name, p50, error=None):
    return SweepResult(config=RuntimeConfig(name=name), results_path=None, p50_ms=p50,
                       mean_ms=None if p50 is None else p50 + 1, p99_ms=None if p50 is None else p50 * 2, error=error)


def _p2():
    sweep = [_sweep("threads=1", 30.0), _sweep("broken", None, "worker died"), _sweep("threads=2", 20.0)]
    return RuntimeStageResult(stage="p2", previous="p1", sweep=sweep, best=sweep[2])


def _run(recipe, by_label):
    samples = [ms for ms_list in by_label.values() for ms in ms_list]
    labels = [label for label, ms_list in by_label.items() for _ in ms_list]
    return LatencyResult(recipe, LatencyStats.from_samples(samples), samples, labels, first_call_ms=samples[0])


def _compile_row(recipe, hw, image, images, ms, graph, pad=32, limit=8):
    return ShapeCompile(recipe, hw, pad, image, images, ms, limit, graph, "inductor")


def _p3():
    rows = [_compile_row("p3", (64, 96), "a.png", 2, 5000.0, "compiled"),
            _compile_row("p3", (96, 64), "c.png", 1, 40.0, "eager"),
            _compile_row("other", (64, 96), "a.png", 2, 7000.0, "compiled")]
    runs = {"p2": _run("p2", {"a.png": [10.0, 12.0, 11.0], "b.png": [9.0], "c.png": [14.0, 16.0]}),
            "p3": _run("p3", {"a.png": [6.0, 8.0, 7.0], "b.png": [5.0], "c.png": [15.0, 13.0]})}
    return CompileStageResult(stage="p3", previous="p2", compile=rows, runs=runs)


def _tail(control=True):
    return TailBreakdown(calls=20, p50_ms=10.0, p99_ms=15.0, p99_over_p50=1.5, inputs=4, content_p50_ms=10.0,
                         content_p99_ms=12.0, content_p99_over_p50=1.2, slowest_input="c.png", slowest_input_ms=12.0,
                         control_input="b.png" if control else None, control_calls=20 if control else None,
                         control_p50_ms=10.0 if control else None, control_p99_ms=11.0 if control else None,
                         control_p99_over_p50=1.1 if control else None)


def _p4():
    shapes = [PaddedShapes("p3", 32, [(64, 96), (96, 64), (64, 128)]), PaddedShapes("p4", 64, [(64, 128), (128, 64)])]
    rows = [_compile_row("p3", (64, 96), "a.png", 2, 5000.0, "compiled"),
            _compile_row("p3", (96, 64), "c.png", 1, 40.0, "eager"),
            _compile_row("p3", (64, 128), "d.png", 1, 4000.0, "compiled"),
            _compile_row("p4", (64, 128), "a.png", 3, 4000.0, "compiled", pad=64, limit=32),
            _compile_row("p4", (128, 64), "c.png", 1, 4000.0, "compiled", pad=64, limit=32)]
    return PaddingStageResult(stage="p4", previous="p3", shapes=shapes, compile=rows,
                              extras=ExtrasResult(tail_recipe="best_cpu", tail=_tail()))


PLOTS = [(sf.plot_pixel_difference, _p0), (sf.plot_decode, _p1), (sf.plot_sweep, _p2), (sf.plot_compile, _p3),
         (sf.plot_shapes_and_tail, _p4)]


# ----------------------------------------------------------------------------- P0
def test_pixel_difference_frame_orders_images_by_their_largest_difference():
    df = sf.pixel_difference_frame(_p0().resize_difference)
    assert df["image"].tolist() == ["c.png", "a.png", "b.png"]
    assert df["max"].tolist() == [2.0, 1.0, 0.0]
    assert df["differs %"].tolist() == pytest.approx([15.0, 1.0, 0.0])
    assert df.loc[0, "mean"] == pytest.approx(0.2) and df.loc[0, "p99"] == 1.0


# ----------------------------------------------------------------------------- P1
def test_decode_frame_splits_decode_from_the_rest_per_profile():
    df = sf.decode_frame(_p1().decode_profiles)
    got = {(r.profile, r.part): r.ms for r in df.itertuples()}
    assert got == {("p0", "decode+NMS"): 4.0, ("p0", "the rest"): 6.0, ("p1", "decode+NMS"): 1.0,
                   ("p1", "the rest"): 6.0}
    assert df.loc[(df["profile"] == "p0") & (df["part"] == "decode+NMS"), "share"].item() == pytest.approx(0.4)
    # plain {stage: ms} mappings too
    assert sf.decode_frame({"x": {"decode+NMS": 2.0, "blender": 2.0}})["ms"].tolist() == [2.0, 2.0]


def test_decode_figure_states_the_paired_speedup(tmp_path, titles):
    _png(sf.plot_decode(_p1(), tmp_path / "p1.png"))
    assert "paired speedup vs p0: 1.42 (1.30-1.55)" in titles[-1][0]


# ----------------------------------------------------------------------------- P2
def test_sweep_frame_orders_by_p50_marks_the_best_and_keeps_failures_last():
    df = sf.sweep_frame(_p2().sweep, _p2().best)
    assert df["setting"].tolist() == ["threads=2", "threads=1", "broken"]
    assert df["best"].tolist() == [True, False, False]
    assert df["p50_ms"].tolist()[:2] == [20.0, 30.0] and df["p99_ms"].tolist()[:2] == [40.0, 60.0]
    assert df.loc[2, "error"] == "worker died"
    assert sf.sweep_frame(_p2().sweep)["best"].tolist() == [True, False, False]  # no best given: the lowest P50


def test_sweep_figure_names_the_best_setting(tmp_path, titles):
    _png(sf.plot_sweep(_p2(), tmp_path / "p2.png"))
    assert "best: threads=2" in titles[-1][0]


# ----------------------------------------------------------------------------- P3
def test_compile_frame_pairs_each_shapes_compile_with_its_steady_calls():
    r = _p3()
    df = sf.compile_frame(r.compile, r.runs, "p3", "p2")
    assert df["shape"].tolist() == ["64x96", "96x64"]  # the stage's own rows only, in compile order
    assert df["graph"].tolist() == ["compiled", "eager"]
    assert df["first call s"].tolist() == pytest.approx([5.0, 0.04])
    assert df["steady ms"].tolist() == pytest.approx([7.0, 14.0])  # medians over the shape's first image
    assert df["previous ms"].tolist() == pytest.approx([11.0, 15.0])
    assert sf.compile_frame(r.compile, r.runs, "p3")["previous ms"].isna().all()


def test_compile_figure_counts_compiled_and_eager_shapes(tmp_path, titles):
    _png(sf.plot_compile(_p3(), tmp_path / "p3.png"))
    assert "1 of 2 shapes compiled (recompile limit 8), 1 eager -- 1 of 3 images" in titles[-1][-1]


# ----------------------------------------------------------------------------- P4
def test_shapes_frame_lists_each_paddings_shapes_with_their_images_and_graph():
    r = _p4()
    df = sf.shapes_frame(r.shapes, r.compile)
    assert df.groupby("pad multiple").size().to_dict() == {32: 3, 64: 2}
    p4 = df[df["recipe"] == "p4"]
    assert list(zip(p4["h"], p4["w"], p4["images"])) == [(64, 128, 3), (128, 64, 1)]
    assert df.loc[(df["recipe"] == "p3") & (df["h"] == 96), "graph"].item() == "eager"
    assert set(df["grid"]) == {"pad 32 (p3): 3 shapes", "pad 64 (p4): 2 shapes"}
    assert sf.shapes_frame(r.shapes)["images"].isna().all()  # without compile rows: not known


def test_tail_frame_splits_the_run_into_the_images_and_the_machine():
    df = sf.tail_frame(_tail())
    assert df["p99/p50"].tolist() == [1.5, 1.2, 1.1]
    assert df["p99_ms"].tolist() == [15.0, 12.0, 11.0] and df["calls"].tolist() == [20, 4, 20]
    assert len(sf.tail_frame(_tail(control=False))) == 2  # no control run: no machine row
    assert sf.tail_frame(None).empty


def test_shapes_and_tail_figure_has_both_panels(tmp_path, titles):
    _png(sf.plot_shapes_and_tail(_p4(), tmp_path / "p4.png"))
    assert "the tail of best_cpu" in titles[-1][1]


# ----------------------------------------------------------------------------- all of them
@pytest.mark.parametrize("plot,record", PLOTS, ids=[p.__name__ for p, _ in PLOTS])
def test_each_figure_writes_a_png_where_asked(plot, record, tmp_path):
    path = plot(record(), tmp_path / "sub" / "fig.png")
    assert path == tmp_path / "sub" / "fig.png"
    _png(path)


@pytest.mark.parametrize("plot", [p for p, _ in PLOTS], ids=[p.__name__ for p, _ in PLOTS])
def test_a_record_without_the_stages_data_still_gives_a_figure(plot, tmp_path):
    _png(plot(StageResult(stage="px", previous="py"), tmp_path / "empty.png"))


@pytest.mark.parametrize("plot,record", PLOTS, ids=[p.__name__ for p, _ in PLOTS])
def test_every_title_says_emulated_on_the_emulated_stack(plot, record, tmp_path, titles, monkeypatch):
    plot(record(), tmp_path / "plain.png")
    assert not any(EMULATED_NOTE in t for t in titles[-1])
    monkeypatch.setenv(EMULATE_VAR, "npu")
    plot(record(), tmp_path / "emulated.png")
    assert titles[-1] and all(EMULATED_NOTE in t for t in titles[-1])
