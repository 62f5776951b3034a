"""COCO AP over a resample of images, and the paired bootstrap of an AP change between two runs.

pycocotools' ``COCOeval.evaluate()`` matches detections to ground truth image by image (its
``evalImgs``); ``accumulate()`` then pools every image's matches per category into one
precision/recall curve. :func:`image_records` keeps, for area range "all" and ``max_dets``
detections per image, what that pooling needs -- per category each detection's image, score
order and true/false positive flag at every IoU threshold, and each image's count of
non-ignored ground truth -- and :func:`resampled_ap` pools it again for any multiset of the
images (``weights``: how often each image is drawn; an image drawn twice counts twice, its
detections and its ground truth alike), vectorised over resamples.

The pooling follows COCO's documented protocol: detections of a category sorted by descending
score (a stable sort over the images in evaluation order), cumulative true and false positives,
recall = TP / ground truth, precision = TP / (TP + FP) made non-increasing from the right,
sampled at the 101 recall thresholds (the first detection reaching each threshold; 0 past the
last), averaged over IoU thresholds, recall thresholds and the categories that have ground
truth. With every image drawn once it gives COCOeval's own AP; in a resample, detections of two
images with exactly equal scores keep the evaluation order rather than the resample's.

:func:`paired_ap_change` draws the SAME image resamples for both runs (paired) and returns the
percentile interval of the AP change (test - ref). APs and changes are in percent (0-100).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import numpy as np

__all__ = ["CategoryRecords", "ImageRecords", "image_records", "paired_ap_change", "resample_weights",
           "resampled_ap"]

#: precision values (resamples x IoU thresholds x recall thresholds x categories) held at once
_BLOCK = 4_000_000


@dataclass
class CategoryRecords:
    """One category's detections in pooling order (stable sort by descending score over the images
    in evaluation order). ``image``: (D,) index of each detection's image; ``tp`` / ``fp``: (T, D)
    true / false positive at each IoU threshold (a detection ignored there is neither);
    ``gt``: (I,) non-ignored ground-truth instances per image."""

    image: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    gt: np.ndarray
    #: per IoU threshold: (positions of the true positives, per-image TP and FP counts up to each),
    #: built on first use (_at_true_positives)
    counts: Optional[List[Tuple[np.ndarray, np.ndarray, np.ndarray]]] = field(default=None, repr=False)


@dataclass
class ImageRecords:
    """One run's per-image COCO evaluation of one iou type (area "all", ``max_dets`` per image):
    the evaluated image ids in order, the recall thresholds and one CategoryRecords per category
    (in COCOeval's category order)."""

    image_ids: List[int]
    rec_thrs: np.ndarray
    iou_thrs: np.ndarray
    categories: List[CategoryRecords]
    max_dets: int = 100


def image_records(ev: Any, max_dets: int) -> ImageRecords:
    """The per-image records of a COCOeval after ``evaluate()`` (its ``evalImgs`` and
    ``params``), for area range "all" and the ``max_dets`` best detections of each image."""
    p = ev.params
    image_ids = [int(i) for i in p.imgIds]
    n_img, n_area, n_thr = len(image_ids), len(p.areaRng), len(p.iouThrs)
    area = list(p.areaRngLbl).index("all")
    cats: List[CategoryRecords] = []
    for k in range(len(p.catIds) if p.useCats else 1):
        first = k * n_area * n_img + area * n_img
        entries = [(i, e) for i, e in enumerate(ev.evalImgs[first:first + n_img]) if e is not None]
        gt = np.zeros(n_img, dtype=np.int64)
        for i, e in entries:
            gt[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        scores = [np.asarray(e["dtScores"][:max_dets], dtype=np.float64) for _, e in entries]
        image = np.concatenate([np.full(len(s), i, dtype=np.int64) for (i, _), s in zip(entries, scores)]
                               or [np.zeros(0, dtype=np.int64)])
        matched = [np.asarray(e["dtMatches"])[:, :max_dets].reshape(n_thr, -1) != 0 for _, e in entries]
        ignored = [np.asarray(e["dtIgnore"])[:, :max_dets].reshape(n_thr, -1).astype(bool) for _, e in entries]
        order = np.argsort(-np.concatenate(scores or [np.zeros(0)]), kind="mergesort")
        dtm = np.concatenate(matched or [np.zeros((n_thr, 0), bool)], axis=1)[:, order]
        dtig = np.concatenate(ignored or [np.zeros((n_thr, 0), bool)], axis=1)[:, order]
        cats.append(CategoryRecords(image[order], dtm & ~dtig, ~dtm & ~dtig, gt))
    return ImageRecords(image_ids, np.asarray(p.recThrs, dtype=np.float64), np.asarray(p.iouThrs, dtype=np.float64),
                        cats, int(max_dets))


def _counts_upto(image: np.ndarray, flags: np.ndarray, positions: np.ndarray, n_images: int) -> np.ndarray:
    """(I, len(positions)) float: per image, how many flagged detections lie at or before each position."""
    marks = np.zeros((n_images, len(image)))
    where = np.flatnonzero(flags)
    marks[image[where], where] = 1.0
    return np.cumsum(marks, axis=1)[:, positions]


def _at_true_positives(cat: CategoryRecords, n_images: int) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per IoU threshold: the true positives' positions and the per-image TP / FP counts at them."""
    if cat.counts is None:
        cat.counts = []
        for tp, fp in zip(cat.tp, cat.fp):
            positions = np.flatnonzero(tp)
            cat.counts.append((positions, _counts_upto(cat.image, tp, positions, n_images),
                               _counts_upto(cat.image, fp, positions, n_images)))
    return cat.counts


def _first_reaching(rc: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """(B, R): per row of the non-decreasing ``rc`` (B, N), the first column with rc >= each
    threshold (N where none) -- numpy.searchsorted(row, rec_thrs, "left") for every row at once, as
    the number of entries that reach fewer than r + 1 thresholds."""
    n_b, n = rc.shape
    n_r = len(rec_thrs)
    reached = np.searchsorted(rec_thrs, rc.reshape(-1), side="right").reshape(n_b, n)
    rows = np.arange(n_b)[:, None] * (n_r + 1)
    hist = np.bincount((rows + reached).ravel(), minlength=n_b * (n_r + 1)).reshape(n_b, n_r + 1)
    return np.cumsum(hist[:, :n_r], axis=1)


def _category_precision(cat: CategoryRecords, weights: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """(B, T, R) interpolated precision of one category for each resample (rows of ``weights``),
    -1 where the resample has no non-ignored ground truth of it.

    Only the true positives need precision and recall: recall grows at them alone, and a false
    positive's precision is below the entry before it, so the precision interpolated at a recall
    threshold is the largest precision of a true positive at or past it. Cumulative counts at the
    true positives are weights @ (per-image counts): exact integers in float64."""
    n_b, n_t, n_r = weights.shape[0], cat.tp.shape[0], len(rec_thrs)
    wf = weights.astype(float)
    npig = wf @ cat.gt.astype(float)
    out = np.zeros((n_b, n_t, n_r))
    for t, (positions, tp_counts, fp_counts) in enumerate(_at_true_positives(cat, weights.shape[1])):
        if not positions.size:
            continue  # no true positive: precision 0 at every recall threshold
        tp, fp = wf @ tp_counts, wf @ fp_counts
        with np.errstate(divide="ignore", invalid="ignore"):
            rc = tp / npig[:, None]
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        first = _first_reaching(rc, rec_thrs)
        q = np.take_along_axis(pr, np.minimum(first, len(positions) - 1), axis=1)
        out[:, t] = np.where(first < len(positions), q, 0.0)
    out[npig == 0] = -1.0
    return out


def _block_ap(records: ImageRecords, weights: np.ndarray) -> np.ndarray:
    n_t, n_r = len(records.iou_thrs), len(records.rec_thrs)
    prec = np.full((weights.shape[0], n_t, n_r, max(len(records.categories), 1)), -1.0)
    for k, cat in enumerate(records.categories):
        prec[..., k] = _category_precision(cat, weights, records.rec_thrs)
    out = np.full(weights.shape[0], np.nan)
    for b in range(weights.shape[0]):  # COCOeval's own mean: precision[T, R, K] > -1, flattened in C order
        valid = prec[b][prec[b] > -1]
        if valid.size:
            out[b] = float(np.mean(valid)) * 100.0
    return out


def resampled_ap(records: ImageRecords, weights: np.ndarray) -> np.ndarray:
    """AP (percent) of each resample: ``weights`` (B, I) says how often each image of
    ``records.image_ids`` is drawn. NaN where a resample has no ground truth at all. A row of ones
    is the evaluation itself (COCOeval's stats[0] at ``max_dets``)."""
    weights = np.asarray(weights, dtype=np.int64).reshape(-1, len(records.image_ids))
    cells = len(records.iou_thrs) * len(records.rec_thrs) * max(len(records.categories), 1)
    step = max(1, _BLOCK // cells)
    return np.concatenate([_block_ap(records, weights[s:s + step]) for s in range(0, len(weights), step)]
                          or [np.zeros(0)])


def resample_weights(n_images: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_images) counts of each image in ``n_boot`` resamples of ``n_images`` images drawn
    with replacement (numpy ``default_rng(seed)``: the same seed gives the same resamples)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(int(n_boot), n_images))
    flat = (draws + n_images * np.arange(int(n_boot))[:, None]).ravel()
    return np.bincount(flat, minlength=int(n_boot) * n_images).reshape(int(n_boot), n_images)


def paired_ap_change(ref: ImageRecords, test: ImageRecords, n_boot: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> Tuple[float, float]:
    """Percentile-bootstrap interval (percent points) of AP(test) - AP(ref) over images: both runs
    pooled on the same ``n_boot`` resamples of their (common) images. NaN bounds when no resample
    has ground truth."""
    if list(ref.image_ids) != list(test.image_ids):
        raise ValueError("a paired AP change needs both runs evaluated on the same images")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    weights = resample_weights(len(ref.image_ids), n_boot, seed)
    change = resampled_ap(test, weights) - resampled_ap(ref, weights)
    change = change[np.isfinite(change)]
    if not change.size:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(change, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
