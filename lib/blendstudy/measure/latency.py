"""Latency instruments: per-image end-to-end timing and paired A/B comparison.

Every duration in this module is in MILLISECONDS (``*_ms`` names, and all fields of
:class:`LatencyStats` except ``n`` and ``throughput``). Every call is timed by the study's one
device-synchronised clock (:func:`blendstudy.measure.clock.timed_call`). A paired A/B takes two
"timers" (image index -> ms), so the two sides can be two pipelines of this process or two worker
processes with different runtime settings (:mod:`blendstudy.measure.worker`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from blendstudy.device import peak_memory_mb, reset_peak_memory
from blendstudy.jsonable import to_jsonable
from blendstudy.measure.clock import timed_call

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


def _progress(total: int, desc: Optional[str], enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


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
    with _progress(total, desc, progress) as bar:
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


def bootstrap_median_ci(
    values: Sequence[float], n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> Tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of ``values``.

    Resamples ``values`` with replacement ``n_boot`` times (numpy ``default_rng(seed)``, so the
    result is deterministic), takes each resample's median, and returns the
    ((1-confidence)/2, (1+confidence)/2) quantiles of those medians.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(int(n_boot), x.size))
    medians = np.median(x[idx], axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(medians, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass
class PairedComparison:
    """Pipeline B against pipeline A on the same images (interleaved per image).

    a_ms, b_ms:  per-image MEDIAN latency over the rounds (ms), in input order.
    speedup:     per-image ``a_ms / b_ms`` -- the speedup of B over A: > 1 means B is faster,
                 0.5 means B takes twice as long.
    median_speedup, ci_low, ci_high: median of ``speedup`` over images and its percentile-bootstrap
                 confidence interval (resampling images; ``n_boot`` resamples, ``seed``).
    a_rounds_ms, b_rounds_ms: raw latencies (ms) as [round][image].
    """

    name_a: str
    name_b: str
    labels: List[str]
    a_ms: List[float]
    b_ms: List[float]
    speedup: List[float]
    median_speedup: float
    ci_low: float
    ci_high: float
    rounds: int
    n_boot: int
    seed: int
    confidence: float = 0.95
    a_rounds_ms: List[List[float]] = field(default_factory=list)
    b_rounds_ms: List[List[float]] = field(default_factory=list)

    @property
    def median_a_ms(self) -> float:
        return float(np.median(self.a_ms))

    @property
    def median_b_ms(self) -> float:
        return float(np.median(self.b_ms))

    def summary(self) -> str:
        """One line, e.g. ``"B vs A: speedup 1.93x (95% CI 1.85-2.01), median 10.20 -> 5.29 ms,
        12 images x 3 rounds"``."""
        pct = int(round(self.confidence * 100))
        return (
            f"{self.name_b} vs {self.name_a}: speedup {self.median_speedup:.2f}x "
            f"({pct}% CI {self.ci_low:.2f}-{self.ci_high:.2f}), median {self.median_a_ms:.2f} -> "
            f"{self.median_b_ms:.2f} ms, {len(self.speedup)} images x {self.rounds} rounds"
        )

    def to_dict(self) -> Dict[str, Any]:
        return to_jsonable(self)


Timer = Callable[[int], float]  # image index -> one timed call of that image, in ms


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


def paired_timers(
    time_a: Timer,
    time_b: Timer,
    labels: Sequence[str],
    rounds: int = 3,
    warmup: int = 2,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
    name_a: str = "A",
    name_b: str = "B",
    confidence: float = 0.95,
) -> PairedComparison:
    """The paired A/B protocol over two timers (image index -> ms of one call on that image).

    First each side gets one first call plus ``warmup`` warm-up calls (alternating, not in the
    result). Then, for every round and every image, A and B run back to back on that image;
    which one goes first alternates with (round + image index) so neither systematically profits
    from a warm cache or suffers from the other's leftovers. Per image the median over rounds is
    kept; the reported speedup of B over A is ``a_ms / b_ms`` per image (see PairedComparison).
    """
    labels = [str(x) for x in labels]
    if not labels:
        raise ValueError("paired_compare needs at least one input")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")

    n = len(labels)
    total = 2 * (1 + warmup) + 2 * rounds * n
    a_rounds: List[List[float]] = []
    b_rounds: List[List[float]] = []
    with _progress(total, f"{name_a} vs {name_b}", progress) as bar:
        for i in range(1 + warmup):
            order = (time_a, time_b) if i % 2 == 0 else (time_b, time_a)
            for timer in order:
                timer(i % n)
                bar.update(1)
        for r in range(rounds):
            a_row: List[float] = []
            b_row: List[float] = []
            for i in range(n):
                if (r + i) % 2 == 0:
                    a_row.append(time_a(i))
                    b_row.append(time_b(i))
                else:
                    b_row.append(time_b(i))
                    a_row.append(time_a(i))
                bar.update(2)
            a_rounds.append(a_row)
            b_rounds.append(b_row)

    a_ms = np.median(np.asarray(a_rounds), axis=0)
    b_ms = np.median(np.asarray(b_rounds), axis=0)
    speedup = a_ms / np.maximum(b_ms, 1e-12)
    lo, hi = bootstrap_median_ci(speedup, n_boot=n_boot, seed=seed, confidence=confidence)
    return PairedComparison(
        name_a=name_a,
        name_b=name_b,
        labels=labels,
        a_ms=[float(v) for v in a_ms],
        b_ms=[float(v) for v in b_ms],
        speedup=[float(v) for v in speedup],
        median_speedup=float(np.median(speedup)),
        ci_low=lo,
        ci_high=hi,
        rounds=rounds,
        n_boot=int(n_boot),
        seed=int(seed),
        confidence=confidence,
        a_rounds_ms=a_rounds,
        b_rounds_ms=b_rounds,
    )


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
