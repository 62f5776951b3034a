"""Accuracy instruments.

Two questions, two tools:

* Did an optimization change the outputs? :func:`compare_runs` matches the instances of a test run
  (e.g. NPU, fp16, compiled) to a reference run (e.g. CPU fp32) image by image and reports box IoU,
  score and class agreement, mask IoU and lost instances -- the seed's "CPU vs NPU" table. Given
  the images' ground truth it also scores both runs with COCO AP (:class:`ApComparison`), so the
  gate can bound the AP change as well.
* How good is the model under a stated protocol? :func:`run_coco_evaluation` predicts a COCO
  split resumably, writes the predictions, and :func:`evaluate_coco` scores them with pycocotools,
  recording the protocol (images evaluated, detections per image, score threshold, max_dets) next
  to AP so that numbers from different protocols are never compared blindly.

Boxes are xyxy in original-image pixels; box areas are continuous ((x1-x0)*(y1-y0), no +1).
APs are in percent (0-100). Latencies are in milliseconds.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from blendstudy.structures import Detections
from blendstudy.timing import LatencyStats

CategoryMap = Union[Mapping[int, int], Sequence[int]]
PathLike = Union[str, "os.PathLike[str]"]


def _jsonable(obj: Any) -> Any:
    from blendstudy.report import to_jsonable

    return to_jsonable(obj)


# ----------------------------------------------------------------------------- instance matching


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) of xyxy boxes, float64; empty boxes give IoU 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


@dataclass
class InstanceMatch:
    """Reference instance ``ref_index`` matched to test instance ``test_index`` with ``box_iou``."""

    ref_index: int
    test_index: int
    box_iou: float


def _np(t: Optional[torch.Tensor]) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def match_instances(ref: Detections, test: Detections, iou_thresh: float = 0.5) -> List[InstanceMatch]:
    """Greedy one-to-one matching on box IoU.

    Reference instances are visited by descending score (ties: lower index first); each takes the
    still-unmatched test instance with the highest box IoU, if that IoU >= ``iou_thresh``. Classes
    need not agree (class agreement is reported as a metric instead). Returns the matches in visit
    order.
    """
    ious = box_iou_matrix(_np(ref.boxes), _np(test.boxes))
    order = np.argsort(-_np(ref.scores).astype(np.float64), kind="stable")
    taken = np.zeros(len(test), dtype=bool)
    matches: List[InstanceMatch] = []
    for r in order:
        if ious.shape[1] == 0:
            break
        cand = np.where(taken, -1.0, ious[r])
        t = int(np.argmax(cand))
        if cand[t] >= iou_thresh and not taken[t]:
            taken[t] = True
            matches.append(InstanceMatch(int(r), t, float(ious[r, t])))
    return matches


def _has_masks(det: Detections) -> bool:
    return det.masks is not None or det.raw_masks is not None


def _pair_mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.bool()
    b = b.bool()
    union = int((a | b).sum())
    if union == 0:
        return 1.0  # both empty: identical
    return int((a & b).sum()) / union


@dataclass
class ImageAccuracy:
    """One image of a :func:`compare_runs` comparison (None where nothing was matched)."""

    image: str
    ref_instances: int
    test_instances: int
    matched: int
    mean_box_iou: Optional[float]
    min_box_iou: Optional[float]
    max_score_diff: Optional[float]
    class_agreement: Optional[float]
    mean_mask_iou: Optional[float]
    unmatched_ref: int
    unmatched_test: int
    lost_above: int


@dataclass
class ApComparison:
    """COCO AP (percent) of the reference and the test run on the same images with ground truth
    (:func:`compare_ap`). ``change`` = test - ref per iou type."""

    images: int
    ref: Dict[str, float]
    test: Dict[str, float]
    max_dets: int = 100

    @property
    def change(self) -> Dict[str, float]:
        return {k: self.test[k] - self.ref[k] for k in self.ref if k in self.test}

    def passes(self, max_change: float = 0.3) -> bool:
        """|AP change| <= max_change for every iou type (NaN, e.g. no ground truth, passes)."""
        return all(not abs(v) > max_change for v in self.change.values())

    def to_dict(self) -> Dict[str, Any]:
        return {**_jsonable(self), "change": self.change}


@dataclass
class AccuracyReport:
    """Test run against reference run.

    images:          images present in both runs (compared).
    mean/min_box_iou: over all matched instances (None when nothing matched).
    mean/max_score_diff: |test score - ref score| over matched instances.
    class_agreement: fraction of matches whose classes agree.
    mean_mask_iou:   over matched instances where both sides carry masks (None if none do).
    unmatched_ref:   reference instances without a partner (lost); unmatched_test: extra ones.
    lost_above:      unmatched reference instances with score > ``gate_score``.
    only_in_ref / only_in_test: image names present on one side only (not compared).
    ap:              COCO AP of both runs when the images' ground truth was given (else None).
    """

    images: int
    ref_instances: int
    test_instances: int
    matched: int
    mean_box_iou: Optional[float]
    min_box_iou: Optional[float]
    mean_score_diff: Optional[float]
    max_score_diff: Optional[float]
    class_agreement: Optional[float]
    mean_mask_iou: Optional[float]
    unmatched_ref: int
    unmatched_test: int
    lost_above: int
    iou_thresh: float = 0.5
    gate_score: float = 0.3
    only_in_ref: List[str] = field(default_factory=list)
    only_in_test: List[str] = field(default_factory=list)
    per_image: List[ImageAccuracy] = field(default_factory=list)
    ap: Optional[ApComparison] = None

    def per_image_frame(self):
        """per_image as a pandas DataFrame (one row per image)."""
        import pandas as pd

        return pd.DataFrame([_jsonable(r) for r in self.per_image])

    def passes_gate(self, min_mean_iou: float = 0.99, max_lost: int = 0,
                    allow_missing_images: bool = False, max_ap_change: Optional[float] = 0.3) -> bool:
        """True when mean box IoU >= ``min_mean_iou``, at most ``max_lost`` reference instances
        above ``gate_score`` were lost, (unless allowed) no image is missing on either side, and,
        where AP was measured (``ap``), no AP moved by more than ``max_ap_change`` points (None:
        not checked). With nothing matched it passes only if neither side has any instance."""
        if not allow_missing_images and (self.only_in_ref or self.only_in_test):
            return False
        if self.lost_above > max_lost:
            return False
        if self.ap is not None and max_ap_change is not None and not self.ap.passes(max_ap_change):
            return False
        if self.mean_box_iou is None:
            return self.ref_instances == 0 and self.test_instances == 0
        return self.mean_box_iou >= min_mean_iou

    def to_dict(self) -> Dict[str, Any]:
        return _jsonable(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccuracyReport:
        """Inverse of to_dict (a results JSON's "accuracy" entry)."""
        d = dict(data)
        d["per_image"] = [ImageAccuracy(**r) for r in d.get("per_image", [])]
        ap = d.get("ap")
        if ap is not None:
            ap = dict(ap)
            ap.pop("change", None)
            # NaN APs (no ground truth of a kind) were written as null
            d["ap"] = ApComparison(ap["images"], {k: float("nan") if v is None else v for k, v in ap["ref"].items()},
                                   {k: float("nan") if v is None else v for k, v in ap["test"].items()},
                                   ap.get("max_dets", 100))
        return cls(**d)


def _mean(x: Sequence[float]) -> Optional[float]:
    return float(np.mean(x)) if len(x) else None


def compare_runs(
    ref: Mapping[str, Detections],
    test: Mapping[str, Detections],
    iou_thresh: float = 0.5,
    gate_score: float = 0.3,
    ground_truth: Optional[Any] = None,
    max_dets: int = 100,
) -> AccuracyReport:
    """Compare two runs over the same images (dicts image name -> Detections).

    Instances are paired by :func:`match_instances`; aggregates are over all matched instances of
    all images (not means of per-image means). Images present on one side only are listed in
    ``only_in_ref`` / ``only_in_test`` and not compared. ``ground_truth``: the images' dataset
    (a blendstudy CocoDataset, image names = file names); when given, both runs are also scored
    with COCO AP on the compared images (``ap``, :func:`compare_ap`).
    """
    names = [k for k in ref if k in test]
    only_ref = [str(k) for k in ref if k not in test]
    only_test = [str(k) for k in test if k not in ref]

    all_iou: List[float] = []
    all_sdiff: List[float] = []
    all_same: List[bool] = []
    all_miou: List[float] = []
    n_ref = n_test = n_unref = n_untest = n_lost = 0
    rows: List[ImageAccuracy] = []
    for name in names:
        r, t = ref[name], test[name]
        matches = match_instances(r, t, iou_thresh)
        r_scores = _np(r.scores).astype(np.float64).reshape(-1)
        t_scores = _np(t.scores).astype(np.float64).reshape(-1)
        r_cls = _np(r.classes).reshape(-1)
        t_cls = _np(t.classes).reshape(-1)
        ious = [m.box_iou for m in matches]
        sdiff = [abs(float(t_scores[m.test_index] - r_scores[m.ref_index])) for m in matches]
        same = [bool(r_cls[m.ref_index] == t_cls[m.test_index]) for m in matches]
        mious: List[float] = []
        if matches and _has_masks(r) and _has_masks(t):
            rm, tm = r.full_masks().cpu(), t.full_masks().cpu()
            mious = [_pair_mask_iou(rm[m.ref_index], tm[m.test_index]) for m in matches]
        matched_ref = {m.ref_index for m in matches}
        lost = sum(1 for i in range(len(r)) if i not in matched_ref and r_scores[i] > gate_score)
        rows.append(ImageAccuracy(
            image=str(name),
            ref_instances=len(r),
            test_instances=len(t),
            matched=len(matches),
            mean_box_iou=_mean(ious),
            min_box_iou=min(ious) if ious else None,
            max_score_diff=max(sdiff) if sdiff else None,
            class_agreement=_mean([float(s) for s in same]),
            mean_mask_iou=_mean(mious),
            unmatched_ref=len(r) - len(matches),
            unmatched_test=len(t) - len(matches),
            lost_above=lost,
        ))
        all_iou += ious
        all_sdiff += sdiff
        all_same += same
        all_miou += mious
        n_ref += len(r)
        n_test += len(t)
        n_unref += len(r) - len(matches)
        n_untest += len(t) - len(matches)
        n_lost += lost

    return AccuracyReport(
        images=len(names),
        ref_instances=n_ref,
        test_instances=n_test,
        matched=len(all_iou),
        mean_box_iou=_mean(all_iou),
        min_box_iou=min(all_iou) if all_iou else None,
        mean_score_diff=_mean(all_sdiff),
        max_score_diff=max(all_sdiff) if all_sdiff else None,
        class_agreement=_mean([float(s) for s in all_same]),
        mean_mask_iou=_mean(all_miou),
        unmatched_ref=n_unref,
        unmatched_test=n_untest,
        lost_above=n_lost,
        iou_thresh=iou_thresh,
        gate_score=gate_score,
        only_in_ref=only_ref,
        only_in_test=only_test,
        per_image=rows,
        ap=compare_ap(ref, test, ground_truth, max_dets=max_dets) if ground_truth is not None else None,
    )


def resize_difference(reference: Any, candidate: Any, images: Mapping[str, np.ndarray]) -> List[Dict[str, Any]]:
    """Per image, how far two pipelines' resized pictures (`Pipeline.resize`, before
    normalisation) are apart, in grey levels (0-255): mean, 99th percentile and max of |a - b|
    over all pixels and channels, and the share of values that differ at all. Both must resize
    to the same size (they share the model's min/max size)."""
    rows: List[Dict[str, Any]] = []
    for name, image in images.items():
        a = reference.resize(image).float().cpu()
        b = candidate.resize(image).float().cpu()
        if a.shape != b.shape:
            raise ValueError(f"{name}: resized to {tuple(a.shape)} by one pipeline and {tuple(b.shape)} by the other")
        d = (a - b).abs().flatten().numpy()
        rows.append({"image": name, "size": f"{a.shape[-1]}x{a.shape[-2]}", "mean": float(d.mean()),
                     "p99": float(np.percentile(d, 99)), "max": float(d.max()), "differs": float((d > 0).mean())})
    return rows


def compare_ap(ref: Mapping[str, Detections], test: Mapping[str, Detections], dataset: Any,
               max_dets: int = 100) -> ApComparison:
    """bbox (and segm, when both runs carry masks) COCO AP of two runs on the images both contain.
    ``dataset``: a blendstudy CocoDataset whose images' file names (or their base names) are the
    runs' keys. Raises ValueError naming an image the dataset does not have."""
    by_name: Dict[str, int] = {}
    for image_id in dataset.image_ids:
        file_name = str(dataset.image_info(image_id)["file_name"])
        by_name[file_name] = image_id
        by_name.setdefault(Path(file_name).name, image_id)
    names = [k for k in ref if k in test]
    unknown = [str(k) for k in names if str(k) not in by_name]
    if unknown:
        raise ValueError(f"{dataset.ann_file}: no ground truth for image(s) {unknown[:5]}")
    ids = [by_name[str(k)] for k in names]
    with_masks = all(_has_masks(run[k]) or len(run[k]) == 0 for run in (ref, test) for k in names)
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    mapping = dataset.contiguous_to_category_id
    scores = []
    for run in (ref, test):
        preds = [rec for k, i in zip(names, ids) for rec in detections_to_coco(run[k], i, mapping)]
        metrics = evaluate_coco(dataset.coco, preds, iou_types, max_dets=max_dets, image_ids=ids)
        scores.append({t: float(m.AP) for t, m in metrics.items()})
    return ApComparison(len(ids), scores[0], scores[1], max_dets)


# ----------------------------------------------------------------------------- COCO evaluation


def coco_from_dict(dataset: Dict[str, Any]):
    """A pycocotools COCO object built from an in-memory annotation dict, without its prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _category_id(mapping: CategoryMap, contiguous: int) -> int:
    try:
        return int(mapping[int(contiguous)])
    except (KeyError, IndexError):
        raise ValueError(f"predicted class {int(contiguous)} has no dataset category: the model's classes "
                         f"and the dataset's {len(mapping)} categories differ") from None


def detections_to_coco(det: Detections, image_id: int, contiguous_to_category_id: CategoryMap
                       ) -> List[Dict[str, Any]]:
    """COCO result dicts for one image, ordered by descending score.

    Each: {"image_id", "category_id", "bbox": [x, y, w, h] (pixels), "score"} plus
    "segmentation" (RLE with str counts) when the detections carry masks.
    ``contiguous_to_category_id`` maps 0-based contiguous class ids to COCO category ids
    (a dict or a list indexed by contiguous id).
    """
    from blendstudy.masks import encode_rle

    det = det.cpu()
    n = len(det)
    if n == 0:
        return []
    boxes = det.boxes.double().numpy().reshape(-1, 4)
    scores = det.scores.double().numpy().reshape(-1)
    classes = det.classes.long().numpy().reshape(-1)
    rles = encode_rle(det.full_masks().numpy()) if _has_masks(det) else None
    order = np.argsort(-scores, kind="stable")
    out = []
    for i in order:
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        rec: Dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": _category_id(contiguous_to_category_id, int(classes[i])),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(scores[i]),
        }
        if rles is not None:
            rec["segmentation"] = rles[i]
        out.append(rec)
    return out


@dataclass
class CocoMetrics:
    """pycocotools results for one iou type, with the protocol they were obtained under.

    AP..APl, AR1..ARl in percent (0-100); NaN where pycocotools reports -1 (no ground truth in
    that area range). AP* and ARmax/ARs/ARm/ARl are at ``max_dets`` detections per image (COCO's
    "AR100" in the standard protocol); AR1 / AR10 at 1 and 10. ``summary`` is pycocotools' own
    text, whose headline AP line always uses maxDets=100 (-1.000 for any other max_dets).
    ``num_images``: images evaluated (params.imgIds restricted to the images that were predicted);
    ``num_gt_images``: images in the ground truth file; ``num_detections``: detections evaluated
    (after the per-image ``max_dets`` cap); ``score_thresh``: the score threshold the predictions
    were made with (as passed in; None = not stated).
    """

    iou_type: str
    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    AR1: float
    AR10: float
    ARmax: float
    ARs: float
    ARm: float
    ARl: float
    num_images: int
    num_gt_images: int
    num_detections: int
    detections_per_image: float
    score_thresh: Optional[float]
    max_dets: int
    dropped_by_max_dets: int = 0
    summary: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return _jsonable(self)


_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "ARmax", "ARs", "ARm", "ARl")


def _coco_stats(ev: Any, max_dets: int) -> List[float]:
    """COCOeval.summarize()'s 12 numbers, in percent, computed from ``ev.eval`` at ``max_dets``.

    Done here because pycocotools' summarize() hard-codes maxDets=100 for the headline AP (it
    reports -1 for any other max_dets). -1 (nothing to evaluate) becomes NaN.
    """
    p = ev.params
    precision, recall = ev.eval["precision"], ev.eval["recall"]  # [T,R,K,A,M], [T,K,A,M]

    def summ(ap: bool, area: str = "all", iou: Optional[float] = None, dets: int = max_dets) -> float:
        a = p.areaRngLbl.index(area)
        m = list(p.maxDets).index(dets)
        s = precision[..., a, m] if ap else recall[..., a, m]
        if iou is not None:
            s = s[np.isclose(p.iouThrs, iou)]
        valid = s[s > -1]
        return float(np.mean(valid)) * 100.0 if valid.size else float("nan")

    return [summ(True), summ(True, iou=0.5), summ(True, iou=0.75), summ(True, "small"),
            summ(True, "medium"), summ(True, "large"), summ(False, dets=1), summ(False, dets=10),
            summ(False), summ(False, "small"), summ(False, "medium"), summ(False, "large")]


def _cap_per_image(predictions: Sequence[Dict[str, Any]], max_dets: int) -> List[Dict[str, Any]]:
    """Keep the ``max_dets`` highest-scoring predictions of every image (stable on ties)."""
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for p in predictions:
        by_image.setdefault(int(p["image_id"]), []).append(p)
    out: List[Dict[str, Any]] = []
    for preds in by_image.values():
        preds = sorted(preds, key=lambda p: -float(p["score"]))
        out.extend(preds[:max_dets])
    return out


def _results_coco(gt, anns: List[Dict[str, Any]]):
    """loadRes, also for an empty result list (which pycocotools' loadRes cannot take)."""
    if anns:
        return gt.loadRes(anns)
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(gt.dataset["images"]),
                   "categories": copy.deepcopy(gt.dataset.get("categories", [])),
                   "annotations": []}
    res.createIndex()
    return res


