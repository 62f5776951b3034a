"""The paired A/B protocol: two timers (image index -> ms of one call on that image) run image by
image, interleaved, and the speedup of B over A with a percentile-bootstrap confidence interval.

All durations are in MILLISECONDS. :func:`blendstudy.measure.latency.paired_compare` builds the two
timers from two pipelines of this process; a worker process can be a timer as well
(:mod:`blendstudy.measure.worker`). The names here are re-exported by
:mod:`blendstudy.measure.latency`, where callers import them from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from blendstudy.jsonable import to_jsonable

__all__ = ["PairedComparison", "Timer", "bootstrap_median_ci", "paired_timers", "progress_bar"]

Timer = Callable[[int], float]  # image index -> one timed call of that image, in ms


def progress_bar(total: int, desc: Optional[str], enabled: bool):
    """A tqdm bar on stderr that disappears when done (a no-op bar when not ``enabled``)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


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


def _warm_up(time_a: Timer, time_b: Timer, n: int, warmup: int, bar) -> None:
    """One first call plus ``warmup`` warm-up calls per side, alternating which side goes first
    (image i % n on call i); not timed into the result."""
    for i in range(1 + warmup):
        order = (time_a, time_b) if i % 2 == 0 else (time_b, time_a)
        for timer in order:
            timer(i % n)
            bar.update(1)


def _interleaved_rounds(time_a: Timer, time_b: Timer, n: int, rounds: int, bar
                        ) -> Tuple[List[List[float]], List[List[float]]]:
    """(A's ms, B's ms) as [round][image]: per round and image A and B back to back, A first when
    (round + image index) is even."""
    a_rounds: List[List[float]] = []
    b_rounds: List[List[float]] = []
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
    return a_rounds, b_rounds


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
    with progress_bar(2 * (1 + warmup) + 2 * rounds * n, f"{name_a} vs {name_b}", progress) as bar:
        _warm_up(time_a, time_b, n, warmup, bar)
        a_rounds, b_rounds = _interleaved_rounds(time_a, time_b, n, rounds, bar)
    a_ms = np.median(np.asarray(a_rounds), axis=0)
    b_ms = np.median(np.asarray(b_rounds), axis=0)
    speedup = a_ms / np.maximum(b_ms, 1e-12)
    lo, hi = bootstrap_median_ci(speedup, n_boot=n_boot, seed=seed, confidence=confidence)
    return PairedComparison(
        name_a=name_a, name_b=name_b, labels=labels, a_ms=[float(v) for v in a_ms], b_ms=[float(v) for v in b_ms],
        speedup=[float(v) for v in speedup], median_speedup=float(np.median(speedup)), ci_low=lo, ci_high=hi,
        rounds=rounds, n_boot=int(n_boot), seed=int(seed), confidence=confidence, a_rounds_ms=a_rounds,
        b_rounds_ms=b_rounds,
    )
