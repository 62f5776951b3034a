"""The study protocol, as the notebooks and the CLI call it.

``study = open_study("params/default.yaml")`` sets a run up (params, run folder, which weights);
``run_stage(study, "p3", "p2")`` measures a stage against its previous stage and the baseline;
``run_runtime_stage`` is P2 (its sweep, one worker process per setting, and a paired A/B across two
processes); ``run_extras`` the recipes beyond the seed; ``run_eval`` P5; ``summarize`` rebuilds
the seed's tables from the results. Every function returns a typed record of blendstudy.results.

Nothing here measures in the calling process: each step runs in a worker process
(blendstudy.measure.worker) started with the stage's runtime already in place -- the caller's
environment for baseline..P1 (as the seed's baseline ran), the best P2 setting plus the params'
``runtime.env`` / ``runtime.cpu_affinity`` for P2's side of the pair and for P3 onwards.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from blendstudy import device as devices
from blendstudy import optimize
from blendstudy.emulation import EMULATED_BANNER, emulated
from blendstudy.measure.latency import LatencyStats, PairedComparison, paired_timers
from blendstudy.measure.worker import Worker, WorkerError, WorkerSpec
from blendstudy.report import latency_table, paired_chain_table, stage_chain_table
from blendstudy.results import (
    BaselineResult,
    EnvCheckResult,
    EvalResult,
    ExtrasResult,
    OfflineResult,
    PaddingStageResult,
    RuntimeStageResult,
    StageResult,
    SummaryResult,
    WeightsCheckResult,
    load_all_results,
    load_results,
    save_results,
)
from blendstudy.runtime import (
    RuntimeConfig,
    SweepResult,
    best_of,
    load_runtime,
    worker_env,
    write_best_runtime,
)
from blendstudy.study import evaluation, offline_stage, steps
from blendstudy.study.context import StudySpec, runtime_candidates_here
from blendstudy.study.params import StudyParams, check_paths, resolve_weights, run_dir, runtime_for, weights_label

__all__ = ["NOTEBOOKS", "STAGE_NOTEBOOKS", "Study", "check_environment", "check_weights", "open_study", "run_baseline",
           "run_eval", "run_extras", "run_offline", "run_runtime_stage", "run_stage", "run_sweep", "stage_runtime",
           "summarize"]

#: The study's notebooks, in the order they run (later ones read earlier ones' results).
NOTEBOOKS = ("env_check", "weights_check", "baseline", "p0_resize", "p1_decode", "p2_runtime",
             "p3_compile", "p4_pad64", "p6_offline", "p5_eval", "summary")

#: Which notebook measures each stage recipe of blendstudy.optimize.STAGE_RECIPES.
STAGE_NOTEBOOKS = {"baseline": "baseline", "p0": "p0_resize", "p1": "p1_decode", "p2": "p2_runtime",
                   "p3": "p3_compile", "p4": "p4_pad64"}

PathLike = Union[str, Path]


@dataclass
class Study:
    """One study run as the notebook's kernel holds it: the params, the run folder, the weights
    the params mean, the figures written so far, and the worker processes it started (one per
    runtime setting, reused across a notebook's calls, closed with :meth:`close` or at exit)."""

    spec: StudySpec
    params: StudyParams
    run_folder: Path
    weights_path: Optional[str]
    figures: Dict[str, Path] = field(default_factory=dict)
    workers: Dict[tuple, Worker] = field(default_factory=dict)
    processes: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def weights(self) -> str:
        return weights_label(self.weights_path)

    @property
    def random_weights(self) -> bool:
        return self.weights_path is None

    def header(self) -> str:
        """One markdown line: params, run folder, config, weights (RANDOM said loudly)."""
        line = (f"params `{self.params.path}` · run folder `{self.run_folder}` · config `{self.params.model.config}` · "
                f"device spec `{self.params.device}` · weights **{self.weights}**")
        if self.random_weights:
            line += ("\n\n> **RANDOM WEIGHTS**: no trained checkpoint was loaded; latencies are real, detections and "
                     "accuracy numbers are not.")
        if emulated():
            line += f"\n\n> **{EMULATED_BANNER}**"
        return line

    def worker(self, spec: WorkerSpec) -> Worker:
        """The live worker for this runtime setting (started on first use)."""
        key = spec.key()
        if key not in self.workers or self.workers[key].proc.poll() is not None:
            self.workers[key] = Worker(spec)
        return self.workers[key]

    def call(self, spec: WorkerSpec, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(self.spec, *args, **kwargs)`` in the worker for ``spec``."""
        return self.worker(spec).call(fn, self.spec, *args, **kwargs)

    def results(self, notebook: str) -> Any:
        """The typed record a notebook of this run wrote, or None if it has not run."""
        try:
            return load_results(self.run_folder / "results", notebook).extra
        except FileNotFoundError:
            return None

    def figure(self, name: str) -> Path:
        """The path of a figure of this run (<run folder>/figures/<name>), remembered for save()."""
        path = self.run_folder / "figures" / name
        self.figures[Path(name).stem] = path
        return path

    def save(self, notebook: str, record: Any, environment: Optional[Dict[str, Any]] = None) -> Path:
        """Write <run folder>/results/<notebook>.json with the record, the figures drawn so far
        and the effective runtime of the processes that measured it."""
        env = environment
        if env is None:
            if "environment" not in self.processes:
                spec, _ = stage_runtime(self, "env")
                self.processes["environment"] = self.call(spec, steps.environment)
            env = self.processes["environment"]
        processes = {k: v for k, v in self.processes.items() if k != "environment"}
        processes.update(getattr(record, "processes", None) or {})
        return save_results(self.run_folder / "results", notebook, record,
                            {**self.params.to_dict(), "max_images": self.spec.max_images}, self.figures, env, processes)

    def close(self) -> None:
        for w in self.workers.values():
            w.close()
        self.workers.clear()


_OPEN: List[Study] = []


@atexit.register
def _close_all() -> None:
    for s in _OPEN:
        s.close()


def open_study(params_file: PathLike, out_dir: Optional[PathLike] = None, max_images: Optional[int] = None
               ) -> Study:
    """Set a run up: read the params (a missing path stops here, naming the parameter), make the
    run folder (artifacts/<params name>/ or ``out_dir``), resolve the weights the params mean."""
    params = StudyParams.load(params_file)
    check_paths(params)
    folder = run_dir(params, out_dir)
    spec = StudySpec(str(Path(params.path).resolve()), str(folder.resolve()), max_images)
    study = Study(spec, params, folder, resolve_weights(params))
    _OPEN.append(study)
    return study


# ---------------------------------------------------------------------------- runtimes
def _best_runtime(study: Study) -> Optional[RuntimeConfig]:
    return load_runtime(study.run_folder / "runtime" / "runtime_best.json")


def stage_runtime(study: Study, stage: str) -> Tuple[WorkerSpec, Optional[RuntimeConfig]]:
    """The worker a stage is measured in, and the P2 setting its "runtime" switch applies.
    baseline, p0, p1: the caller's environment. p2's side of the pair, p3 and after: the best P2
    setting (runtime/runtime_best.json) under the params' runtime.env; the params' core range for
    this device (runtime.cpu_affinity) wins over the setting's binding when both give one."""
    if stage in ("baseline", "p0", "p1", "env", "weights"):
        return WorkerSpec(label=stage), None
    best = _best_runtime(study)
    env, cores = runtime_for(study.params, study.params.device)
    wenv, wcores = worker_env(best, env, None)
    return WorkerSpec(label=stage, env=wenv, cpu_cores=cores or wcores), best


# ---------------------------------------------------------------------------- the notebooks' steps
def check_environment(study: Study) -> EnvCheckResult:
    """env_check, measured in a worker: what a non-interactive process of this study sees."""
    spec, _ = stage_runtime(study, "env")
    return study.call(spec, steps.check_environment)


def check_weights(study: Study) -> WeightsCheckResult:
    spec, _ = stage_runtime(study, "weights")
    return study.call(spec, steps.check_weights)


def run_baseline(study: Study) -> BaselineResult:
    spec, _ = stage_runtime(study, "baseline")
    return study.call(spec, steps.measure_baseline)


def run_stage(study: Study, stage: str, previous: str) -> StageResult:
    """A stage (p0, p1, p3, p4) against ``previous`` and the baseline, in the stage's worker, as the
    stage's own record (blendstudy.stage_results.STAGE_RECORDS)."""
    spec, runtime = stage_runtime(study, stage)
    return study.call(spec, steps.measure_stage, stage, previous, runtime)


def run_extras(study: Study, stage: str = "p4", recipes: Optional[Sequence[str]] = None) -> ExtrasResult:
    """The params' extra recipes (default ``extras``) beside ``stage``, in the stage's worker."""
    spec, runtime = stage_runtime(study, stage)
    recipes = optimize.extra_recipes(recipes if recipes is not None else study.params.extras)
    return study.call(spec, steps.measure_extras, stage, recipes, runtime)


def run_sweep(study: Study, candidates: Sequence[RuntimeConfig], recipe: str = "p1",
              images: Optional[int] = None) -> List[SweepResult]:
    """Each runtime setting in its own fresh worker (variables set and cores bound before torch
    starts), ``recipe``'s latency on the first ``images`` benchmark images. A setting that cannot
    run (cores this machine lacks, a failing process) is reported, not fatal."""
    base_env, base_cores = runtime_for(study.params, study.params.device)
    out: List[SweepResult] = []
    for cfg in candidates:
        env, cores = worker_env(cfg, base_env, None)
        try:
            with Worker(WorkerSpec(label=f"P2 {cfg.name}", env=env, cpu_cores=cores or base_cores)) as w:
                run = w.call(steps.measure_latency_of, study.spec, recipe, cfg, images)
        except (WorkerError, OSError, ValueError) as exc:
            out.append(SweepResult(cfg, None, None, None, None, error=str(exc).splitlines()[0]))
            continue
        out.append(SweepResult(cfg, None, run.stats.p50, run.stats.mean, run.stats.p99, process=run.process))
    return out


def _candidates(study: Study) -> List[RuntimeConfig]:
    """The params' runtime.candidates, or ("auto") the device's own, made in a worker
    (context.runtime_candidates_here)."""
    r = study.params.runtime
    if r.candidates != "auto":
        return [RuntimeConfig(**c) for c in r.candidates][: r.max_settings]
    spec, _ = stage_runtime(study, "p0")
    return study.call(spec, runtime_candidates_here, r.max_settings)


def run_runtime_stage(study: Study) -> RuntimeStageResult:
    """P2: the sweep (one worker per setting, P1 pipeline), the best setting written to
    runtime/runtime_best.json (+ .sh), then P2 against P1 and the baseline as a REAL pair: the
    caller's environment in one worker, the best setting in another, the same image alternating
    between them (process-wide settings cannot be paired inside one process)."""
    r = study.params.runtime
    sweep = run_sweep(study, _candidates(study), "p1", r.images)
    best = best_of(sweep)
    if best is None:
        failures = "; ".join(f"{s.config.name}: {s.error}" for s in sweep)
        raise RuntimeError(f"P2: every runtime setting failed: {failures}")
    written = write_best_runtime(best, study.run_folder / "runtime")
    a_spec, _ = stage_runtime(study, "p1")
    b_spec, runtime = stage_runtime(study, "p2")
    a, b = study.worker(a_spec), study.worker(b_spec)
    a_info = a.call(steps.prepare, study.spec, ["baseline", "p1"])
    b.call(steps.prepare, study.spec, ["p2"], runtime)
    out = RuntimeStageResult(stage="p2", previous="p1", recipes=optimize.describe_recipes(["baseline", "p1", "p2"]),
                             sweep=sweep, best=best, best_files={k: str(v) for k, v in written.items()},
                             weights=study.weights, random_weights=study.random_weights)
    for recipe, w, rt in (("baseline", a, None), ("p1", a, None), ("p2", b, runtime)):
        out.add_latency(w.call(steps.measure_latency_of, study.spec, recipe, rt))
    t = study.params.timing
    for other in ("p1", "baseline"):
        out.comparisons[f"p2 vs {other}"] = paired_timers(
            lambda i, o=other: a.call(steps.time_one, study.spec, o, i),
            lambda i: b.call(steps.time_one, study.spec, "p2", i, runtime),
            a_info.images, rounds=t.rounds, warmup=t.warmup, n_boot=t.n_boot, confidence=t.confidence,
            progress=False, name_a=other, name_b="p2")
    out.accuracy, out.gate, out.ap_note = b.call(steps.gate, study.spec, [("baseline", "p2")], runtime)
    out.processes = {"p1 side": out.runs["p1"].process, "p2 side": out.runs["p2"].process}
    out.kernel = kernel_runtime(study)
    return out


def kernel_runtime(study: Study) -> Dict[str, Any]:
    """What the notebook's own kernel reads back about itself (blendstudy.device.effective_runtime),
    with torch_npu imported here where the study's device is an NPU, as a user's `import torch_npu`
    in a notebook would: its task queue is the one torch_npu forces off in an interactive interpreter."""
    if study.params.device.startswith("npu"):
        devices.npu_import_error()  # imports torch_npu in this process (a failure is only reported)
    return devices.effective_runtime()


def run_offline(study: Study) -> OfflineResult:
    """P6 (blendstudy.study.offline_stage): the dense part exported and run by each offline engine,
    every backend in a fresh worker of its own started with the stage's runtime."""
    spec, _ = stage_runtime(study, "p6")
    return offline_stage.run_offline(study, spec)


def run_eval(study: Study, recipe: Optional[str] = None) -> EvalResult:
    """P5 as a torchrun job of evaluation.processes ranks over evaluation.devices, started with the
    stage's runtime (resumable, merged by rank 0; see blendstudy.study.evaluation)."""
    spec, _ = stage_runtime(study, "p5")
    return evaluation.run_study_eval(study.params, study.spec, recipe, env=spec.env, cores=spec.cpu_cores)


# ---------------------------------------------------------------------------- summary
def summarize(study: Study) -> SummaryResult:
    """The seed's tables from this run's results: latency of each stage, the chain (unpaired means
    and the paired-ratio chain), every gate verdict as the notebooks decided it, the COCO AP."""
    results = {n: f.extra for n, f in load_all_results(study.run_folder / "results", list(NOTEBOOKS)).items()}
    stats: Dict[str, LatencyStats] = {}
    comparisons: Dict[str, PairedComparison] = {}
    out = SummaryResult(notebooks=list(results), weights=study.weights)
    for stage, nb in STAGE_NOTEBOOKS.items():
        rec = results.get(nb)
        if rec is not None and stage in rec.latency:
            stats[stage] = rec.latency[stage]
        if isinstance(rec, StageResult):
            comparisons.update(rec.comparisons)
            out.accuracy.update(rec.accuracy)
            out.gate.update(rec.gate)
    p4 = results.get("p4_pad64")
    if isinstance(p4, PaddingStageResult) and p4.extras is not None:
        out.accuracy.update(p4.extras.accuracy)
        out.gate.update(p4.extras.gate)
    stages = list(stats)
    versions = dict(stats)
    p5 = results.get("p5_eval")
    if isinstance(p5, EvalResult) and p5.timing is not None:
        versions[f"p5 ({p5.num_images} distinct images)"] = p5.timing
        out.coco = {f"{p5.recipe} {k}": m for k, m in p5.metrics.items()}
    if versions:
        out.versions = latency_table(list(versions.items())).to_dict("records")
    if stages:
        changes = {row["recipe"]: row["change"] for row in optimize.describe_recipes()}
        out.chain = stage_chain_table([(r, changes.get(r, ""), stats[r]) for r in stages]).to_dict("records")
        out.paired_chain = paired_chain_table(stages, comparisons, stats[stages[0]].mean).to_dict("records")
    return out


def stage_samples(study: Study) -> Dict[str, List[float]]:
    """Per-image latency samples of every stage, from the stage notebooks' results."""
    results = load_all_results(study.run_folder / "results", list(STAGE_NOTEBOOKS.values()))
    return {stage: results[nb].extra.samples_ms[stage] for stage, nb in STAGE_NOTEBOOKS.items()
            if nb in results and stage in results[nb].extra.samples_ms}
