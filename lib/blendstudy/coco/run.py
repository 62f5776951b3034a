"""Predict a COCO split resumably, then evaluate it (the study's P5 and the CLI's ``eval``).

Three parts, composed by :func:`run_coco_evaluation`: the resume store
(:class:`blendstudy.coco.resume.ResumeStore` over :mod:`blendstudy.coco.store`: what is done,
what is still to do), the predict loop (:func:`blendstudy.coco.predict.predict_images`: per image
read, predict timed by the study's synchronised clock, keep the protocol's detections, append to
the store) and the metrics (:func:`score_predictions`, once at the end, on the COCO results
rebuilt from the store: identical bytes whether or not the run was interrupted). Latencies are in
milliseconds.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from blendstudy.coco.convert import CategoryMap
from blendstudy.coco.evaluate import CocoMetrics, evaluate_coco
from blendstudy.coco.predict import PredictSession, SkippedImage, filter_detections, predict_images
from blendstudy.coco.resume import ResumeStore
from blendstudy.coco.store import CocoRunPaths, RunMismatchError, check_run_config, run_paths
from blendstudy.jsonable import to_jsonable
from blendstudy.measure.latency import LatencyStats
from blendstudy.structures import Detections

__all__ = ["CocoEvalRun", "PredictSession", "RunMismatchError", "SkippedImage", "filter_detections", "predict_images",
           "run_coco_evaluation", "score_predictions"]

PathLike = Union[str, "os.PathLike[str]"]


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


def _run_config(score_thresh: Optional[float], max_dets: int, run_info: Optional[Mapping[str, Any]]
                ) -> Dict[str, Any]:
    """What run_config.json records: the protocol's filter and ``run_info`` (as JSON would read it back)."""
    config: Dict[str, Any] = {"score_thresh": score_thresh, "max_dets": int(max_dets)}
    if run_info is not None:
        config["run_info"] = json.loads(json.dumps(dict(run_info), sort_keys=True))
    return config


def _unique_ids(image_ids: Sequence[int]) -> List[int]:
    """``image_ids`` as ints, each once (first position kept; a warning when there were repeats)."""
    ids = [int(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        warnings.warn("duplicate image ids given; each is predicted once", stacklevel=3)
        ids = list(dict.fromkeys(ids))
    return ids


def score_predictions(gt_coco: Any, coco_preds: List[Dict[str, Any]], predicted_ids: Sequence[int],
                      iou_types: Sequence[str], max_dets: int, score_thresh: Optional[float]
                      ) -> Dict[str, CocoMetrics]:
    """The metrics, once at the end: evaluate_coco on exactly the predicted (not skipped) images;
    {} without ground truth or without a predicted image."""
    if gt_coco is None or not predicted_ids:
        return {}
    return evaluate_coco(gt_coco, coco_preds, iou_types=iou_types, max_dets=max_dets,
                         score_thresh=score_thresh, image_ids=list(predicted_ids))


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
    """Predict every image resumably, write COCO predictions and evaluate them: the resume store, the
    predict loop and the metrics, composed.

    Per image (predict_images): ``read(image_path(id))`` (default blendstudy.data.images.read_image:
    HxWx3 uint8 BGR), ``predict(image)`` timed (``device`` synchronised around the call), scores <
    ``score_thresh`` dropped, the ``max_dets`` best kept, a per_image_timing.jsonl line, and last the
    predictions.jsonl line that marks the image done (each flushed and fsynced): an interruption loses
    at most the image in flight. A read failure (ValueError -- blendstudy.data's ImageReadError is one
    -- or OSError) is warned about and appended to skipped.jsonl; skipped images count as done and are
    not retried on resume (delete skipped.jsonl to retry them).

    Resume (default; ResumeStore): done ids are skipped. run_config.json records score_thresh /
    max_dets and ``run_info`` (JSON-able: what makes the predictions -- recipe, checkpoint digest,
    code fingerprint); resuming with different values raises RunMismatchError (a ValueError), or with
    ``on_mismatch="restart"`` warns, discards the old predictions and starts afresh (the old config
    is returned as ``discarded``). ``resume=False`` starts afresh. At the end coco_predictions.json
    (in the order of ``image_ids``, rebuilt from predictions.jsonl: identical bytes whether or not the
    run was interrupted) is written and, with ``gt_coco``, scored on exactly the predicted images.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = run_paths(out)
    config = _run_config(score_thresh, max_dets, run_info)
    ids = _unique_ids(image_ids)
    if on_mismatch not in ("error", "restart"):
        raise ValueError(f"on_mismatch must be 'error' or 'restart', not {on_mismatch!r}")
    discarded = check_run_config(paths.run_config, config, on_mismatch) if resume else None
    store = ResumeStore.open(paths, config, fresh=not resume or discarded is not None)
    resumed_from = store.resumed_from(ids)
    session = predict_images(store.todo(ids), image_path, predict, contiguous_to_category_id, paths, score_thresh,
                             max_dets, read=read, device=device, progress=progress)
    predicted_ids, coco_preds = store.write_coco_predictions(ids)
    first_ms, steady_ms = store.timing_ms(predicted_ids)
    id_all = set(ids)
    return CocoEvalRun(
        metrics=score_predictions(gt_coco, coco_preds, predicted_ids, iou_types, max_dets, score_thresh),
        timing=LatencyStats.from_samples(steady_ms) if steady_ms else None, first_call_ms=first_ms,
        skipped=[s for s in store.skipped + session.skipped if s.image_id in id_all], paths=paths,
        resumed_from=resumed_from, processed=session.processed, num_images=len(predicted_ids),
        num_detections=len(coco_preds), score_thresh=score_thresh, max_dets=int(max_dets), discarded=discarded)
