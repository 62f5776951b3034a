"""blendstudy.profile: the per-stage breakdown, its bookkeeping, FLOP counting and efficiency, on
the AdelaiDet fixture model (tests/fixtures) at a small input size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from blendstudy.data.images import read_image
from blendstudy.loading import load_pipeline
from blendstudy.measure import profile as prof
from blendstudy.measure.profile import (
    STEPS,
    StageProfile,
    count_flops,
    efficiency,
    matmul_peak_flops,
    profile_stages,
    profiled_call,
)
from blendstudy.optimize import build_pipeline
from blendstudy.pipeline import Pipeline
from conftest import fixture


@pytest.fixture(scope="module")
def model():
    root = fixture("adelaidet_blendmask_small")
    torch.manual_seed(0)
    return load_pipeline(root / "config.yaml", str(root / "model.pth"), "cpu", warn_random=False).pipeline.model


@pytest.fixture(scope="module")
def pipe(model) -> Pipeline:
    return Pipeline(model, 256, 400)


@pytest.fixture(scope="module")
def image_path():
    return fixture("adelaidet_blendmask_small", "images", "img0.png")


def test_stages_are_the_seeds_eleven():
    assert len(STEPS) == 11 and len(set(STEPS)) == 11
    assert STEPS[0] == "read" and STEPS[-1] == "result extraction"


def test_profiled_call_times_every_stage(pipe, image_path):
    torch.manual_seed(0)
    st = profiled_call(pipe, image_path)
    assert list(st) == STEPS
    assert all(v >= 0.0 for v in st.values())
    assert st["backbone+FPN"] > 0.0 and st["resize"] > 0.0


def _counting_clock():
    ticks = itertools.count()
    return lambda: float(next(ticks))  # every call: one more second


@pytest.mark.parametrize("resize", ["pil", "device"])
def test_every_stage_is_marked_exactly_once_in_both_resize_modes(model, image_path, resize):
    """With a clock that advances one second per reading, a stage that is marked once gets exactly
    1000 ms; one never marked would read 0, one marked twice would swallow its neighbour."""
    small_pipe = Pipeline(model, 96, 160)
    p = small_pipe if resize == "pil" else build_pipeline(small_pipe, ["device_resize"])
    assert p.options.resize == resize
    small = read_image(image_path)[:120, :160]
    st = profiled_call(p, small, clock=_counting_clock())
    assert st == {k: 1000.0 for k in STEPS}


def test_profile_stages_one_image(pipe, image_path):
    torch.manual_seed(0)
    res = profile_stages(pipe, [image_path], warmup=0, repeats=1, progress=False)
    assert isinstance(res, StageProfile)
    assert list(res.stage_ms) == STEPS and list(res.samples_ms) == STEPS
    assert all(len(v) == 1 for v in res.samples_ms.values())
    assert res.runs == 1
    assert res.input_size == "640x480"  # width x height of the original image
    assert res.total_ms == pytest.approx(sum(res.stage_ms.values()))  # one run: median == the run
    assert res.end_to_end_ms > 0
    assert res.overhead_ms == pytest.approx(res.total_ms - res.end_to_end_ms)
    assert res.peak_memory_mb is None or res.peak_memory_mb >= 0
    frame = res.frame()
    assert list(frame["stage"]) == STEPS and frame["share"].str.endswith("%").all()
    d = res.to_dict()
    assert d["stage_ms"] == res.stage_ms and d["overhead_ms"] == res.overhead_ms and d["runs"] == 1


class _FakePipeline:
    device = torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def __call__(self, image):
        self.calls += 1


def test_profile_stages_total_is_the_median_of_totals(monkeypatch):
    """total_ms is the median of the per-run totals, not the sum of the per-stage medians."""
    runs = [{"read": 1.0, "resize": 5.0}, {"read": 10.0, "resize": 1.0}, {"read": 3.0, "resize": 1.0}]
    seq = iter(runs)

    def fake(pipeline, image, clock=None):
        r = next(seq)
        return {k: r.get(k, 0.0) for k in STEPS}

    monkeypatch.setattr(prof, "profiled_call", fake)
    fp = _FakePipeline()
    image = np.zeros((4, 6, 3), np.uint8)
    res = profile_stages(fp, [image], warmup=0, repeats=3, progress=False)
    assert fp.calls == 3 and res.runs == 3
    assert res.stage_ms["read"] == 3.0 and res.stage_ms["resize"] == 1.0  # stage medians: sum 4
    assert res.total_ms == 6.0  # totals 6, 11, 4
    assert res.overhead_ms == pytest.approx(res.total_ms - res.end_to_end_ms)
    assert res.samples_ms["read"] == [1.0, 10.0, 3.0]
    assert res.input_size == "6x4"


def test_efficiency_by_hand():
    e = efficiency(2e9, 100.0, 1e11)
    assert e.flops_per_image == 2e9 and e.latency_ms == 100.0 and e.peak_flops == 1e11
    assert e.achieved_flops == pytest.approx(2e10)
    assert e.fraction_of_peak == pytest.approx(0.2)
    assert e.to_dict() == {"flops_per_image": 2e9, "latency_ms": 100.0, "achieved_flops": pytest.approx(2e10),
                           "peak_flops": 1e11, "fraction_of_peak": pytest.approx(0.2)}


def test_count_flops_grows_with_the_input(model, image_path):
    torch.manual_seed(0)
    image = read_image(image_path)
    small = count_flops(Pipeline(model, 64, 100), image)
    large = count_flops(Pipeline(model, 128, 200), image)
    assert 0 < small < large
    # convolutions dominate: about proportional to the pixels (4x), surely more than 2x
    assert large > 2 * small


def test_matmul_peak_flops():
    peak = matmul_peak_flops(torch.device("cpu"), n=256, repeats=2)
    assert np.isfinite(peak) and peak > 0
