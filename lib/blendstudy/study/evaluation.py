"""P5 on one device or many: the rank-side driver of ``python -m blendstudy eval`` and the study's
launcher of that command under torchrun.

``torchrun --nproc-per-node N -m blendstudy eval ...`` starts N ranks (``--nnodes`` / ``--rdzv-*``
for several machines); a plain ``python -m blendstudy eval ...`` is the same code with one rank and
no process group. Each rank (:func:`run_eval_job`):

1. binds itself to its core range (``--cpu-affinity``) and makes its device current
   (``npu:LOCAL_RANK`` / ``cuda:LOCAL_RANK`` / cpu, or ``--devices[LOCAL_RANK]``);
2. joins the process group (hccl on npu, nccl on cuda, gloo on cpu; torchrun's RANK, WORLD_SIZE,
   MASTER_ADDR ... in the environment) plus a gloo group for the small messages below;
3. loads the model and the recipe;
4. rank 0 checks run_config.json (another pipeline's predictions: refused, or discarded with
   ``--on-mismatch restart``), reads EVERY shard of the folder and sends all ranks the ids still
   to do; rank r predicts ``pending[r::W]`` into its own shard (blendstudy.coco.sharded);
5. every rank sends rank 0 its row (device, cores, images, seconds, latency); rank 0 merges the
   shards, checks that every image was done exactly once (else names the missing / repeated ids
   and evaluates nothing), evaluates once and writes coco_predictions.json,
   per_image_timing.jsonl, skipped.jsonl, summary.json (the report) and eval_result.json (the
   :class:`~blendstudy.results.EvalResult`).

The out dir must be ONE folder every rank reads and writes (a shared filesystem when the ranks
span machines): rank 0 merges what it can read and says which rank's files it cannot see.

The study (:func:`run_study_eval`, :func:`scaling_runs`) builds that command from the params
(evaluation.processes / devices, the runtime's core ranges) and runs it as a subprocess, a
non-interactive process as every measurement of the study is.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from blendstudy import device as devices
from blendstudy.coco.evaluate import evaluate_coco
from blendstudy.coco.sharded import (
    SHARD_DIR,
    MergedRun,
    adopt_single_process_store,
    merge_shards,
    pending_ids,
    predict_images,
    rank_summary,
    read_shards,
    remove_shards,
    shard_paths,
    shard_share,
    throughput,
    write_merged,
)
from blendstudy.coco.store import RunMismatchError, check_run_config, run_paths
from blendstudy.data.coco import CocoDataset
from blendstudy.errors import UserError
from blendstudy.jsonable import from_jsonable, to_jsonable
from blendstudy.measure import worker as workers
from blendstudy.measure.latency import LatencyStats
from blendstudy.optimize import build_pipeline, recipe_switches
from blendstudy.predictor import load_pipeline
from blendstudy.results import EvalResult
from blendstudy.runtime import load_runtime
from blendstudy.study.context import StudySpec
from blendstudy.study.params import (
    ParamsError,
    StudyParams,
    open_dataset,
    resolve_config,
    resolve_weights,
    runtime_for,
    weights_label,
)

__all__ = ["DEFAULT_TIMEOUT_MIN", "EvalJob", "EvalLaunchError", "RankEnv", "TEST_CRASH_STATUS", "TEST_STOP_ENV",
           "backend_for", "describe", "launch", "rank_cores", "rank_device", "rank_rows", "run_eval_job",
           "run_study_eval", "scaling_counts", "scaling_runs", "study_job", "study_processes", "torchrun_command"]

#: TEST-ONLY knob: "<rank>:<k>[:crash]" makes that rank stop predicting after k images of its
#: share -- then either go on as if done (rank 0's merge must name the ids it left; "stop", the
#: default) or die at once with status TEST_CRASH_STATUS ("crash": a killed rank). Never set it
#: for a real run.
TEST_STOP_ENV = "BLENDSTUDY_EVAL_TEST_STOP"
TEST_CRASH_STATUS = 75
#: how long a rank waits for the others at a collective (the slowest rank's share, at most)
DEFAULT_TIMEOUT_MIN = 180.0
#: files rank 0 writes at the top of the out dir once the shards merge
RESULT_FILE, SUMMARY_FILE, INCOMPLETE_FILE, LOG_FILE = "eval_result.json", "summary.json", "incomplete.json", \
    "launch.log"


class EvalLaunchError(RuntimeError):
    """The torchrun job of the study failed: the message has its error, ``log`` the file with all
    of its output."""

    def __init__(self, message: str, log: Optional[Path] = None) -> None:
        super().__init__(message)
        self.log = log


@dataclass
class EvalJob:
    """One `eval` command: what to predict with, on what, into which folder, and how.

    score_thresh: the model's threshold (MODEL.FCOS.INFERENCE_TH_TEST; None = the config's);
    eval_score_thresh: detections kept for the COCO results (None = the model's threshold);
    devices: one device per local rank (None: the kind of ``device`` with index LOCAL_RANK);
    cpu_affinity: core ranges per local rank ("0-23;24-47", or "0-23,24-47" when each is one
    range), or per device ("npu:1=144-167;npu:2=96-119"), or one range for all;
    runtime: a runtime_best.json whose in-process part (threads, cuda flags) the recipe's
    "runtime" switch applies; evaluate: False = predict and time only (random weights)."""

    config: str
    annotations: str
    image_dir: str
    out_dir: str
    weights: Optional[str] = None
    device: str = "auto"
    devices: Optional[List[str]] = None
    recipe: str = "baseline"
    score_thresh: Optional[float] = None
    eval_score_thresh: Optional[float] = None
    max_images: Optional[int] = None
    max_dets: int = 100
    evaluate: bool = True
    on_mismatch: str = "error"
    cpu_affinity: Optional[str] = None
    runtime: Optional[str] = None
    progress: bool = True
    timeout_min: float = DEFAULT_TIMEOUT_MIN

    @classmethod
    def from_args(cls, args: Any) -> EvalJob:
        """From the `eval` command's parsed arguments (attribute names as the fields)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        if isinstance(values.get("devices"), str):
            values["devices"] = [d.strip() for d in values["devices"].split(",") if d.strip()] or None
        return cls(**values)

    def argv(self) -> List[str]:
        """The `eval` command's arguments for this job (from_args of their parse gives it back)."""
        out = ["--config", self.config, "--annotations", self.annotations, "--image-dir", self.image_dir,
               "--out-dir", self.out_dir, "--device", self.device, "--recipe", self.recipe,
               "--max-dets", str(self.max_dets), "--on-mismatch", self.on_mismatch,
               "--timeout-min", str(self.timeout_min)]
        optional = (("--weights", self.weights), ("--score-thresh", self.score_thresh),
                    ("--eval-score-thresh", self.eval_score_thresh), ("--max-images", self.max_images),
                    ("--cpu-affinity", self.cpu_affinity), ("--runtime", self.runtime),
                    ("--devices", ",".join(self.devices) if self.devices else None))
        for flag, value in optional:
            if value is not None:
                out += [flag, str(value)]
        if not self.evaluate:
            out.append("--no-evaluate")
        if not self.progress:
            out.append("--no-progress")
        return out


# ---------------------------------------------------------------------------- where a rank runs
@dataclass(frozen=True)
class RankEnv:
    """Where this process stands in the job, from torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK = the node); one rank of one when not launched."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node: int = 0
    launched: bool = False

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> RankEnv:
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        world = int(env["WORLD_SIZE"])
        return cls(rank=int(env["RANK"]), world_size=world, local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
                   local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)), node=int(env.get("GROUP_RANK", 0)),
                   launched=True)


def rank_device(spec: str, local_rank: int = 0, devices_list: Optional[Sequence[str]] = None,
                launched: bool = False, auto_kind: Optional[str] = None) -> str:
    """The device a rank runs on: ``devices_list[local_rank]`` when given; else ``spec`` with the
    local rank as index when it names a kind only ("npu", "cuda"; "auto" = the kind
    resolve_device would pick, ``auto_kind`` to say it) and the process was launched by
    torchrun; an explicit index ("npu:3") or "cpu" as it is."""
    if devices_list:
        if local_rank >= len(devices_list):
            raise UserError(f"--devices names {len(devices_list)} device(s) ({','.join(devices_list)}), "
                            f"none for local rank {local_rank}: give one per process of the node")
        return str(devices_list[local_rank]).strip().lower()
    spec = (spec or "auto").strip().lower()
    if not launched or ":" in spec or spec == "cpu":
        return spec
    kind = spec
    if kind == "auto":
        kind = auto_kind or ("npu" if devices.npu_available() else "cuda" if devices.cuda_available() else "cpu")
    return kind if kind == "cpu" else f"{kind}:{local_rank}"


def rank_cores(spec: Optional[str], local_rank: int = 0, device: str = "") -> Optional[List[int]]:
    """The cores a rank binds to, from ``--cpu-affinity``: None/"" = no binding; one range for
    every rank ("0-23"); one per local rank, ';'-separated ("0-23;24-47", each may hold commas)
    or ','-separated when each is a single range ("0-23,24-47"); or per device, as the params'
    runtime.cpu_affinity mapping ("npu:1=144-167;npu:2=96-119;default=0-23": the device, then
    its kind, then "default"). An empty entry means no binding for that rank."""
    if not spec or not str(spec).strip():
        return None
    text = "".join(str(spec).split())
    parts = text.split(";") if ";" in text else text.split(",")
    try:
        if any("=" in p for p in parts):
            table: Dict[str, str] = {}
            key = None
            for p in parts:
                if "=" in p:
                    key, _, value = p.partition("=")
                    table[key] = value
                elif key is not None and p:
                    table[key] += "," + p
            dev = str(device).lower()
            value = table.get(dev, table.get(dev.split(":")[0], table.get("default", "")))
        elif len(parts) == 1:
            value = parts[0]
        elif local_rank < len(parts):
            value = parts[local_rank]
        else:
            raise UserError(f"--cpu-affinity {spec!r} gives {len(parts)} core ranges, none for local rank "
                            f"{local_rank}")
        return devices.parse_cores(value) or None
    except ValueError as exc:
        raise UserError(f"--cpu-affinity: {exc}") from None


def backend_for(device: torch.device) -> str:
    """The process group's backend for a device: hccl (Ascend), nccl (CUDA), gloo (cpu)."""
    return {"npu": "hccl", "cuda": "nccl"}.get(torch.device(device).type, "gloo")


def _bind(cores: List[int]) -> None:
    """Bind this process to ``cores`` and cap torch's threads at their number (the thread pool was
    sized when torch started, before the binding)."""
    try:
        os.sched_setaffinity(0, cores)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot bind to cores {devices.format_cores(cores)}: {exc} "
                        f"(this machine allows {devices.format_cores(devices.allowed_cores())})") from None
    torch.set_num_threads(max(1, min(torch.get_num_threads(), len(cores))))


