"""P5 under torchrun: the study's launcher of ``python -m blendstudy eval`` and the reading of its
result.

The study (:func:`run_study_eval`, :func:`scaling_runs`) builds that command from the params
(evaluation.processes / devices, the runtime's core ranges) and runs it under torchrun as a
subprocess (:func:`launch`), a non-interactive process as every measurement of the study is; rank 0's
merged :class:`~blendstudy.results.EvalResult` comes back, and :func:`rank_rows` / :func:`describe`
show it.

The command itself lives beside this module and is re-exported here: the job and where each rank
runs in blendstudy.study.eval_job (:class:`EvalJob`, :class:`RankEnv`, :func:`rank_device`,
:func:`rank_cores`, :func:`backend_for`), what each rank does -- bind, join the process group,
predict its share into its shard, and on rank 0 merge, check and evaluate -- in
blendstudy.study.eval_rank (:func:`run_eval_job`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from blendstudy import device as devices
from blendstudy.coco.sharded import throughput
from blendstudy.errors import UserError
from blendstudy.jsonable import from_jsonable, to_jsonable
from blendstudy.measure import worker as workers
from blendstudy.results import EvalResult
from blendstudy.study.context import StudySpec
from blendstudy.study.eval_job import (
    DEFAULT_TIMEOUT_MIN,
    LOG_FILE,
    RESULT_FILE,
    TEST_CRASH_STATUS,
    TEST_STOP_ENV,
    EvalJob,
    RankEnv,
    backend_for,
    rank_cores,
    rank_device,
)
from blendstudy.study.eval_rank import run_eval_job
from blendstudy.study.params import (
    ParamsError,
    StudyParams,
    open_dataset,
    resolve_config,
    resolve_weights,
    runtime_for,
)

__all__ = ["DEFAULT_TIMEOUT_MIN", "EvalJob", "EvalLaunchError", "ParamsError", "RankEnv", "TEST_CRASH_STATUS",
           "TEST_STOP_ENV", "UserError", "backend_for", "describe", "launch", "rank_cores", "rank_device", "rank_rows",
           "run_eval_job", "run_study_eval", "scaling_counts", "scaling_runs", "study_job", "study_processes",
           "torchrun_command"]


class EvalLaunchError(RuntimeError):
    """The torchrun job of the study failed: the message has its error, ``log`` the file with all
    of its output."""

    def __init__(self, message: str, log: Optional[Path] = None) -> None:
        super().__init__(message)
        self.log = log


# ---------------------------------------------------------------------------- reading the result
def rank_rows(result: EvalResult) -> List[Dict[str, Any]]:
    """The per-rank table of a result: where each rank ran and what it did in this session."""
    keep = ("rank", "node", "host", "device", "cores", "share", "images", "skipped", "loop_s", "images_per_s",
            "images_per_s_after_first", "first_call_ms", "mean_ms", "p50_ms", "p90_ms", "load_s")
    return [{k: r.get(k) for k in keep} for r in result.ranks]


def describe(result: EvalResult) -> str:
    """One markdown paragraph: what was predicted, by how many processes, how fast."""
    t = throughput(result.ranks)
    rate = f"{t['images_per_s']:.2f} images/s in total" if t["images_per_s"] else "nothing predicted now"
    text = (f"recipe **{result.recipe}** on {result.num_images} images: {result.resumed_from} done before, "
            f"{result.processed} now by **{result.num_processes} process(es)** ({rate}, wall "
            f"{result.wall_s or 0:.1f} s), {len(result.skipped)} unreadable (skipped, listed in the results, "
            "not evaluated)")
    if result.discarded:
        text += " · earlier predictions came from another pipeline or code version and were discarded"
    return text


# ---------------------------------------------------------------------------- launching
def torchrun_command(job: EvalJob, nproc: int, nnodes: int = 1, node_rank: Optional[int] = None,
                     rdzv_endpoint: Optional[str] = None, python: str = sys.executable) -> List[str]:
    """``[python, -m, torch.distributed.run, --nproc-per-node, N, ..., -m, blendstudy, eval, ...]``:
    one machine = ``--standalone`` (a free local rendezvous port); several = ``--nnodes`` with a
    c10d rendezvous at ``rdzv_endpoint`` (host:port reachable from every node)."""
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(int(nproc))]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise ValueError("several nodes need a rendezvous endpoint (host:port)")
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint]
        if node_rank is not None:
            cmd += ["--node-rank", str(node_rank)]
    return cmd + ["-m", "blendstudy", "eval", *job.argv()]


def launch(job: EvalJob, nproc: int, env: Optional[Mapping[str, str]] = None,
           timeout_s: Optional[float] = None) -> EvalResult:
    """Run ``job`` under torchrun with ``nproc`` processes on this machine (a subprocess, its
    output in <out_dir>/launch.log) and return rank 0's EvalResult (skipped images listed in it).
    A failed job raises EvalLaunchError with its error line (rank 0's, when it gave one)."""
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result_file, log = out / RESULT_FILE, out / LOG_FILE
    if result_file.exists():
        result_file.unlink()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(torchrun_command(job, nproc), env=workers.child_environment(env),
                              stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s)
    if result_file.exists():
        return from_jsonable(EvalResult, json.loads(result_file.read_text(encoding="utf-8")))
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    said = [ln for ln in lines if ln.startswith("blendstudy: ")]
    why = said[0][len("blendstudy: "):] if said else " | ".join(lines[-5:])
    raise EvalLaunchError(f"P5 with {nproc} process(es) failed (status {proc.returncode}): {why} (see {log})", log)


# ---------------------------------------------------------------------------- the study's P5
def study_processes(params: StudyParams) -> Tuple[int, Optional[List[str]]]:
    """(processes, devices) of evaluation.processes (default 1) and evaluation.devices (default
    None: every process on the params' device kind, rank i on index i)."""
    listed = list(params.evaluation.devices or []) or None
    n = params.evaluation.processes
    if n < 1:
        raise ParamsError(f"{params.path}: parameter evaluation.processes: {n} (at least 1)")
    if listed is not None and len(listed) < n:
        raise ParamsError(f"{params.path}: parameter evaluation.devices: {len(listed)} device(s) for "
                          f"evaluation.processes {n}")
    return n, listed[:n] if listed else None


def _affinity(params: StudyParams, rank_devices: Sequence[str], cores: Optional[Sequence[int]]) -> Optional[str]:
    ranges = []
    for i, d in enumerate(rank_devices):
        _, own = runtime_for(params, d)
        use = own or (cores if i == 0 and len(rank_devices) == 1 else None)
        ranges.append(devices.format_cores(use) if use else "")
    return ";".join(ranges) if any(ranges) else None


def study_job(params: StudyParams, spec: StudySpec, recipe: Optional[str] = None, processes: int = 1,
              rank_devices: Optional[Sequence[str]] = None, cores: Optional[Sequence[int]] = None,
              out_dir: Optional[Path] = None) -> EvalJob:
    """The `eval` job of the study's P5: data.val, the params' model and evaluation settings, into
    <run folder>/p5_eval/<recipe>_<checkpoint>/ (another pipeline's predictions there are
    discarded); AP only with real weights. ``cores``: the stage's binding for a single process
    on the params' device (each device's own runtime.cpu_affinity range wins)."""
    e = params.evaluation
    recipe = recipe or e.recipe
    dataset = open_dataset(params, "val")
    weights = resolve_weights(params)
    stem = "random" if weights is None else Path(weights).stem
    device = params.device
    if rank_devices is None and processes > 1:
        device = device.split(":")[0]  # rank i on <kind>:i
    if rank_devices:
        listed = list(rank_devices)
    else:  # the device each rank will take, as rank_device names it
        listed = [device if processes == 1 or device in ("cpu", "auto") else f"{device}:{i}" for i in range(processes)]
    affinity = _affinity(params, listed, cores)
    return EvalJob(config=resolve_config(params), annotations=str(dataset.ann_file.resolve()),
                   image_dir=str(dataset.image_dir.resolve()),
                   out_dir=str(out_dir or Path(spec.run_folder) / "p5_eval" / f"{recipe}_{stem}"), weights=weights,
                   random_init=params.model.random_init,
                   device=device, devices=list(rank_devices) if rank_devices else None, recipe=recipe,
                   score_thresh=params.model.score_thresh, eval_score_thresh=e.score_thresh,
                   max_images=spec.max_images or e.max_images, max_dets=e.max_dets,
                   evaluate=weights is not None, on_mismatch="restart", cpu_affinity=affinity,
                   runtime=_runtime_file(spec), progress=False)


def _runtime_file(spec: StudySpec) -> Optional[str]:
    path = Path(spec.run_folder) / "runtime" / "runtime_best.json"
    return str(path) if path.is_file() else None


def run_study_eval(params: StudyParams, spec: StudySpec, recipe: Optional[str] = None,
                   env: Optional[Mapping[str, str]] = None, cores: Optional[Sequence[int]] = None) -> EvalResult:
    """The study's P5: the torchrun job of evaluation.processes ranks over evaluation.devices
    (resumable), its merged EvalResult with the params' reference APs beside it. ``env`` and
    ``cores``: the stage's runtime (protocol.stage_runtime)."""
    n, listed = study_processes(params)
    result = launch(study_job(params, spec, recipe, n, listed, cores), n, env)
    result.references = dict(params.references.ap)
    return result


def scaling_counts(params: StudyParams) -> List[int]:
    """The process counts of the scaling run: evaluation.scaling as a list, or true = 1, 2, 4 ...
    up to the devices listed (or evaluation.processes, or this machine's cores on a cpu study,
    at most 8), the largest included; false / absent = none."""
    scaling = params.evaluation.scaling
    if not scaling:
        return []
    if isinstance(scaling, (list, tuple)):
        return sorted({int(n) for n in scaling if int(n) >= 1})
    n, listed = study_processes(params)
    top = max(n, len(params.evaluation.devices or []))
    if top == 1 and params.device.startswith("cpu"):
        top = min(len(devices.allowed_cores()), 8)
    counts = [1]
    while counts[-1] * 2 <= top:
        counts.append(counts[-1] * 2)
    return sorted(set(counts + [top]))


def scaling_runs(params: StudyParams, spec: StudySpec, recipe: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None, counts: Optional[Sequence[int]] = None
                 ) -> List[Dict[str, Any]]:
    """Throughput of the same evaluation with 1..N processes (``counts``, default
    scaling_counts), each from scratch in <run folder>/p5_eval/scaling/<n>/ (the first n devices
    of evaluation.devices, or rank i on <kind>:i). One row per count: images, the parallel
    phase's seconds, images/s in total and per rank, the speedup over the first row, the wall
    time, the bbox AP (the same for every count: the same predictions). Written to
    <run folder>/p5_eval/scaling.json."""
    counts = list(counts if counts is not None else scaling_counts(params))
    _, listed = study_processes(params)
    every = list(params.evaluation.devices or [])
    rows: List[Dict[str, Any]] = []
    for n in counts:
        folder = Path(spec.run_folder) / "p5_eval" / "scaling" / str(n)
        shutil.rmtree(folder, ignore_errors=True)  # from scratch: a resumed run would predict nothing
        rank_devices = every[:n] if len(every) >= n else None
        result = launch(study_job(params, spec, recipe, n, rank_devices, None, folder), n, env)
        t = throughput(result.ranks)
        bbox = result.metrics.get("bbox")
        rows.append({"processes": n, "devices": ",".join(r["device"] for r in result.ranks), "images": t["images"],
                     "parallel s": t["parallel_s"], "images/s": t["images_per_s"],
                     "images/s after first call": t["images_per_s_after_first"],
                     "slowest rank images/s": t["slowest_rank_images_per_s"], "wall s": result.wall_s,
                     "bbox AP": bbox.AP if bbox else None})
    base = rows[0]["images/s"] if rows and rows[0]["images/s"] else None
    for r in rows:
        r["speedup"] = r["images/s"] / base if base and r["images/s"] else None
    out = Path(spec.run_folder) / "p5_eval" / "scaling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable(rows), indent=2) + "\n")
    return rows
