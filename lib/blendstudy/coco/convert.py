"""Detections to COCO results and back: the one conversion every evaluation uses.

Boxes are xyxy in original-image pixels in Detections and xywh in COCO results; masks become RLE
with str counts. ``contiguous_to_category_id`` maps the model's 0-based classes to the dataset's
COCO category ids (a dict, or a list indexed by class).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np

from blendstudy.coco.rle import encode_rle
from blendstudy.structures import Detections, has_masks

__all__ = ["CategoryMap", "coco_from_dict", "detections_to_coco", "has_masks"]

CategoryMap = Union[Mapping[int, int], Sequence[int]]


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
    det = det.cpu()
    n = len(det)
    if n == 0:
        return []
    boxes = det.boxes.double().numpy().reshape(-1, 4)
    scores = det.scores.double().numpy().reshape(-1)
    classes = det.classes.long().numpy().reshape(-1)
    rles = encode_rle(det.full_masks().numpy()) if has_masks(det) else None
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
