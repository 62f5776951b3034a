"""The study's results schema, defined once: what each notebook writes and everything reads back.

Every notebook writes ``<run folder>/results/<notebook>.json``: an envelope (:class:`ResultsFile`:
name, created, created_by, params, environment, effective_runtime, figures) around one typed
record (``extra``): :class:`EnvCheckResult`, :class:`WeightsCheckResult`, :class:`BaselineResult`,
:class:`StageResult` (P0..P4, P2's sweep and P4's extras included), :class:`OfflineResult` (P6),
:class:`EvalResult` (P5) or :class:`SummaryResult`. :func:`save_results` writes one,
:func:`load_results` reads it back as the same types (``RECORD_TYPES`` says which notebook holds
which). The accuracy gate's verdict is decided once, when a stage is measured, and stored here.

Units: every ``*_ms`` and every LatencyStats field is in milliseconds; APs are percent; memory
in MiB.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar, Union

from blendstudy import __version__
from blendstudy.coco.evaluate import CocoMetrics
from blendstudy.jsonable import from_jsonable, to_jsonable
from blendstudy.measure.agreement import AccuracyReport
from blendstudy.measure.latency import LatencyRun, LatencyStats, PairedComparison, TailBreakdown
from blendstudy.measure.profile import Efficiency, StageProfile
from blendstudy.measure.roofline import RooflineRow
from blendstudy.runtime import SweepResult

__all__ = ["BaselineResult", "BenchResult", "EnvCheckResult", "EvalResult", "ExtrasResult", "LatencyResult",
           "OfflineResult", "RECORD_TYPES", "RecipeRuns", "ResultsFile", "StageResult", "SummaryResult",
           "WeightsCheckResult", "load_all_results", "load_results", "save_results"]

PathLike = Union[str, "os.PathLike[str]"]
R = TypeVar("R")


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


@dataclass
class ExtrasResult:
    """P4's recipes beyond the seed: latency, the gate against the baseline, paired speedups
    against the baseline, stage profiles, and the fastest recipe's tail split."""

    latency: Dict[str, LatencyResult] = field(default_factory=dict)
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
    any switch a device cannot run and why (``skipped``). Stage-specific parts: resize_difference
    (P0), decode_profiles (P1), sweep / best / kernel (P2), compile (P3), shapes / dynamo_counters /
    extras (P4).
    """

    stage: str
    previous: str
    recipes: List[Dict[str, Any]] = field(default_factory=list)
    runs: Dict[str, LatencyResult] = field(default_factory=dict)
    comparisons: Dict[str, PairedComparison] = field(default_factory=dict)
    accuracy: Dict[str, AccuracyReport] = field(default_factory=dict)
    gate: Dict[str, bool] = field(default_factory=dict)
    ap_note: str = ""
    resize_difference: List[Dict[str, Any]] = field(default_factory=list)
    decode_profiles: Dict[str, StageProfile] = field(default_factory=dict)
    sweep: List[SweepResult] = field(default_factory=list)
    best: Optional[SweepResult] = None
    best_files: Dict[str, str] = field(default_factory=dict)
    compile: List[Dict[str, Any]] = field(default_factory=list)
    shapes: List[Dict[str, Any]] = field(default_factory=list)
    dynamo_counters: Dict[str, Any] = field(default_factory=dict)
    extras: Optional[ExtrasResult] = None
    processes: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: P2: what the notebook's own (interactive) kernel reads back about itself -- on an NPU, the task
    #: queue torch_npu forces off there, which is why nothing is measured in the kernel
    kernel: Dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    random_weights: bool = False
    model: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BaselineResult(RecipeRuns):
    """The reference: baseline latency, the stage profile at the profile sizes, FLOP efficiency."""

    stage: str = "baseline"
    recipes: List[Dict[str, Any]] = field(default_factory=list)
    runs: Dict[str, LatencyResult] = field(default_factory=dict)
    profiles: Dict[str, StageProfile] = field(default_factory=dict)
    efficiency: Optional[Efficiency] = None
    deform_cost: List[Dict[str, Any]] = field(default_factory=list)
    processes: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    weights: str = ""
    random_weights: bool = False
    model: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EnvCheckResult:
    """Where the study runs: the environment, the npu status, the doctor's checks, the kernels."""

    device: str
    npu: Dict[str, Any] = field(default_factory=dict)
    environment: Dict[str, Any] = field(default_factory=dict)
    seed_environment: Dict[str, Any] = field(default_factory=dict)
    checks: List[Dict[str, Any]] = field(default_factory=list)
    kernels: Dict[str, Any] = field(default_factory=dict)