def evaluate_coco(
    gt_coco: Any,
    predictions: Sequence[Dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    max_dets: int = 100,
    score_thresh: Optional[float] = None,
    image_ids: Optional[Sequence[int]] = None,
) -> Dict[str, CocoMetrics]:
    """Score COCO-format predictions with pycocotools' COCOeval; one CocoMetrics per iou type.

    ``gt_coco``: a pycocotools COCO (or anything with a ``.coco`` attribute holding one).
    ``image_ids``: the images that were predicted -- evaluation is restricted to them
    (params.imgIds). Pass it explicitly so that images with zero detections still count their
    ground truth as missed; when None, the ids present in ``predictions`` are used.
    Predictions are capped to the ``max_dets`` best per image (COCOeval itself only caps per
    image AND category) and params.maxDets = [1, 10, max_dets] (sorted); the numbers are
    computed from COCOeval.eval at max_dets (see CocoMetrics). For segm the "bbox" field is
    dropped so that area ranges (APs/APm/APl) use mask areas, as in detectron2.
    pycocotools' prints are silenced; its summary text is kept in ``summary``.
    """
    from pycocotools.cocoeval import COCOeval

    gt = getattr(gt_coco, "coco", gt_coco)
    if max_dets < 1:
        raise ValueError(f"max_dets must be >= 1, got {max_dets}")
    if image_ids is None:
        image_ids = sorted({int(p["image_id"]) for p in predictions})
    eval_ids = list(dict.fromkeys(int(i) for i in image_ids))
    id_set = set(eval_ids)
    missing = id_set - set(gt.getImgIds())
    if missing:
        raise ValueError(f"{len(missing)} predicted image id(s) are not in the ground truth, "
                         f"e.g. {sorted(missing)[:5]}")
    preds = [p for p in predictions if int(p["image_id"]) in id_set]
    capped = _cap_per_image(preds, max_dets)

    results: Dict[str, CocoMetrics] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"unsupported iou type {iou_type!r}")
        anns = copy.deepcopy(capped)  # loadRes annotates its input in place
        if iou_type == "segm":
            if any("segmentation" not in a for a in anns):
                raise ValueError("segm evaluation needs a 'segmentation' in every prediction")
            for a in anns:
                a.pop("bbox", None)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            res = _results_coco(gt, anns)
            ev = COCOeval(gt, res, iouType=iou_type)
            ev.params.imgIds = eval_ids
            ev.params.maxDets = sorted([1, 10, int(max_dets)])
            ev.evaluate()
            ev.accumulate()
        summary_buf = io.StringIO()
        with contextlib.redirect_stdout(summary_buf):
            ev.summarize()
        stats = _coco_stats(ev, int(max_dets))
        results[iou_type] = CocoMetrics(
            iou_type=iou_type,
            **dict(zip(_STAT_NAMES, stats)),
            num_images=len(eval_ids),
            num_gt_images=len(gt.getImgIds()),
            num_detections=len(capped),
            detections_per_image=len(capped) / len(eval_ids) if eval_ids else 0.0,
            score_thresh=score_thresh,
            max_dets=int(max_dets),
            dropped_by_max_dets=len(preds) - len(capped),
            summary=summary_buf.getvalue().rstrip("\n"),
        )
    return results