def _test_stop(rank: int, environ: Mapping[str, str]) -> Tuple[Optional[int], bool]:
    raw = environ.get(TEST_STOP_ENV, "").strip()
    if not raw:
        return None, False
    parts = raw.split(":")
    if int(parts[0]) != rank:
        return None, False
    return int(parts[1]), len(parts) > 2 and parts[2] == "crash"


# ---------------------------------------------------------------------------- the ranks' driver
class _Group:
    """The job's process groups (none for one rank): the device backend's, and gloo for objects."""

    def __init__(self, env: RankEnv, device: torch.device, timeout_min: float) -> None:
        self.env = env
        self.objects = None
        if env.world_size == 1:
            return
        timeout = datetime.timedelta(minutes=timeout_min)
        backend = backend_for(device)
        dist.init_process_group(backend=backend, timeout=timeout)
        self.objects = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD

    def broadcast(self, obj: Any) -> Any:
        if self.env.world_size == 1:
            return obj
        box = [obj if self.env.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.objects)
        return box[0]

    def gather(self, obj: Any) -> Optional[List[Any]]:
        if self.env.world_size == 1:
            return [obj]
        out: Optional[List[Any]] = [None] * self.env.world_size if self.env.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.objects)
        return out

    def close(self) -> None:
        if self.env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def run_eval_job(job: EvalJob, environ: Optional[Mapping[str, str]] = None) -> Optional[EvalResult]:
    """This process's part of ``job`` (see the module docstring); returns the merged EvalResult
    on rank 0 and None on the others. Raises UserError (one line) for what a user can fix: another
    run's folder, missing / repeated images (IncompleteEvaluationError), a bad core range."""
    start = time.perf_counter()
    environ = os.environ if environ is None else environ
    env = RankEnv.from_environ(environ)
    if job.on_mismatch not in ("error", "restart"):
        raise UserError(f"--on-mismatch must be error or restart, not {job.on_mismatch!r}")
    try:
        recipe_switches(job.recipe)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    spec = rank_device(job.device, env.local_rank, job.devices, env.launched)
    # a per-device core table is looked up by the device ("auto" alone: the kind it resolves to, index 0)
    cores = rank_cores(job.cpu_affinity, env.local_rank, rank_device(job.device, env.local_rank, job.devices, True))
    if cores:
        _bind(cores)  # before the model loads: its memory and threads start on these cores
    device = devices.resolve_device(spec)  # and makes it current (devices.activate)
    group = _Group(env, device, job.timeout_min)
    try:
        return _run(job, env, device, cores, group, start, environ)
    finally:
        group.close()


