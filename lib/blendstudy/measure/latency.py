"""Latency instruments: per-image end-to-end timing and paired A/B comparison.

Every duration in this module is in MILLISECONDS (``*_ms`` names, and all fields of
:class:`LatencyStats` except ``n`` and ``throughput``). Every call is timed by the study's one
device-synchronised clock (:func:`blendstudy.measure.clock.timed_call`). A paired A/B takes two
"timers" (image index -> ms), so the two sides can be two pipelines of this process or two worker
processes with different runtime settings (:mod:`blendstudy.measure.worker`); that protocol
(:func:`paired_timers`, :class:`PairedComparison`, :func:`bootstrap_median_ci`) lives in
:mod:`blendstudy.measure.paired` and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from blendstudy.device import peak_memory_mb, reset_peak_memory
from blendstudy.jsonable import to_jsonable
from blendstudy.measure.clock import timed_call
from blendstudy.measure.paired import PairedComparison, bootstrap_median_ci, paired_timers, progress_bar
from blendstudy.measure.paired import Timer as Timer  # re-exported: the paired protocol lives in measure.paired

Inputs = Union[Sequence[Any], Mapping[str, Any]]


@dataclass
class LatencyStats:
    """Summary of latency samples. All values in milliseconds except ``n`` and ``throughput``.

    Percentiles use linear interpolation between order statistics (numpy's default
    ``method="linear"``): for sorted samples x[0..n-1] the q-th percentile sits at position
    ``q/100 * (n-1)``. E.g. [1, 2, 3, 4, 100] gives p50 = 3, p90 = 61.6, p99 = 96.16.
    ``std`` is the SAMPLE standard deviation (ddof=1); it is 0.0 for a single sample.
    ``throughput`` is images per second for sequential single-image processing, 1000 / mean.
    """

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    std: float
    throughput: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        """Statistics of per-call latencies given in milliseconds (at least one sample)."""
        x = np.asarray(list(samples_ms), dtype=np.float64).reshape(-1)
        if x.size == 0:
            raise ValueError("LatencyStats needs at least one sample")
        if not np.all(np.isfinite(x)):
            raise ValueError("latency samples must be finite numbers of milliseconds")
        mean = float(x.mean())
        p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
        return cls(
            n=int(x.size),
            mean=mean,
            p50=p50,
            p90=p90,
            p99=p99,
            min=float(x.min()),
            max=float(x.max()),
            std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
            throughput=1000.0 / mean if mean > 0 else float("inf"),
        )

    def to_dict(self) -> Dict[str, float]:
        return to_jsonable(self)


@dataclass
class LatencyRun:
    """One :func:`measure_latency` run.

    samples_ms:    measured per-call latencies (ms), in call order; ``repeats`` passes over the inputs.
    labels:        name of the input behind each entry of ``samples_ms`` (same length).
    first_call_ms: the very first call (ms) -- graph capture / compilation / allocator warm-up --
                   reported apart and excluded from ``stats``.
    warmup_ms:     the warm-up calls after the first one (ms), excluded from ``stats``.
    stats:         :class:`LatencyStats` over ``samples_ms``.
    peak_memory_mb: peak device memory (MiB) during the measured calls; None where the device
                   does not report it (cpu).
    """

    samples_ms: List[float]
    labels: List[str]
    first_call_ms: float
    warmup_ms: List[float]
    stats: LatencyStats
    peak_memory_mb: Optional[float] = None
    device: str = "cpu"
    repeats: int = 1

    def per_input_median_ms(self) -> Dict[str, float]:
        """Median latency (ms) of each input over the repeats, in first-seen order."""
        groups: Dict[str, List[float]] = {}
        for label, ms in zip(self.labels, self.samples_ms):
            groups.setdefault(label, []).append(ms)
        return {k: float(np.median(v)) for k, v in groups.items()}

    def to_dict(self) -> Dict[str, Any]:
        return to_jsonable(self)


def _as_named_inputs(inputs: Inputs) -> Tuple[List[str], List[Any]]:
    """(labels, inputs): a mapping gives its keys as labels, a sequence its indices."""
    if isinstance(inputs, Mapping):
        return [str(k) for k in inputs.keys()], list(inputs.values())
    items = list(inputs)
    return [str(i) for i in range(len(items))], items


def measure_latency(
    fn: Callable[[Any], Any],
    inputs: Inputs,
    device: Union[torch.device, str],
    warmup: int = 3,
    repeats: int = 1,
    progress: bool = True,
    desc: Optional[str] = None,
) -> LatencyRun:
    """Time ``fn(x)`` (one end-to-end image) for every input.

    Call sequence: one first call on ``inputs[0]`` (timed, reported as ``first_call_ms``), then
    ``warmup`` warm-up calls cycling over the inputs (timed, reported as ``warmup_ms``), then
    ``repeats`` measured passes over all inputs in order. Only the measured calls enter ``stats``.
    ``inputs`` may be a sequence (labels "0", "1", ...) or a mapping name -> input.
    Peak device memory is reset before the measured passes and read after them.
    """
    device = torch.device(device)
    labels, items = _as_named_inputs(inputs)
    if not items:
        raise ValueError("measure_latency needs at least one input")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")

    total = 1 + warmup + repeats * len(items)
    with progress_bar(total, desc, progress) as bar:
        first_call_ms = timed_call(fn, items[0], device)
        bar.update(1)
        warmup_ms: List[float] = []
        for i in range(warmup):
            warmup_ms.append(timed_call(fn, items[i % len(items)], device))
            bar.update(1)
        reset_peak_memory(device)
        samples: List[float] = []
        sample_labels: List[str] = []
        for _ in range(repeats):
            for label, x in zip(labels, items):
                samples.append(timed_call(fn, x, device))
                sample_labels.append(label)
                bar.update(1)
        peak = peak_memory_mb(device)

    return LatencyRun(
        samples_ms=samples,
        labels=sample_labels,
        first_call_ms=first_call_ms,
        warmup_ms=warmup_ms,
        stats=LatencyStats.from_samples(samples),
        peak_memory_mb=peak,
        device=str(device),
        repeats=repeats,
    )


# ----------------------------------------------------------------------------- the tail


def median_input(run: LatencyRun) -> str:
    """The label of the input whose median latency is closest to the median of all inputs'
    medians (the first such in input order): the typical image of a run."""
    med = run.per_input_median_ms()
    centre = float(np.median(list(med.values())))
    return min(med, key=lambda k: abs(med[k] - centre))


@dataclass
class TailBreakdown:
    """Where a run's tail (P99/P50) comes from. All times in ms.

    p99_over_p50:          the run's own tail, over all its calls (what the study reports).
    content_p99_over_p50:  the same ratio over the per-input medians: what the images themselves
                           cost more or less (their size after resizing, their detections), with
                           the repeats' jitter taken out.
    control_p99_over_p50:  the tail of ONE input called as many times in a row (the control run,
                           typically the run's median input): nothing content-dependent in it,
                           so it is the machine's jitter floor at this latency. None without one.
    slowest_input:         the input with the highest median.
    """

    calls: int
    p50_ms: float
    p99_ms: float
    p99_over_p50: float
    inputs: int
    content_p50_ms: float
    content_p99_ms: float
    content_p99_over_p50: float
    slowest_input: str
    slowest_input_ms: float
    control_input: Optional[str] = None
    control_calls: Optional[int] = None
    control_p50_ms: Optional[float] = None
    control_p99_ms: Optional[float] = None
    control_p99_over_p50: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return to_jsonable(self)


def tail_breakdown(run: LatencyRun, control: Optional[LatencyRun] = None) -> TailBreakdown:
    """Split a latency run's P99/P50 into the content's part (per-input medians) and, given a
    `control` run of one input repeated, the machine's jitter floor."""
    med = run.per_input_median_ms()
    values = np.asarray(list(med.values()), dtype=np.float64)
    c50, c99 = (float(v) for v in np.percentile(values, [50, 99]))
    slowest = max(med, key=med.get)
    out = TailBreakdown(calls=run.stats.n, p50_ms=run.stats.p50, p99_ms=run.stats.p99,
                        p99_over_p50=run.stats.p99 / run.stats.p50, inputs=len(med), content_p50_ms=c50,
                        content_p99_ms=c99, content_p99_over_p50=c99 / c50, slowest_input=slowest,
                        slowest_input_ms=med[slowest])
    if control is not None:
        names = sorted(set(control.labels))
        if len(names) != 1:
            raise ValueError(f"the control run must repeat one input, it has {len(names)}: {names[:5]}")
        out.control_input = names[0]
        out.control_calls = control.stats.n
        out.control_p50_ms = control.stats.p50
        out.control_p99_ms = control.stats.p99
        out.control_p99_over_p50 = control.stats.p99 / control.stats.p50
    return out


# ----------------------------------------------------------------------------- paired comparison


def paired_compare(
    fn_a: Callable[[Any], Any],
    fn_b: Callable[[Any], Any],
    inputs: Inputs,
    device: Union[torch.device, str],
    rounds: int = 3,
    warmup: int = 2,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
    name_a: str = "A",
    name_b: str = "B",
    confidence: float = 0.95,
) -> PairedComparison:
    """Compare two pipelines of this process image by image, interleaved so machine drift cancels
    out (:func:`paired_timers` with both sides timed by the synchronised clock on ``device``)."""
    labels, items = _as_named_inputs(inputs)
    dev = torch.device(device)
    return paired_timers(lambda i: timed_call(fn_a, items[i], dev), lambda i: timed_call(fn_b, items[i], dev),
                         labels, rounds=rounds, warmup=warmup, n_boot=n_boot, seed=seed, progress=progress,
                         name_a=name_a, name_b=name_b, confidence=confidence)


__all__ = [
    "LatencyStats",
    "LatencyRun",
    "PairedComparison",
    "TailBreakdown",
    "measure_latency",
    "median_input",
    "paired_compare",
    "paired_timers",
    "tail_breakdown",
    "bootstrap_median_ci",
]
