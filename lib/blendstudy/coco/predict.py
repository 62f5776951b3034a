"""The predict loop of a COCO evaluation: images -> predictions, one store's files (a run folder's,
or one shard's), per-image timing, an unreadable image reported and skipped.

Per image: read, predict (timed by the study's synchronised clock), keep the protocol's
detections, then append to the prediction store (:mod:`blendstudy.coco.store`). What is already
done, and the metrics, are the callers' (:mod:`blendstudy.coco.run`, :mod:`blendstudy.coco.sharded`).
Latencies are in milliseconds.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from blendstudy.coco.convert import CategoryMap, detections_to_coco
from blendstudy.coco.store import CocoRunPaths, append_jsonl
from blendstudy.data.images import read_image
from blendstudy.measure.clock import timed_call
from blendstudy.structures import Detections

__all__ = ["PredictSession", "SkippedImage", "filter_detections", "predict_images"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class SkippedImage:
    """An image that could not be read; ``reason`` is the reader's message."""

    image_id: int
    file: str
    reason: str


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