def _run(job: EvalJob, env: RankEnv, device: torch.device, cores: Optional[List[int]], group: _Group,
         start: float, environ: Mapping[str, str]) -> Optional[EvalResult]:
    t0 = time.perf_counter()
    loaded = load_pipeline(job.config, job.weights, str(device), job.score_thresh, warn_random=env.rank == 0)
    runtime = load_runtime(Path(job.runtime)) if job.runtime else None
    pipe = build_pipeline(loaded.pipeline, job.recipe, runtime=replace(runtime, cpu_cores=None) if runtime else None)
    load_s = time.perf_counter() - t0
    ds = CocoDataset(job.annotations, job.image_dir)
    classes = int(loaded.config.MODEL.FCOS.NUM_CLASSES)
    if classes == len(ds.category_ids):
        categories = ds.contiguous_to_category_id
    elif job.evaluate:
        raise UserError(f"{job.annotations}: {len(ds.category_ids)} categories, but the model predicts "
                        f"{classes} classes (MODEL.FCOS.NUM_CLASSES): they cannot be mapped one to one")
    else:
        categories = {c: c + 1 for c in range(classes)}
    ids = [int(i) for i in ds.subset(job.max_images)]
    thresh = job.eval_score_thresh if job.eval_score_thresh is not None else \
        float(loaded.config.MODEL.FCOS.INFERENCE_TH_TEST)
    run_info = json.loads(json.dumps(loaded.prediction_identity(job.recipe), sort_keys=True))
    config = {"score_thresh": thresh, "max_dets": int(job.max_dets), "run_info": run_info}
    out = Path(job.out_dir)

    plan: Dict[str, Any] = {}
    if env.rank == 0:
        try:
            plan = {"ok": True, **_prepare(out, config, job.on_mismatch, ids)}
        except Exception as exc:
            group.broadcast({"ok": False, "error": str(exc)})
            if isinstance(exc, RunMismatchError):  # the folder holds another run: say so, keep it
                raise UserError(str(exc)) from None
            raise
    plan = group.broadcast(plan)
    if not plan["ok"]:
        raise UserError(f"rank {env.rank}: rank 0 stopped the job: {plan['error']}")

    share = shard_share(plan["pending"], env.rank, env.world_size)
    limit, crash = _test_stop(env.rank, environ)
    session = predict_images(share, ds.image_path, pipe, categories, shard_paths(out, env.rank, env.world_size),
                            thresh, job.max_dets, device=device,
                            record={"rank": env.rank, "world_size": env.world_size}, limit=limit,
                            progress=job.progress and env.local_rank == 0, desc=f"COCO predict (rank {env.rank})")
    if crash and session.stopped:
        os._exit(TEST_CRASH_STATUS)  # the test hook's killed rank: no clean-up, as a kill
    row = rank_summary(session, rank=env.rank, local_rank=env.local_rank, node=env.node,
                       host=socket.gethostname(), device=str(device),
                       cores=devices.format_cores(cores) if cores else None, load_s=load_s,
                       process=devices.effective_runtime())
    rows = group.gather(row)
    if env.rank != 0:
        return None
    return _merge_and_report(job, out, ids, rows or [row], plan, loaded, ds, thresh, start)


