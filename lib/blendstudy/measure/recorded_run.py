"""A run kept compactly: image name -> Detections stored as Detections.to_record() (masks as COCO
RLE), and the mask IoUs of matched instances read from either form. The accuracy gate keeps every
recipe's detections on its images this way (full-size masks of every recipe on a hundred images
would not fit) and compares them without decoding (blendstudy.measure.agreement.compare_runs,
blendstudy.coco.evaluate.evaluate_run)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import torch

from blendstudy.structures import Detections, has_masks

__all__ = ["RecordedRun", "mask_ious", "view"]


class RecordedRun(Mapping[str, Detections]):
    """A run (image name -> Detections) kept as Detections.to_record() -- masks as COCO RLE, a
    small fraction of full-size masks -- and rebuilt when read: the same boxes, scores, classes and
    full-image masks. blendstudy.measure.agreement.compare_runs and blendstudy.coco.evaluate.evaluate_run read the RLE
    directly (no full-size mask is decoded); ``evaluated`` keeps a run's COCO evaluation for
    whoever compares it with several others."""

    def __init__(self, records: Mapping[str, Dict[str, Any]]) -> None:
        self.records = dict(records)
        self.evaluated: Dict[Any, Any] = {}

    @classmethod
    def of(cls, run: Mapping[str, Detections]) -> RecordedRun:
        return cls({name: det.to_record() for name, det in run.items()})

    def __getitem__(self, name: str) -> Detections:
        return Detections.from_record(self.records[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, name: object) -> bool:  # without decoding (Mapping's would read the item)
        return name in self.records

    def plain(self, name: str) -> Detections:
        """The image's detections without masks (boxes, scores, classes)."""
        return Detections.from_record({k: v for k, v in self.records[name].items() if k != "masks_rle"})

    def masks_rle(self, name: str) -> Optional[List[Dict[str, Any]]]:
        """The image's masks as COCO RLE (str counts), one per detection; None without masks."""
        return self.records[name].get("masks_rle")


def view(ref: Mapping[str, Detections], test: Mapping[str, Detections], name: str):
    """((ref detections, ref RLE or None), (test ...)) of one image: the RLE where both runs are
    RecordedRuns (then without decoded masks), else the Detections as they are."""
    if isinstance(ref, RecordedRun) and isinstance(test, RecordedRun):
        return (ref.plain(name), ref.masks_rle(name)), (test.plain(name), test.masks_rle(name))
    return (ref[name], None), (test[name], None)


def _rle_iou(a: Dict[str, Any], b: Dict[str, Any]) -> float:
    """Mask IoU of two COCO RLEs (1.0 when both are empty), as _pair_mask_iou on the decoded masks."""
    from pycocotools import mask as mask_util

    a, b = ({"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]}
            for r in (a, b))
    if not mask_util.area([a, b]).any():
        return 1.0
    return float(mask_util.iou([a], [b], [0])[0][0])


def mask_ious(r: Detections, t: Detections, r_rle: Optional[List[Dict[str, Any]]],
               t_rle: Optional[List[Dict[str, Any]]], matches: Sequence[Any]) -> List[float]:
    """Mask IoU of every match where both sides carry masks (RLE or tensors), else []."""
    if not matches:
        return []
    if r_rle is not None and t_rle is not None:
        return [_rle_iou(r_rle[i], t_rle[j]) for i, j in _index_pairs(matches)]
    if has_masks(r) and has_masks(t):
        rm, tm = r.full_masks().cpu(), t.full_masks().cpu()
        return [_pair_mask_iou(rm[i], tm[j]) for i, j in _index_pairs(matches)]
    return []


def _pair_mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.bool()
    b = b.bool()
    union = int((a | b).sum())
    if union == 0:
        return 1.0  # both empty: identical
    return int((a & b).sum()) / union


def _index_pairs(matches: Sequence[Any]) -> List[tuple]:
    return [(m.ref_index, m.test_index) for m in matches]