# ----------------------------------------------------------------------------- resumable COCO run


@dataclass
class SkippedImage:
    """An image that could not be read; ``reason`` is the reader's message."""

    image_id: int
    file: str
    reason: str


@dataclass
class CocoRunPaths:
    out_dir: str
    predictions_jsonl: str
    timing_jsonl: str
    skipped_jsonl: str
    coco_predictions: str
    run_config: str


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
        return _jsonable(self)


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """Records of a JSON-lines file. A truncated or unparsable LAST line (an interrupted write) is
    dropped and the file rewritten without it; a bad line elsewhere raises ValueError."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete = raw.endswith(b"\n") or raw == b""
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    records: List[Dict[str, Any]] = []
    dropped = False
    for k, line in enumerate(lines):
        last = k == len(lines) - 1
        if not line.strip():
            continue
        try:
            if last and not complete:
                raise ValueError("no trailing newline")
            records.append(json.loads(line.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            if not last:
                raise ValueError(f"{path}:{k + 1}: corrupt line ({exc})") from exc
            dropped = True
    if dropped:
        warnings.warn(f"{path}: dropped a truncated last line (interrupted write)", stacklevel=3)
        _rewrite_jsonl(path, records)
    return records


def _rewrite_jsonl(path: Path, records: Sequence[Dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _append_jsonl(fh, rec: Dict[str, Any]) -> None:
    fh.write(json.dumps(rec) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def _default_read():
    from blendstudy.data.images import read_image

    return read_image


def _filter_detections(det: Detections, score_thresh: Optional[float], max_dets: int) -> Detections:
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


class RunMismatchError(ValueError):
    """run_coco_evaluation: the output folder holds a run made with other settings or another
    pipeline (run_config.json differs)."""


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
    timer: Optional[Callable[[], float]] = None,
    device: Optional[Union[torch.device, str]] = None,
    iou_types: Sequence[str] = ("bbox", "segm"),
    run_info: Optional[Mapping[str, Any]] = None,
    on_mismatch: str = "error",
) -> CocoEvalRun:
    """Predict every image resumably, write COCO predictions and evaluate them.

    Per image: ``read(image_path(id))`` (default blendstudy.data.images.read_image: HxWx3 uint8
    BGR), ``predict(image)`` (timed: ``timer`` is a clock in SECONDS, default time.perf_counter;
    with ``device`` the device is synchronized around the call), drop scores < ``score_thresh``,
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
    paths = CocoRunPaths(
        out_dir=str(out),
        predictions_jsonl=str(out / "predictions.jsonl"),
        timing_jsonl=str(out / "per_image_timing.jsonl"),
        skipped_jsonl=str(out / "skipped.jsonl"),
        coco_predictions=str(out / "coco_predictions.json"),
        run_config=str(out / "run_config.json"),
    )
    pred_path, timing_path = Path(paths.predictions_jsonl), Path(paths.timing_jsonl)
    skipped_path, config_path = Path(paths.skipped_jsonl), Path(paths.run_config)
    if on_mismatch not in ("error", "restart"):
        raise ValueError(f"on_mismatch must be 'error' or 'restart', not {on_mismatch!r}")
    config: Dict[str, Any] = {"score_thresh": score_thresh, "max_dets": int(max_dets)}
    if run_info is not None:
        config["run_info"] = json.loads(json.dumps(dict(run_info), sort_keys=True))
    discarded: Optional[Dict[str, Any]] = None

    ids = [int(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        warnings.warn("duplicate image ids given; each is predicted once", stacklevel=2)
        ids = list(dict.fromkeys(ids))

    if resume and config_path.exists():
        old = json.loads(config_path.read_text())
        if old != config:
            if on_mismatch == "error":
                raise RunMismatchError(f"{config_path}: existing run used {old}, this call asks for {config}; "
                                       "use another out_dir or resume=False")
            warnings.warn(f"{config_path}: the predictions there were made with {old}, not {config}; "
                          "they are discarded and the run starts afresh", stacklevel=2)
            discarded, resume = old, False
    if not resume:
        for p in (pred_path, timing_path, skipped_path, Path(paths.coco_predictions)):
            if p.exists():
                p.unlink()
    config_path.write_text(json.dumps(config, sort_keys=True) + "\n")

    pred_recs = _read_jsonl(pred_path)
    done_pred: Dict[int, List[Dict[str, Any]]] = {}
    for rec in pred_recs:
        done_pred.setdefault(int(rec["image_id"]), rec["results"])
    if len(done_pred) != len(pred_recs):
        warnings.warn(f"{pred_path}: duplicate image ids, first occurrence kept", stacklevel=2)
    # Timing lines of images whose predictions line never made it are dropped (image is redone).
    timing_recs = _read_jsonl(timing_path)
    kept_timing = [r for r in timing_recs if int(r["image_id"]) in done_pred]
    if len(kept_timing) != len(timing_recs):
        _rewrite_jsonl(timing_path, kept_timing)
    skipped_recs = _read_jsonl(skipped_path)
    skipped = [SkippedImage(int(r["image_id"]), str(r["file"]), str(r["reason"])) for r in skipped_recs]
    done = set(done_pred) | {s.image_id for s in skipped}
    resumed_from = sum(1 for i in ids if i in done)
    stray = set(done_pred) - set(ids)
    if stray:
        warnings.warn(f"{pred_path}: {len(stray)} image id(s) not in this run's image_ids are ignored",
                      stacklevel=2)

    read_fn = read if read is not None else _default_read()
    clock = timer if timer is not None else time.perf_counter
    dev = torch.device(device) if device is not None else None
    todo = [i for i in ids if i not in done]
    processed = 0

    from tqdm import tqdm

    with open(pred_path, "a", encoding="utf-8") as pf, \
            open(timing_path, "a", encoding="utf-8") as tf, \
            open(skipped_path, "a", encoding="utf-8") as sf:
        for image_id in tqdm(todo, desc="COCO predict", disable=not progress, leave=False):
            file = str(image_path(image_id))
            try:
                image = read_fn(file)
            except (ValueError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
                warnings.warn(f"skipping image {image_id}: {reason}", stacklevel=2)
                s = SkippedImage(image_id, file, reason)
                skipped.append(s)
                _append_jsonl(sf, {"image_id": image_id, "file": file, "reason": reason})
                continue
            if dev is not None:
                from blendstudy.device import synchronize

                synchronize(dev)
            t0 = clock()
            det = predict(image)
            if dev is not None:
                synchronize(dev)
            ms = (clock() - t0) * 1000.0
            det = _filter_detections(det, score_thresh, max_dets)
            results = detections_to_coco(det, image_id, contiguous_to_category_id)
            _append_jsonl(tf, {"image_id": image_id, "file": file, "ms": ms,
                               "num_detections": len(results), "first_in_session": processed == 0})
            _append_jsonl(pf, {"image_id": image_id, "results": results})
            processed += 1

    # Rebuild everything from disk: identical bytes whether or not the run was interrupted.
    final_pred: Dict[int, List[Dict[str, Any]]] = {}
    for rec in _read_jsonl(pred_path):
        final_pred.setdefault(int(rec["image_id"]), rec["results"])
    predicted_ids = [i for i in ids if i in final_pred]
    coco_preds = [r for i in predicted_ids for r in final_pred[i]]
    tmp = Path(paths.coco_predictions + ".tmp")
    tmp.write_text(json.dumps(coco_preds))
    os.replace(tmp, paths.coco_predictions)

    id_set = set(predicted_ids)
    timing_all = [r for r in _read_jsonl(timing_path) if int(r["image_id"]) in id_set]
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


__all__ = [
    "InstanceMatch",
    "ImageAccuracy",
    "AccuracyReport",
    "CocoMetrics",
    "CocoEvalRun",
    "CocoRunPaths",
    "SkippedImage",
    "box_iou_matrix",
    "match_instances",
    "compare_runs",
    "coco_from_dict",
    "detections_to_coco",
    "evaluate_coco",
    "run_coco_evaluation",
    "RunMismatchError",
]