def _prepare(out: Path, config: Dict[str, Any], on_mismatch: str, ids: Sequence[int]) -> Dict[str, Any]:
    """Rank 0, before anyone writes: the run_config check, the earlier single-process store
    adopted, stale merged outputs removed, every shard read: the ids still to do."""
    out.mkdir(parents=True, exist_ok=True)
    paths = run_paths(out)
    discarded = check_run_config(paths.run_config, config, on_mismatch)
    stale = [paths.coco_predictions, paths.timing_jsonl, paths.skipped_jsonl]
    stale += [str(out / n) for n in (RESULT_FILE, SUMMARY_FILE, INCOMPLETE_FILE)]
    if discarded is not None:
        remove_shards(out)
        stale.append(paths.predictions_jsonl)
    else:
        adopt_single_process_store(out)
    for p in stale:
        if os.path.exists(p):
            os.unlink(p)
    Path(paths.run_config).write_text(json.dumps(config, sort_keys=True) + "\n")
    (out / SHARD_DIR).mkdir(exist_ok=True)
    pending = pending_ids(ids, read_shards(out))
    return {"pending": pending, "resumed_from": len(ids) - len(pending), "discarded": discarded}


def _unseen_shards(rows: Sequence[Mapping[str, Any]], merged: MergedRun, out: Path) -> List[str]:
    """Ranks whose files rank 0 cannot read (an out dir that is not one shared folder)."""
    seen = set(merged.shards)
    return [f"rank {r['rank']} on {r['host']} ({r['images'] + r['skipped']} image(s) in "
            f"{out / SHARD_DIR / r['shard']}*)" for r in rows
            if r["images"] + r["skipped"] > 0 and r["shard"] not in seen]


