"""Predict a COCO split resumably, then evaluate it (the study's P5 and the CLI's ``eval``).

Per image: read, predict (timed by the study's synchronised clock), keep the protocol's
detections, append to the prediction store (:mod:`blendstudy.coco.store`); at the end the COCO
results are rebuilt from the store (identical bytes whether or not the run was interrupted) and
scored by :func:`blendstudy.coco.evaluate.evaluate_coco`. Latencies are in milliseconds.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from blendstudy.coco.convert import CategoryMap, detections_to_coco
from blendstudy.coco.evaluate import CocoMetrics, evaluate_coco
from blendstudy.coco.store import (
    CocoRunPaths,
    RunMismatchError,
    append_jsonl,
    check_run_config,
    read_jsonl,
    rewrite_jsonl,
    run_paths,
)
from blendstudy.data.images import read_image
from blendstudy.jsonable import to_jsonable
from blendstudy.measure.clock import timed_call
from blendstudy.measure.latency import LatencyStats
from blendstudy.structures import Detections

__all__ = ["CocoEvalRun", "PredictSession", "RunMismatchError", "SkippedImage", "filter_detections", "predict_images",
           "run_coco_evaluation"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class SkippedImage:
    """An image that could not be read; ``reason`` is the reader's message."""

    image_id: int
    file: str
    reason: str


@dataclass
class CocoEvalRun:
    """Result of :func:`run_coco_evaluation`.

    metrics:       iou type -> CocoMetrics ({} when no ground truth was given).
    timing:        LatencyStats (ms) of predict() per image over all sessions, excluding the first
                   image of each session (compile / warm-up), None if no such image.
    first_call_ms: predict() time of the first image of each session, reported apart.
    resumed_from:  images already done (predicted or skipped) when this session started.
    processed:     images predicted in this session.
    discarded:     the run_config.json of an earlier run in the folder whose predictions were thrown
                   away because another pipeline made them (on_mismatch="restart"), else None.
    """

    metrics: Dict[str, CocoMetrics]
    timing: Optional[LatencyStats]
    first_call_ms: List[float]
    skipped: List[SkippedImage]
    paths: CocoRunPaths
    resumed_from: int
    processed: int
    num_images: int
    num_detections: int
    score_thresh: Optional[float]
    max_dets: int
    discarded: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        return to_jsonable(self)


def filter_detections(det: Detections, score_thresh: Optional[float], max_dets: int) -> Detections:
    """Drop scores below ``score_thresh`` and keep the ``max_dets`` best (descending score)."""
    det = det.cpu()
    scores = det.scores.reshape(-1).double()
    keep = torch.ones_like(scores, dtype=torch.bool)
    if score_thresh is not None:
        keep &= scores >= score_thresh
    idx = torch.nonzero(keep).reshape(-1)
    idx = idx[torch.argsort(-scores[idx], stable=True)][:max_dets]

    def sel(t):
        return None if t is None else t[idx]

    return Detections(boxes=det.boxes[idx], scores=det.scores[idx], classes=det.classes[idx],
                      image_size=det.image_size, masks=sel(det.masks), raw_masks=sel(det.raw_masks),
                      extras=dict(det.extras))


@dataclass
class PredictSession:
    """What one predicting process (a rank) did in this session: ``processed`` images predicted, ``skipped`` unreadable
    ones, ``loop_s`` the wall time of its predict loop (reading, predicting, writing), ``ms`` the
    timed predict() of each predicted image in order (the first is the session's first call),
    ``stopped`` True when ``limit`` ended the loop before its share was done."""

    prefix: str
    share: int
    processed: int = 0
    skipped: List[SkippedImage] = field(default_factory=list)
    loop_s: float = 0.0
    ms: List[float] = field(default_factory=list)
    stopped: bool = False


