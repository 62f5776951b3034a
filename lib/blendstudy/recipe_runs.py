"""A recipe's latency run as the study keeps it (:class:`LatencyResult`) and the per-recipe views
every record holding runs shares (:class:`RecipeRuns`): ``latency`` always means LatencyStats keyed
by recipe, ``runs`` the LatencyResults they come from. Re-exported by blendstudy.results.

Units: ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from blendstudy.measure.latency import LatencyRun, LatencyStats

__all__ = ["LatencyResult", "RecipeRuns"]


@dataclass
class LatencyResult:
    """One recipe's latency run as the study keeps it (the samples, not the callables).

    process: the measuring process's effective runtime (pid, threads, affinity, env) -- every
    measurement states the process it ran in.
    """

    recipe: str
    stats: LatencyStats
    samples_ms: List[float]
    labels: List[str]
    first_call_ms: float
    warmup_ms: List[float] = field(default_factory=list)
    peak_memory_mb: Optional[float] = None
    process: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, recipe: str, run: LatencyRun, process: Dict[str, Any]) -> LatencyResult:
        """A measure_latency run kept under ``recipe``, with the process that measured it."""
        return cls(recipe, run.stats, run.samples_ms, run.labels, run.first_call_ms, run.warmup_ms,
                   run.peak_memory_mb, process)


class RecipeRuns:
    """Per-recipe views of a record's latency runs (``runs``: recipe -> LatencyResult, the one
    stored state): latency (stats), first_call_ms, samples_ms and peak_memory_mb keyed by recipe.
    They are written into the results JSON for its readers (``JSON_VIEWS``) and rebuilt from
    ``runs`` when a file is read back."""

    JSON_VIEWS = ("latency", "first_call_ms", "samples_ms", "peak_memory_mb")
    runs: Dict[str, LatencyResult]

    @property
    def latency(self) -> Dict[str, LatencyStats]:
        return {r: run.stats for r, run in self.runs.items()}

    @property
    def first_call_ms(self) -> Dict[str, float]:
        return {r: run.first_call_ms for r, run in self.runs.items()}

    @property
    def samples_ms(self) -> Dict[str, List[float]]:
        return {r: run.samples_ms for r, run in self.runs.items()}

    @property
    def peak_memory_mb(self) -> Dict[str, Optional[float]]:
        return {r: run.peak_memory_mb for r, run in self.runs.items()}

    def add_latency(self, run: LatencyResult) -> None:
        """Record one recipe's latency run under its recipe name."""
        self.runs[run.recipe] = run
