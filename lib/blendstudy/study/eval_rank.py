"""The rank side of ``python -m blendstudy eval`` (:func:`run_eval_job`), one device or many.

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
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from dataclasses import replace
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
from blendstudy.jsonable import to_jsonable
from blendstudy.loading import load_pipeline
from blendstudy.measure.latency import LatencyStats
from blendstudy.optimize import build_pipeline, recipe_switches
from blendstudy.results import EvalResult
from blendstudy.runtime import load_runtime
from blendstudy.study.eval_job import (
    INCOMPLETE_FILE,
    RESULT_FILE,
    SUMMARY_FILE,
    TEST_CRASH_STATUS,
    TEST_STOP_ENV,
    EvalJob,
    RankEnv,
    backend_for,
    rank_cores,
    rank_device,
)
from blendstudy.study.params import weights_label

__all__ = ["run_eval_job"]


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
    loaded = load_pipeline(job.config, job.weights, str(device), job.score_thresh, warn_random=env.rank == 0,
                           random_init=job.random_init)
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