def predict_images(
    ids: Sequence[int],
    image_path: Callable[[int], PathLike],
    predict: Callable[[np.ndarray], Detections],
    contiguous_to_category_id: CategoryMap,
    paths: CocoRunPaths,
    score_thresh: Optional[float],
    max_dets: int = 100,
    read: Optional[Callable[[PathLike], np.ndarray]] = None,
    device: Optional[Union[torch.device, str]] = None,
    record: Optional[Mapping[str, Any]] = None,
    limit: Optional[int] = None,
    progress: bool = False,
    desc: str = "COCO predict",
) -> PredictSession:
    """Predict ``ids`` in order into one prediction store's files (a run folder's, or one shard's):
    read (a ValueError / OSError is warned about and appended to the skipped file), the timed
    predict() (measure.clock.timed_call, ``device`` synchronised), the protocol's filter (scores
    >= ``score_thresh``, the ``max_dets`` best), then one timing line ({"image_id", "file", "ms",
    "num_detections", "first_in_session", **record}) and last the predictions line that marks the
    image done, each flushed and fsynced. ``limit``: stop after that many predicted images (the
    rest stays to do; a test hook and a way to bound a session)."""
    Path(paths.out_dir).mkdir(parents=True, exist_ok=True)
    read_fn = read if read is not None else read_image
    dev = torch.device(device) if device is not None else None
    extra = dict(record or {})
    session = PredictSession(prefix=Path(paths.predictions_jsonl).name[: -len("predictions.jsonl")], share=len(ids))
    t0 = time.perf_counter()
    with open(paths.predictions_jsonl, "a", encoding="utf-8") as pf, \
            open(paths.timing_jsonl, "a", encoding="utf-8") as tf, \
            open(paths.skipped_jsonl, "a", encoding="utf-8") as sf:
        for image_id in tqdm([int(i) for i in ids], desc=desc, disable=not progress, leave=False):
            if limit is not None and session.processed >= limit:
                session.stopped = True
                break
            file = str(image_path(image_id))
            try:
                image = read_fn(file)
            except (ValueError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
                warnings.warn(f"skipping image {image_id}: {reason}", stacklevel=2)
                session.skipped.append(SkippedImage(image_id, file, reason))
                append_jsonl(sf, {"image_id": image_id, "file": file, "reason": reason, **extra})
                continue
            ms, det = timed_call(predict, image, dev, keep=True)
            det = filter_detections(det, score_thresh, max_dets)
            results = detections_to_coco(det, image_id, contiguous_to_category_id)
            append_jsonl(tf, {"image_id": image_id, "file": file, "ms": ms, "num_detections": len(results),
                               "first_in_session": session.processed == 0, **extra})
            append_jsonl(pf, {"image_id": image_id, "results": results})
            session.ms.append(ms)
            session.processed += 1
    session.loop_s = time.perf_counter() - t0
    return session


def run_coco_evaluation(
    image_ids: Sequence[int],
    image_path: Callable[[int], PathLike],
    predict: Callable[[np.ndarray], Detections],
    gt_coco: Any,
    contiguous_to_category_id: CategoryMap,
    out_dir: PathLike,
    score_thresh: Optional[float],
    max_dets: int = 100,
    read: Optional[Callable[[PathLike], np.ndarray]] = None,
    resume: bool = True,
    progress: bool = True,
    device: Optional[Union[torch.device, str]] = None,
    iou_types: Sequence[str] = ("bbox", "segm"),
    run_info: Optional[Mapping[str, Any]] = None,
    on_mismatch: str = "error",
) -> CocoEvalRun:
    """Predict every image resumably, write COCO predictions and evaluate them.

    Per image: ``read(image_path(id))`` (default blendstudy.data.images.read_image: HxWx3 uint8
    BGR), ``predict(image)`` (timed by measure.clock.timed_call: with ``device`` the device is
    synchronised around the call), drop scores < ``score_thresh``,
    keep the ``max_dets`` best, then append one line to ``per_image_timing.jsonl``
    ({"image_id", "file", "ms", "num_detections", "first_in_session"}) and one to
    ``predictions.jsonl`` ({"image_id", "results": [COCO dicts]}), each flushed and fsynced. The
    predictions line is written last: it is what marks an image done, so an interruption loses at
    most the image in flight.

    A read failure (ValueError -- blendstudy.data's ImageReadError is one -- or OSError) is
    warned about, appended to ``skipped.jsonl`` and the run goes on; skipped images count as done
    and are not retried on resume (delete skipped.jsonl to retry them).

    Resume (default): existing jsonl files are read back (a truncated last line is dropped and the
    file rewritten), done ids are skipped. ``run_config.json`` records score_thresh / max_dets and
    ``run_info`` (JSON-able: what makes the predictions -- recipe, checkpoint digest, code
    fingerprint); resuming with different values raises ValueError, or with
    ``on_mismatch="restart"`` warns, discards the old predictions and starts afresh (the old
    config is returned as ``discarded``). ``resume=False`` starts afresh.

    At the end ``coco_predictions.json`` (one list, in the order of ``image_ids``, rebuilt from
    predictions.jsonl so interrupted and uninterrupted runs give identical bytes) is written and,
    if ``gt_coco`` is given, evaluated on exactly the predicted (not skipped) images.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = run_paths(out)
    pred_path, timing_path = Path(paths.predictions_jsonl), Path(paths.timing_jsonl)
    skipped_path, config_path = Path(paths.skipped_jsonl), Path(paths.run_config)
    config: Dict[str, Any] = {"score_thresh": score_thresh, "max_dets": int(max_dets)}
    if run_info is not None:
        config["run_info"] = json.loads(json.dumps(dict(run_info), sort_keys=True))
    discarded: Optional[Dict[str, Any]] = None

    ids = [int(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        warnings.warn("duplicate image ids given; each is predicted once", stacklevel=2)
        ids = list(dict.fromkeys(ids))

    if on_mismatch not in ("error", "restart"):
        raise ValueError(f"on_mismatch must be 'error' or 'restart', not {on_mismatch!r}")
    if resume:
        discarded = check_run_config(config_path, config, on_mismatch)
        resume = discarded is None
    if not resume:
        for p in (pred_path, timing_path, skipped_path, Path(paths.coco_predictions)):
            if p.exists():
                p.unlink()
    config_path.write_text(json.dumps(config, sort_keys=True) + "\n")

    pred_recs = read_jsonl(pred_path)
    done_pred: Dict[int, List[Dict[str, Any]]] = {}
    for rec in pred_recs:
        done_pred.setdefault(int(rec["image_id"]), rec["results"])
    if len(done_pred) != len(pred_recs):
        warnings.warn(f"{pred_path}: duplicate image ids, first occurrence kept", stacklevel=2)
    # Timing lines of images whose predictions line never made it are dropped (image is redone).
    timing_recs = read_jsonl(timing_path)
    kept_timing = [r for r in timing_recs if int(r["image_id"]) in done_pred]
    if len(kept_timing) != len(timing_recs):
        rewrite_jsonl(timing_path, kept_timing)
    skipped_recs = read_jsonl(skipped_path)
    skipped = [SkippedImage(int(r["image_id"]), str(r["file"]), str(r["reason"])) for r in skipped_recs]
    done = set(done_pred) | {s.image_id for s in skipped}
    resumed_from = sum(1 for i in ids if i in done)
    stray = set(done_pred) - set(ids)
    if stray:
        warnings.warn(f"{pred_path}: {len(stray)} image id(s) not in this run's image_ids are ignored",
                      stacklevel=2)

    read_fn = read if read is not None else read_image
    dev = torch.device(device) if device is not None else None
    todo = [i for i in ids if i not in done]
    processed = 0

    session = predict_images(todo, image_path, predict, contiguous_to_category_id, paths, score_thresh, max_dets,
                             read=read_fn, device=dev, progress=progress)
    skipped.extend(session.skipped)
    processed = session.processed

    # Rebuild everything from disk: identical bytes whether or not the run was interrupted.
    final_pred: Dict[int, List[Dict[str, Any]]] = {}
    for rec in read_jsonl(pred_path):
        final_pred.setdefault(int(rec["image_id"]), rec["results"])
    predicted_ids = [i for i in ids if i in final_pred]
    coco_preds = [r for i in predicted_ids for r in final_pred[i]]
    tmp = Path(paths.coco_predictions + ".tmp")
    tmp.write_text(json.dumps(coco_preds))
    os.replace(tmp, paths.coco_predictions)

    id_set = set(predicted_ids)
    timing_all = [r for r in read_jsonl(timing_path) if int(r["image_id"]) in id_set]
    first_ms = [float(r["ms"]) for r in timing_all if r.get("first_in_session")]
    steady_ms = [float(r["ms"]) for r in timing_all if not r.get("first_in_session")]
    timing = LatencyStats.from_samples(steady_ms) if steady_ms else None

    metrics: Dict[str, CocoMetrics] = {}
    if gt_coco is not None and predicted_ids:
        metrics = evaluate_coco(gt_coco, coco_preds, iou_types=iou_types, max_dets=max_dets,
                                score_thresh=score_thresh, image_ids=predicted_ids)
    id_all = set(ids)
    return CocoEvalRun(
        metrics=metrics,
        timing=timing,
        first_call_ms=first_ms,
        skipped=[s for s in skipped if s.image_id in id_all],
        paths=paths,
        resumed_from=resumed_from,
        processed=processed,
        num_images=len(predicted_ids),
        num_detections=len(coco_preds),
        score_thresh=score_thresh,
        max_dets=int(max_dets),
        discarded=discarded,
    )
