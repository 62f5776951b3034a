"""COCO evaluation with pycocotools, the protocol recorded beside every AP.

APs are in percent (0-100). :func:`evaluate_coco` scores COCO results at ``max_dets`` detections
per image (headline numbers computed from COCOeval's accumulated arrays at that cap, since
pycocotools' own summary hard-codes 100); training, the study and the CLI all evaluate here.
:func:`compare_ap` (the accuracy gate's AP check) scores two runs on the same images and gives the
AP change with its paired bootstrap interval over those images (blendstudy.measure.bootstrap_ap).
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from blendstudy.coco.convert import detections_to_coco
from blendstudy.jsonable import to_jsonable
from blendstudy.measure.agreement import ApComparison, RecordedRun
from blendstudy.measure.bootstrap_ap import ImageRecords, image_records, paired_ap_change
from blendstudy.structures import Detections, has_masks

__all__ = ["CocoMetrics", "RunAp", "STAT_NAMES", "compare_ap", "compare_evaluated", "evaluate_coco", "evaluate_run"]


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
        return to_jsonable(self)


STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "ARmax", "ARs", "ARm", "ARl")


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


def _cocoeval(gt: Any, capped: List[Dict[str, Any]], iou_type: str, eval_ids: List[int], max_dets: int):
    """(COCOeval evaluated and accumulated on ``eval_ids`` at maxDets [1, 10, max_dets], its summary
    text); for segm the predictions' "bbox" is dropped (area ranges from mask areas)."""
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"unsupported iou type {iou_type!r}")
    anns = copy.deepcopy(capped)  # loadRes annotates its input in place
    if iou_type == "segm":
        if any("segmentation" not in a for a in anns):
            raise ValueError("segm evaluation needs a 'segmentation' in every prediction")
        for a in anns:
            a.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        res = _results_coco(gt, anns)
        ev = COCOeval(gt, res, iouType=iou_type)
        ev.params.imgIds = eval_ids
        ev.params.maxDets = sorted([1, 10, max_dets])
        ev.evaluate()
        ev.accumulate()
    summary_buf = io.StringIO()
    with contextlib.redirect_stdout(summary_buf):
        ev.summarize()
    return ev, summary_buf.getvalue().rstrip("\n")


