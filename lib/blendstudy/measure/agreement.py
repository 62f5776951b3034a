"""Did an optimization change the outputs? Run-against-run agreement: the accuracy gate.

:func:`compare_runs` matches the instances of a test run (e.g. NPU, fp16, compiled) to a reference
run (e.g. CPU fp32) image by image and reports box IoU, score and class agreement, mask IoU and
lost instances -- the seed's "CPU vs NPU" table. Given both runs' COCO AP on the images' ground truth
(:class:`ApComparison`, computed by blendstudy.coco.evaluate.compare_ap, with the change's paired
bootstrap interval over the images) the gate bounds the AP change as well, by its interval: "pass"
when the interval lies within the bound, "fail" when it lies beyond it, "inconclusive" when it
straddles it. The gate's verdict is decided once, with the params' thresholds
(:meth:`AccuracyReport.decide`), and stored; ``gate`` says whether it is "pass".

Boxes are xyxy in original-image pixels; box areas are continuous ((x1-x0)*(y1-y0), no +1).
APs are in percent (0-100).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from blendstudy.jsonable import from_jsonable, to_jsonable
from blendstudy.measure.recorded_run import RecordedRun, mask_ious, view
from blendstudy.structures import Detections

__all__ = ["VERDICTS", "AccuracyReport", "ApComparison", "GateThresholds", "ImageAccuracy", "InstanceMatch",
           "RecordedRun", "ap_verdict", "box_iou_matrix", "compare_runs", "match_instances"]


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


#: the gate's verdicts: "inconclusive" = an AP change whose interval straddles the bound
VERDICTS = ("pass", "fail", "inconclusive")


def ap_verdict(change: float, ci: Optional[Sequence[float]], max_change: float) -> str:
    """One iou type's AP verdict against the bound ``max_change`` (points): with an interval
    [low, high] "pass" when it lies within +-max_change, "fail" when it lies entirely beyond it
    (either side), else "inconclusive"; without one (or with NaN bounds) the change itself decides
    pass / fail. A NaN change (no ground truth) passes."""
    if not np.isfinite(change):
        return "pass"
    if ci is None or len(ci) != 2 or not all(np.isfinite(v) for v in ci):
        return "pass" if abs(change) <= max_change else "fail"
    low, high = float(ci[0]), float(ci[1])
    if -max_change <= low and high <= max_change:
        return "pass"
    if low > max_change or high < -max_change:
        return "fail"
    return "inconclusive"


@dataclass
class ApComparison:
    """COCO AP (percent) of the reference and the test run on the same images with ground truth
    (blendstudy.coco.evaluate.compare_ap). ``change`` = test - ref per iou type; ``change_ci``:
    its paired bootstrap interval over the images ({iou type: [low, high]}, ``confidence``,
    ``n_boot`` resamples, ``seed``), None where none was computed (also in records written before
    there was one)."""

    images: int
    ref: Dict[str, float]
    test: Dict[str, float]
    max_dets: int = 100
    change_ci: Optional[Dict[str, List[float]]] = None
    confidence: float = 0.95
    n_boot: int = 0
    seed: int = 0

    @property
    def change(self) -> Dict[str, float]:
        return {k: self.test[k] - self.ref[k] for k in self.ref if k in self.test}

    def verdicts(self, max_change: float = 0.3) -> Dict[str, str]:
        """{iou type: "pass" | "fail" | "inconclusive"} (ap_verdict, with the interval where there is one)."""
        ci = self.change_ci or {}
        return {k: ap_verdict(v, ci.get(k), max_change) for k, v in self.change.items()}

    def verdict(self, max_change: float = 0.3) -> str:
        """"fail" if any iou type fails, else "inconclusive" if any is, else "pass"."""
        found = set(self.verdicts(max_change).values())
        return "fail" if "fail" in found else "inconclusive" if "inconclusive" in found else "pass"

    def passes(self, max_change: float = 0.3) -> bool:
        """The verdict is "pass" for every iou type (NaN, e.g. no ground truth, passes)."""
        return self.verdict(max_change) == "pass"

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
    #: the gate's verdict, decided once by :meth:`decide` with the params' thresholds (None: not
    #: yet): passed or not -- an "inconclusive" verdict has not passed
    gate: Optional[bool] = None
    gate_thresholds: Optional[GateThresholds] = None
    #: "pass", "fail" or "inconclusive" (:meth:`judge`), decided with ``gate`` (None: not yet, or a
    #: record written before verdicts had three values)
    verdict: Optional[str] = None

    #: written into the JSON for its readers, derived from ``ap`` again when read back
    JSON_VIEWS = ("ap_change_ci",)

    @property
    def ap_change_ci(self) -> Optional[Dict[str, List[float]]]:
        """{iou type: [low, high]}: the paired bootstrap interval of each AP change (None without one)."""
        return self.ap.change_ci if self.ap is not None else None

    def decide(self, thresholds: GateThresholds) -> bool:
        """Decide the gate with ``thresholds``: store the verdict (``verdict``) and whether it is
        "pass" (``gate``), and return the latter."""
        self.gate_thresholds = thresholds
        self.verdict = self.judge(thresholds.min_mean_box_iou, thresholds.max_lost,
                                  thresholds.allow_missing_images, thresholds.max_ap_change)
        self.gate = self.verdict == "pass"
        return self.gate

    def per_image_frame(self):
        """per_image as a pandas DataFrame (one row per image)."""
        import pandas as pd

        return pd.DataFrame([to_jsonable(r) for r in self.per_image])

    def judge(self, min_mean_iou: float = 0.99, max_lost: int = 0, allow_missing_images: bool = False,
              max_ap_change: Optional[float] = 0.3) -> str:
        """"fail" when (unless allowed) an image is missing on either side, more than ``max_lost``
        reference instances above ``gate_score`` were lost, the mean box IoU is below
        ``min_mean_iou`` (with nothing matched: either side has an instance) or, where AP was
        measured (``ap``), an AP change fails its bound ``max_ap_change`` (None: not checked);
        otherwise the AP verdict (ApComparison.verdict: "pass" or "inconclusive"), "pass" without AP."""
        if not allow_missing_images and (self.only_in_ref or self.only_in_test):
            return "fail"
        if self.lost_above > max_lost:
            return "fail"
        if self.mean_box_iou is None:
            instances_ok = self.ref_instances == 0 and self.test_instances == 0
        else:
            instances_ok = self.mean_box_iou >= min_mean_iou
        if not instances_ok:
            return "fail"
        if self.ap is None or max_ap_change is None:
            return "pass"
        return self.ap.verdict(max_ap_change)

    def passes_gate(self, min_mean_iou: float = 0.99, max_lost: int = 0,
                    allow_missing_images: bool = False, max_ap_change: Optional[float] = 0.3) -> bool:
        """Whether :meth:`judge` says "pass" with these thresholds ("inconclusive" has not passed)."""
        return self.judge(min_mean_iou, max_lost, allow_missing_images, max_ap_change) == "pass"

    def to_dict(self) -> Dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccuracyReport:
        """Inverse of to_dict (a results JSON's "accuracy" entry); NaN APs were written as null."""
        return from_jsonable(cls, data)


def _mean(x: Sequence[float]) -> Optional[float]:
    return float(np.mean(x)) if len(x) else None


def _image_row(ref: Mapping[str, Detections], test: Mapping[str, Detections], name: str, iou_thresh: float,
               gate_score: float):
    """(ImageAccuracy, box IoUs, score differences, class agreements, mask IoUs) of one image."""
    (r, r_rle), (t, t_rle) = view(ref, test, name)
    matches = match_instances(r, t, iou_thresh)
    r_scores = _np(r.scores).astype(np.float64).reshape(-1)
    t_scores = _np(t.scores).astype(np.float64).reshape(-1)
    r_cls = _np(r.classes).reshape(-1)
    t_cls = _np(t.classes).reshape(-1)
    ious = [m.box_iou for m in matches]
    sdiff = [abs(float(t_scores[m.test_index] - r_scores[m.ref_index])) for m in matches]
    same = [bool(r_cls[m.ref_index] == t_cls[m.test_index]) for m in matches]
    mious = mask_ious(r, t, r_rle, t_rle, matches)
    matched_ref = {m.ref_index for m in matches}
    lost = sum(1 for i in range(len(r)) if i not in matched_ref and r_scores[i] > gate_score)
    row = ImageAccuracy(
        image=str(name),
        ref_instances=len(r),
        test_instances=len(t),
        matched=len(matches),
        mean_box_iou=_mean(ious),
        min_box_iou=min(ious) if ious else None,
        max_score_diff=max(sdiff) if sdiff else None,
        class_agreement=_mean([float(x) for x in same]),
        mean_mask_iou=_mean(mious),
        unmatched_ref=len(r) - len(matches),
        unmatched_test=len(t) - len(matches),
        lost_above=lost,
    )
    return row, ious, sdiff, same, mious


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
    ground truth (blendstudy.coco.evaluate.compare_ap), carried into the report for the gate. Two
    RecordedRuns are compared on their RLE masks (the same mask IoUs, nothing decoded).
    """
    names = [k for k in ref if k in test]
    only_ref = [str(k) for k in ref if k not in test]
    only_test = [str(k) for k in test if k not in ref]

    found = [_image_row(ref, test, name, iou_thresh, gate_score) for name in names]
    rows = [f[0] for f in found]
    all_iou = [v for f in found for v in f[1]]
    all_sdiff = [v for f in found for v in f[2]]
    all_same = [v for f in found for v in f[3]]
    all_miou = [v for f in found for v in f[4]]
    n_ref, n_test = sum(r.ref_instances for r in rows), sum(r.test_instances for r in rows)
    n_unref, n_untest = sum(r.unmatched_ref for r in rows), sum(r.unmatched_test for r in rows)
    n_lost = sum(r.lost_above for r in rows)

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
