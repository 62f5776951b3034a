"""The study's results schema, defined once: what each notebook writes and everything reads back.

Every notebook writes ``<run folder>/results/<notebook>.json``: an envelope (:class:`ResultsFile`:
schema, name, created, created_by, params, environment, effective_runtime, figures) around one
typed record (``extra``): :class:`EnvCheckResult`, :class:`WeightsCheckResult`,
:class:`BaselineResult`, a stage record per stage notebook P0..P4 (:class:`StageResult`'s
subclasses, blendstudy.stage_results: :class:`ResizeStageResult`, :class:`DecodeStageResult`,
:class:`RuntimeStageResult`, :class:`CompileStageResult`, :class:`PaddingStageResult` with P4's
:class:`ExtrasResult`), :class:`OfflineResult` (P6), :class:`EvalResult` (P5) or
:class:`SummaryResult`. :func:`save_results` writes one, :func:`load_results` reads it back as the
same types (``RECORD_TYPES`` says which notebook holds which; a file of results schema 1 is
upgraded as it is read, one of a schema this code does not know is refused). The accuracy gate's
verdict is decided once, when a stage is measured, and stored here. ``.latency`` of any record
is LatencyStats keyed by recipe (blendstudy.recipe_runs.RecipeRuns); ``.runs`` the runs behind it.

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
from blendstudy.errors import UserError
from blendstudy.jsonable import from_jsonable, to_jsonable
from blendstudy.measure.agreement import AccuracyReport
from blendstudy.measure.latency import LatencyStats, PairedComparison
from blendstudy.measure.profile import Efficiency, StageProfile
from blendstudy.measure.roofline import RooflineRow
from blendstudy.recipe_runs import LatencyResult, RecipeRuns
from blendstudy.stage_results import (
    CompileStageResult,
    DecodeStageResult,
    ExtrasResult,
    PaddingStageResult,
    ResizeStageResult,
    RuntimeStageResult,
    StageResult,
    upgrade_v1,
)

__all__ = ["SCHEMA_VERSION", "BackendMeasurement", "BaselineResult", "BenchResult", "CompileStageResult",
           "DecodeStageResult", "EnvCheckResult", "EvalResult", "ExtrasResult", "LatencyResult", "OfflineResult",
           "PaddingStageResult", "RECORD_TYPES", "RecipeRuns", "ResizeStageResult", "ResultsFile",
           "ResultsSchemaError", "RuntimeStageResult", "StageResult", "SummaryResult", "WeightsCheckResult",
           "load_all_results", "load_results", "save_results"]

#: The version of the results JSON this code writes (ResultsFile.schema). 1: files without the
#: field (one StageResult for every stage); 2: a record per stage notebook (blendstudy.stage_results).
SCHEMA_VERSION = 2

PathLike = Union[str, "os.PathLike[str]"]
R = TypeVar("R")


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
class BackendMeasurement:
    """What one offline backend's fresh worker measured (blendstudy.study.offline.measure_backend):
    its table row, latency, paired A/Bs, gate, stage profile, peak memory and roofline rows."""

    row: Dict[str, Any]
    latency: LatencyResult
    comparisons: Dict[str, PairedComparison]
    accuracy: Dict[str, AccuracyReport]
    gate: Dict[str, bool]
    note: str
    profile: StageProfile
    memory: Dict[str, Any]
    roofline: List[RooflineRow]


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
    #: what the params asked for and this run did not do, with the reason (e.g. no native bf16 here)
    notes: Dict[str, str] = field(default_factory=dict)
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

    def add_backend(self, m: BackendMeasurement) -> None:
        """Keep one backend's measurement under its label (``m.row["backend"]``)."""
        label = m.row["backend"]
        self.backends.append(m.row)
        self.add_latency(m.latency)
        self.comparisons.update(m.comparisons)
        self.accuracy.update(m.accuracy)
        self.gate.update(m.gate)
        self.ap_note = m.note
        self.profiles[label] = m.profile
        self.roofline.extend(m.roofline)
        self.processes[label] = m.latency.process
        self.memory.append(m.memory)


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
    "p0_resize": ResizeStageResult,
    "p1_decode": DecodeStageResult,
    "p2_runtime": RuntimeStageResult,
    "p3_compile": CompileStageResult,
    "p4_pad64": PaddingStageResult,
    "p6_offline": OfflineResult,
    "p5_eval": EvalResult,
    "summary": SummaryResult,
}


@dataclass
class ResultsFile:
    """One results JSON: the envelope and its typed record (``extra``). schema: the results schema
    version the file was written in (SCHEMA_VERSION when written here; 1 for a file without it,
    whose record was upgraded as it was read)."""

    name: str
    created: str
    created_by: str
    params: Dict[str, Any]
    environment: Dict[str, Any]
    figures: Dict[str, str]
    extra: Any
    effective_runtime: Dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION


class ResultsSchemaError(UserError, ValueError):
    """A results JSON of a schema version this code cannot read (one line: the file, its version
    and the one expected)."""


#: per schema version this code reads: how a record of that version becomes the current one
_UPGRADES = {1: upgrade_v1, SCHEMA_VERSION: lambda extra: extra}


def _schema(path: Path, data: Mapping[str, Any]) -> int:
    """The file's schema version (1 when it names none); ResultsSchemaError if this code cannot read it."""
    version = data.get("schema", 1)
    if version not in _UPGRADES:
        older = ", ".join(str(v) for v in sorted(_UPGRADES) if v != SCHEMA_VERSION)
        raise ResultsSchemaError(f"{path}: results schema version {version}; this blendstudy ({__version__}) reads "
                                 f"version {SCHEMA_VERSION} (and upgrades {older})")
    return version


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
    (default RECORD_TYPES[name]); a stage record of an older schema is upgraded first (fields
    its record no longer has are ignored). Raises FileNotFoundError naming the file when absent,
    ResultsSchemaError (one line) when its schema version is one this code cannot read."""
    p = Path(folder) / f"{name}.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no results (has notebook {name} run?)")
    data = json.loads(p.read_text(encoding="utf-8"))
    version = _schema(p, data)
    kind = record_type or RECORD_TYPES.get(name)
    extra = data.get("extra")
    if isinstance(kind, type) and issubclass(kind, StageResult):
        extra = _UPGRADES[version](extra)
    out = from_jsonable(ResultsFile, {**data, "extra": None, "schema": version})
    out.extra = from_jsonable(kind, extra) if kind is not None else extra
    return out


def load_all_results(folder: PathLike, names: List[str]) -> Dict[str, ResultsFile]:
    """The results of every notebook of ``names`` that has written one, in that order."""
    return {n: load_results(folder, n) for n in names if (Path(folder) / f"{n}.json").is_file()}