def evaluate_coco(
    gt_coco: Any,
    predictions: Sequence[Dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    max_dets: int = 100,
    score_thresh: Optional[float] = None,
    image_ids: Optional[Sequence[int]] = None,
    per_image: Optional[Dict[str, ImageRecords]] = None,
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
    pycocotools' prints are silenced; its summary text is kept in ``summary``. ``per_image``: a
    dict to fill with each iou type's per-image records (blendstudy.measure.bootstrap_ap), from
    which AP can be recomputed for any resample of the images.
    """
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
        ev, summary = _cocoeval(gt, capped, iou_type, eval_ids, int(max_dets))
        if per_image is not None:
            per_image[iou_type] = image_records(ev, int(max_dets))
        results[iou_type] = CocoMetrics(
            iou_type=iou_type,
            **dict(zip(STAT_NAMES, _coco_stats(ev, int(max_dets)))),
            num_images=len(eval_ids),
            num_gt_images=len(gt.getImgIds()),
            num_detections=len(capped),
            detections_per_image=len(capped) / len(eval_ids) if eval_ids else 0.0,
            score_thresh=score_thresh,
            max_dets=int(max_dets),
            dropped_by_max_dets=len(preds) - len(capped),
            summary=summary,
        )
    return results


@dataclass
class RunAp:
    """One run's COCO AP (percent) per iou type on a dataset's images, with the per-image records
    that the paired bootstrap resamples (blendstudy.measure.bootstrap_ap)."""

    image_ids: List[int]
    ap: Dict[str, float]
    records: Dict[str, ImageRecords]


def _image_ids(dataset: Any, names: Sequence[str]) -> List[int]:
    by_name: Dict[str, int] = {}
    for image_id in dataset.image_ids:
        file_name = str(dataset.image_info(image_id)["file_name"])
        by_name[file_name] = image_id
        by_name.setdefault(Path(file_name).name, image_id)
    unknown = [str(k) for k in names if str(k) not in by_name]
    if unknown:
        raise ValueError(f"{dataset.ann_file}: no ground truth for image(s) {unknown[:5]}")
    return [by_name[str(k)] for k in names]


def _coco_results(run: Mapping[str, Detections], name: str, image_id: int, mapping: Any
                  ) -> Tuple[List[Dict[str, Any]], bool]:
    """(one image's COCO results as detections_to_coco gives them, whether they carry masks or are
    none); a RecordedRun's RLE masks are used as they are, not decoded and encoded again."""
    if not isinstance(run, RecordedRun):
        det = run[name]
        return detections_to_coco(det, image_id, mapping), has_masks(det) or len(det) == 0
    plain, rles = run.plain(name), run.masks_rle(name)
    out = detections_to_coco(plain, image_id, mapping)
    if rles is not None:  # detections_to_coco's order: descending score, stable
        order = np.argsort(-plain.scores.double().numpy(), kind="stable")
        for rec, i in zip(out, order):
            rec["segmentation"] = rles[i]
    return out, rles is not None or len(plain) == 0


def evaluate_run(run: Mapping[str, Detections], dataset: Any, max_dets: int = 100,
                 names: Optional[Sequence[str]] = None) -> RunAp:
    """bbox (and segm, when every image's detections carry masks or are empty) COCO AP of one run
    on its images ``names`` (default: all of them). ``dataset``: a blendstudy CocoDataset whose
    images' file names (or their base names) are the run's keys; ValueError names an image it lacks."""
    names = list(run) if names is None else list(names)
    ids = _image_ids(dataset, names)
    mapping = dataset.contiguous_to_category_id
    preds: List[Dict[str, Any]] = []
    with_masks = True
    for name, image_id in zip(names, ids):
        image_preds, masks = _coco_results(run, name, image_id, mapping)
        preds += image_preds
        with_masks = with_masks and masks
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    records: Dict[str, ImageRecords] = {}
    metrics = evaluate_coco(dataset.coco, preds, iou_types, max_dets=max_dets, image_ids=ids, per_image=records)
    return RunAp(ids, {t: float(m.AP) for t, m in metrics.items()}, records)


def compare_evaluated(ref: RunAp, test: RunAp, max_dets: int = 100, n_boot: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> ApComparison:
    """ApComparison of two evaluated runs (the same images) on the iou types both have, with the
    paired bootstrap interval of each AP change over images (``n_boot`` resamples, none if 0)."""
    if sorted(ref.image_ids) != sorted(test.image_ids):
        raise ValueError("the two runs were evaluated on different images")
    types = [t for t in ref.ap if t in test.ap]
    ci = None
    if n_boot > 0:
        ci = {t: list(paired_ap_change(ref.records[t], test.records[t], n_boot, seed, confidence)) for t in types}
    return ApComparison(len(ref.image_ids), {t: ref.ap[t] for t in types}, {t: test.ap[t] for t in types}, max_dets,
                        change_ci=ci, confidence=confidence, n_boot=int(n_boot), seed=int(seed))


def compare_ap(ref: Mapping[str, Detections], test: Mapping[str, Detections], dataset: Any,
               max_dets: int = 100, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> ApComparison:
    """bbox (and segm, when both runs carry masks) COCO AP of two runs on the images both contain,
    with the paired bootstrap interval of the change over those images (compare_evaluated).
    ``dataset``: a blendstudy CocoDataset whose images' file names (or their base names) are the
    runs' keys. Raises ValueError naming an image the dataset does not have."""
    names = [k for k in ref if k in test]
    _image_ids(dataset, names)  # an unknown image is named before anything is evaluated
    return compare_evaluated(evaluate_run(ref, dataset, max_dets, names), evaluate_run(test, dataset, max_dets, names),
                             max_dets, n_boot, confidence, seed)