@dataclass
class WeightsCheckResult:
    """The checkpoint against the model: file size, tensors, parameters, coverage."""

    weights: str
    random_weights: bool
    check: Optional[Dict[str, Any]] = None
    summary: Dict[str, Any] = field(default_factory=dict)
    model: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OfflineResult(RecipeRuns):
    """P6: the dense part as an offline model, each backend in its own worker process."""

    stage: str = "p6"
    host_recipe: str = ""
    fastest: str = ""
    backends: List[Dict[str, Any]] = field(default_factory=list)
    exports: List[Dict[str, Any]] = field(default_factory=list)
    memory: List[Dict[str, Any]] = field(default_factory=list)
    profiles: Dict[str, StageProfile] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)
    #: per backend and part (each measured in the backend's own worker): see ExtrasResult.roofline
    roofline: List[RooflineRow] = field(default_factory=list)
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
class EvalResult:
    """P5: COCO AP under a stated protocol, with the per-image latency over the split."""

    stage: str = "p5"
    recipe: str = ""
    metrics: Dict[str, CocoMetrics] = field(default_factory=dict)
    timing: Optional[LatencyStats] = None
    samples_ms: Dict[str, List[float]] = field(default_factory=dict)
    first_call_ms: List[float] = field(default_factory=list)
    evaluated: bool = False
    num_images: int = 0
    num_detections: int = 0
    skipped: List[Dict[str, Any]] = field(default_factory=list)
    score_thresh: Optional[float] = None
    max_dets: int = 100
    references: Dict[str, Any] = field(default_factory=dict)
    paths: Dict[str, Any] = field(default_factory=dict)
    resumed_from: int = 0
    processed: int = 0
    discarded: Optional[Dict[str, Any]] = None
    num_processes: int = 1
    ranks: List[Dict[str, Any]] = field(default_factory=list)
    wall_s: Optional[float] = None
    weights: str = ""
    random_weights: bool = False
    model: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SummaryResult:
    """The seed's tables rebuilt from the run's results."""

    notebooks: List[str] = field(default_factory=list)
    versions: List[Dict[str, Any]] = field(default_factory=list)
    chain: List[Dict[str, Any]] = field(default_factory=list)
    paired_chain: List[Dict[str, Any]] = field(default_factory=list)
    accuracy: Dict[str, AccuracyReport] = field(default_factory=dict)
    gate: Dict[str, bool] = field(default_factory=dict)
    coco: Dict[str, CocoMetrics] = field(default_factory=dict)
    weights: str = ""


@dataclass
class BenchResult:
    """A CLI measurement (``bench``: latency; ``profile``: the stage profile) of one recipe."""

    recipe: str
    latency: Optional[LatencyStats] = None
    run: Optional[LatencyResult] = None
    profile: Optional[StageProfile] = None


#: Which record each notebook writes.
RECORD_TYPES: Dict[str, type] = {
    "env_check": EnvCheckResult,
    "weights_check": WeightsCheckResult,
    "baseline": BaselineResult,
    "p0_resize": StageResult,
    "p1_decode": StageResult,
    "p2_runtime": StageResult,
    "p3_compile": StageResult,
    "p4_pad64": StageResult,
    "p6_offline": OfflineResult,
    "p5_eval": EvalResult,
    "summary": SummaryResult,
}


@dataclass
class ResultsFile:
    """One results JSON: the envelope and its typed record (``extra``)."""

    name: str
    created: str
    created_by: str
    params: Dict[str, Any]
    environment: Dict[str, Any]
    figures: Dict[str, str]
    extra: Any
    effective_runtime: Dict[str, Any] = field(default_factory=dict)


def save_results(folder: PathLike, name: str, record: Any, params: Mapping[str, Any],
                 figures: Optional[Mapping[str, PathLike]] = None, environment: Optional[Dict[str, Any]] = None,
                 effective_runtime: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``<folder>/<name>.json`` (or ``folder`` itself when it names a .json file) atomically and
    return its path. ``figures`` are stored
    relative to the folder where possible; ``environment``: device.environment_info(...) of the
    run; ``effective_runtime``: what the measuring process(es) read back (threads, affinity, env)."""
    p = Path(folder) if str(folder).endswith(".json") else Path(folder) / f"{name}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    base = p.parent.resolve()

    def rel(fig: PathLike) -> str:
        fp = Path(fig).resolve()
        try:
            return fp.relative_to(base).as_posix()
        except ValueError:
            return str(fp)

    out = ResultsFile(name=name, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      created_by=f"blendstudy {__version__}", params=dict(params), environment=environment or {},
                      figures={str(k): rel(v) for k, v in (figures or {}).items()}, extra=record,
                      effective_runtime=effective_runtime or {})
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(out), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


def load_results(folder: PathLike, name: str, record_type: Optional[Type[R]] = None) -> ResultsFile:
    """The results JSON ``<folder>/<name>.json`` with its record rebuilt as ``record_type``
    (default RECORD_TYPES[name]). Raises FileNotFoundError naming the file when absent."""
    p = Path(folder) / f"{name}.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no results (has notebook {name} run?)")
    data = json.loads(p.read_text(encoding="utf-8"))
    kind = record_type or RECORD_TYPES.get(name)
    out = from_jsonable(ResultsFile, {**data, "extra": None})
    out.extra = from_jsonable(kind, data.get("extra")) if kind is not None else data.get("extra")
    return out


def load_all_results(folder: PathLike, names: List[str]) -> Dict[str, ResultsFile]:
    """The results of every notebook of ``names`` that has written one, in that order."""
    return {n: load_results(folder, n) for n in names if (Path(folder) / f"{n}.json").is_file()}
