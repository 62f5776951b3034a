"""Did an optimization change the outputs? Run-against-run agreement: the accuracy gate.

:func:`compare_runs` matches the instances of a test run (e.g. NPU, fp16, compiled) to a reference
run (e.g. CPU fp32) image by image and reports box IoU, score and class agreement, mask IoU and
lost instances -- the seed's "CPU vs NPU" table. Given both runs' COCO AP on the images' ground truth
(:class:`ApComparison`, computed by blendstudy.coco.evaluate.compare_ap) the gate bounds the AP change
as well. The gate's
verdict is decided once, with the params' thresholds (:meth:`AccuracyReport.decide`), and stored.

Boxes are xyxy in original-image pixels; box areas are continuous ((x1-x0)*(y1-y0), no +1).
APs are in percent (0-100).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from blendstudy.jsonable import from_jsonable, to_jsonable
from blendstudy.structures import Detections, has_masks

__all__ = ["AccuracyReport", "ApComparison", "GateThresholds", "ImageAccuracy", "InstanceMatch", "box_iou_matrix",
           "compare_runs", "match_instances"]


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
    (blendstudy.coco.evaluate.compare_ap). ``change`` = test - ref per iou type."""

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
        return {**to_jsonable(self), "change": self.change}


@dataclass
class GateThresholds:
    """The accuracy gate's thresholds (the params' ``accuracy`` section): mean box IoU at least
    ``min_mean_box_iou``, at most ``max_lost`` lost reference instances above the report's
    gate_score, and |AP change| at most ``max_ap_change`` points where AP was measured (None: not
    checked)."""

    min_mean_box_iou: float = 0.99
    max_lost: int = 0
    max_ap_change: Optional[float] = 0.3
    allow_missing_images: bool = False


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
    #: the gate's verdict, decided once by :meth:`decide` with the params' thresholds (None: not yet)
    gate: Optional[bool] = None
    gate_thresholds: Optional[GateThresholds] = None

    def decide(self, thresholds: GateThresholds) -> bool:
        """Decide the gate with ``thresholds``, store the verdict (``gate``) and return it."""
        self.gate_thresholds = thresholds
        self.gate = self.passes_gate(thresholds.min_mean_box_iou, thresholds.max_lost,
                                     thresholds.allow_missing_images, thresholds.max_ap_change)
        return self.gate

    def per_image_frame(self):
        """per_image as a pandas DataFrame (one row per image)."""
        import pandas as pd

        return pd.DataFrame([to_jsonable(r) for r in self.per_image])

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
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccuracyReport:
        """Inverse of to_dict (a results JSON's "accuracy" entry); NaN APs were written as null."""
        return from_jsonable(cls, data)


def _mean(x: Sequence[float]) -> Optional[float]:
    return float(np.mean(x)) if len(x) else None


def compare_runs(
    ref: Mapping[str, Detections],
    test: Mapping[str, Detections],
    iou_thresh: float = 0.5,
    gate_score: float = 0.3,
    ap: Optional[ApComparison] = None,
) -> AccuracyReport:
    """Compare two runs over the same images (dicts image name -> Detections).

    Instances are paired by :func:`match_instances`; aggregates are over all matched instances of
    all images (not means of per-image means). Images present on one side only are listed in
    ``only_in_ref`` / ``only_in_test`` and not compared. ``ap``: both runs' COCO AP on the images'
    ground truth (blendstudy.coco.evaluate.compare_ap), carried into the report for the gate.
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
        if matches and has_masks(r) and has_masks(t):
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
        ap=ap,
    )