def _merge_and_report(job: EvalJob, out: Path, ids: List[int], rows: List[Dict[str, Any]], plan: Dict[str, Any],
                      loaded: Any, ds: CocoDataset, thresh: float, start: float) -> EvalResult:
    merged = merge_shards(ids, read_shards(out))
    unseen = _unseen_shards(rows, merged, out)
    if unseen or not merged.complete:
        Path(out, INCOMPLETE_FILE).write_text(json.dumps(to_jsonable(
            {"missing": merged.missing, "duplicated": merged.duplicated, "shards": merged.shards,
             "unseen": unseen, "ranks": rows}), indent=2) + "\n")
    if unseen:
        raise UserError(f"rank 0 cannot read the shards of {'; '.join(unseen)}: the out dir must be one folder "
                        f"shared by every node (see {out / INCOMPLETE_FILE})")
    merged.check()
    paths = write_merged(out, merged)
    preds = merged.coco_results()
    metrics = {}
    if job.evaluate and merged.predicted:
        metrics = evaluate_coco(ds.coco, preds, max_dets=job.max_dets, score_thresh=thresh, image_ids=merged.predicted)
    steady = merged.steady_ms()
    every = [float(t["ms"]) for t in merged.timing]
    result = EvalResult(
        recipe=job.recipe, metrics=metrics, timing=LatencyStats.from_samples(steady) if steady else None,
        samples_ms={job.recipe: steady or every}, first_call_ms=merged.first_call_ms(), evaluated=bool(metrics),
        num_images=len(merged.predicted), num_detections=len(preds), skipped=merged.skipped, score_thresh=thresh,
        max_dets=int(job.max_dets), paths=_paths(paths, out),
        resumed_from=int(plan["resumed_from"]), processed=sum(int(r["images"]) for r in rows),
        discarded=plan.get("discarded"), num_processes=len(rows), ranks=rows, wall_s=time.perf_counter() - start,
        weights=weights_label(loaded.weights), random_weights=loaded.random_weights, model=loaded.describe())
    summary = {"metrics": {k: m.to_dict() for k, m in metrics.items()}, **loaded.describe(), "recipe": job.recipe,
               "protocol": {"score_thresh": thresh, "max_dets": int(job.max_dets), "iou_types": sorted(metrics),
                            "images": len(ids), "images_evaluated": len(merged.predicted) if metrics else 0,
                            "images_skipped": [int(s["image_id"]) for s in merged.skipped]},
               "num_images": result.num_images, "num_detections": result.num_detections,
               "detections_per_image": result.num_detections / result.num_images if result.num_images else None,
               "skipped": merged.skipped, "resumed_from": result.resumed_from, "processed": result.processed,
               "world_size": len(rows), "throughput": throughput(rows), "wall_s": result.wall_s,
               "ranks": [{k: v for k, v in r.items() if k != "process"} for r in rows]}
    Path(out, SUMMARY_FILE).write_text(json.dumps(to_jsonable(summary), indent=2) + "\n")
    tmp = Path(out, RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    os.replace(tmp, Path(out, RESULT_FILE))
    return result


def _paths(paths: Any, out: Path) -> Dict[str, str]:
    return {"out_dir": paths.out_dir, "coco_predictions": paths.coco_predictions, "timing_jsonl": paths.timing_jsonl,
            "skipped_jsonl": paths.skipped_jsonl, "run_config": paths.run_config, "shards": str(out / SHARD_DIR),
            "summary": str(out / SUMMARY_FILE)}


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
