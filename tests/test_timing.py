"""Latency instruments: statistics by hand, warm-up accounting, paired comparison."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from blendstudy.measure.latency import (
    LatencyRun,
    LatencyStats,
    bootstrap_median_ci,
    measure_latency,
    median_input,
    paired_compare,
    tail_breakdown,
)


def test_latency_stats_hand_computed():
    s = LatencyStats.from_samples([1, 2, 3, 4, 100])
    assert s.n == 5
    assert s.mean == pytest.approx(22.0)
    assert s.p50 == pytest.approx(3.0)
    # linear interpolation: position 0.9 * 4 = 3.6 -> 4 + 0.6 * (100 - 4)
    assert s.p90 == pytest.approx(61.6)
    assert s.p99 == pytest.approx(96.16)
    assert s.min == 1.0 and s.max == 100.0
    # sample std (ddof=1): sum of squared deviations = 441+400+361+324+6084 = 7610, / 4
    assert s.std == pytest.approx(math.sqrt(7610 / 4))
    assert s.throughput == pytest.approx(1000 / 22)


def test_latency_stats_edge_cases():
    one = LatencyStats.from_samples([8.0])
    assert one.std == 0.0 and one.p99 == 8.0 and one.throughput == pytest.approx(125.0)
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])
    d = one.to_dict()
    assert set(d) == {"n", "mean", "p50", "p90", "p99", "min", "max", "std", "throughput"}
    json.dumps(d)


def test_measure_latency_excludes_first_call_and_warmup():
    calls = []

    def fn(x):
        calls.append(x)
        # the first call is slow (compile), the next two are warm-up, then fast
        time.sleep(0.03 if len(calls) == 1 else 0.001)

    run = measure_latency(fn, {"a": 1, "b": 2, "c": 3}, "cpu", warmup=2, repeats=2, progress=False)
    assert len(calls) == 1 + 2 + 2 * 3
    assert calls[:3] == [1, 1, 2]  # first call on inputs[0], warm-up cycles over the inputs
    assert calls[3:] == [1, 2, 3, 1, 2, 3]
    assert len(run.warmup_ms) == 2
    assert len(run.samples_ms) == 6 and run.stats.n == 6
    assert run.labels == ["a", "b", "c", "a", "b", "c"]
    assert run.first_call_ms > max(run.samples_ms)  # the slow first call is reported apart
    assert run.first_call_ms >= 25.0
    assert all(ms > 0 for ms in run.samples_ms)
    assert run.peak_memory_mb is None  # cpu
    assert set(run.per_input_median_ms()) == {"a", "b", "c"}
    json.dumps(run.to_dict())


def test_measure_latency_sequence_labels_and_validation():
    run = measure_latency(lambda x: None, [10, 20], "cpu", warmup=0, progress=False)
    assert run.labels == ["0", "1"] and run.warmup_ms == []
    with pytest.raises(ValueError):
        measure_latency(lambda x: None, [], "cpu", progress=False)


def _run(samples, labels):
    return LatencyRun(samples_ms=list(samples), labels=list(labels), first_call_ms=0.0, warmup_ms=[],
                      stats=LatencyStats.from_samples(samples))


def test_tail_breakdown_separates_the_images_from_the_jitter():
    # 4 images x 3 repeats: medians 10, 11, 12, 20 ("d" costs more: content); one 30 ms spike
    # on "a" (jitter) that the per-image medians leave out
    labels = ["a", "b", "c", "d"] * 3
    samples = [10, 11, 12, 20, 30, 11, 12, 20, 10, 11, 12, 20]
    run = _run(samples, labels)
    assert median_input(run) == "b"  # medians 10, 11, 12, 20: centre 11.5, "b" (first of the two)
    control = _run([11, 11, 11, 11, 22], ["b"] * 5)
    t = tail_breakdown(run, control)
    assert t.calls == 12 and t.inputs == 4
    assert t.p50_ms == pytest.approx(np.percentile(samples, 50))
    assert t.p99_over_p50 == pytest.approx(np.percentile(samples, 99) / np.percentile(samples, 50))
    # per-image medians 10, 11, 12, 20: p50 11.5; p99 at position 2.97 -> 12 + 0.97 * 8
    assert t.content_p50_ms == pytest.approx(11.5)
    assert t.content_p99_ms == pytest.approx(19.76)
    assert t.content_p99_over_p50 == pytest.approx(19.76 / 11.5)
    assert (t.slowest_input, t.slowest_input_ms) == ("d", 20.0)
    # control: p50 11; p99 at position 3.96 -> 11 + 0.96 * 11
    assert t.control_input == "b" and t.control_calls == 5
    assert t.control_p99_over_p50 == pytest.approx((11 + 0.96 * 11) / 11)
    json.dumps(t.to_dict())
    assert tail_breakdown(run).control_p99_over_p50 is None
    with pytest.raises(ValueError, match="one input"):
        tail_breakdown(run, run)


# The "work" is sleeping: the tests run on 2 CPU cores shared with other jobs, where CPU-bound
# calls of a few ms are stretched at random by preemption. Sleeping does not compete for the CPU,
# so a 2x planted slowdown stays a 2x wall-clock slowdown however loaded the machine is.
STEP_S = 0.003


def _pipeline_a(x):
    time.sleep(STEP_S)


def _pipeline_b_slow(x):
    time.sleep(STEP_S)
    time.sleep(STEP_S)  # the same work twice: a planted 2x slowdown


def test_paired_compare_detects_planted_2x_slowdown():
    cmp = paired_compare(_pipeline_a, _pipeline_b_slow, list(range(6)), "cpu", rounds=3, warmup=1,
                         n_boot=500, progress=False, name_a="base", name_b="slow")
    assert 0.35 <= cmp.median_speedup <= 0.7
    assert cmp.ci_low <= cmp.median_speedup <= cmp.ci_high
    assert cmp.ci_high < 1.0
    assert len(cmp.a_ms) == len(cmp.b_ms) == len(cmp.speedup) == 6
    assert np.allclose(cmp.speedup, np.asarray(cmp.a_ms) / np.asarray(cmp.b_ms))
    assert len(cmp.a_rounds_ms) == 3 and len(cmp.a_rounds_ms[0]) == 6
    line = cmp.summary()
    assert "slow vs base" in line and "\n" not in line
    json.dumps(cmp.to_dict())


def test_paired_compare_identical_pipelines():
    cmp = paired_compare(_pipeline_a, _pipeline_a, list(range(6)), "cpu", rounds=3, warmup=1,
                         n_boot=500, progress=False)
    assert (cmp.ci_low <= 1.0 <= cmp.ci_high) or 0.8 <= cmp.median_speedup <= 1.25


def test_paired_compare_alternates_order():
    log = []
    paired_compare(lambda x: log.append(("A", x)), lambda x: log.append(("B", x)), [0, 1], "cpu",
                   rounds=2, warmup=0, n_boot=10, progress=False)
    measured = log[2:]  # skip the one first call of each
    firsts = [measured[k][0] for k in range(0, len(measured), 2)]
    assert firsts == ["A", "B", "B", "A"]  # alternates with (round + image)


def test_bootstrap_ci_is_deterministic():
    vals = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2]
    assert bootstrap_median_ci(vals, n_boot=300, seed=3) == bootstrap_median_ci(vals, n_boot=300, seed=3)
    lo, hi = bootstrap_median_ci([2.0] * 5, n_boot=50)
    assert lo == hi == 2.0
