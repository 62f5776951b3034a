"""Result types shared by the model, the instruments and the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from blendstudy.coco.rle import decode_rle, encode_rle
from blendstudy.ops import paste_masks


@dataclass
class Detections:
    """Instances found in one image.

    boxes:   (N, 4) float32, [x0, y0, x1, y1] in pixels of the ORIGINAL image.
    scores:  (N,) float32 in [0, 1].
    classes: (N,) int64, 0-based contiguous class ids.
    masks:   (N, H, W) bool full-image masks (threshold 0.5), or None when only raw masks are kept.
    raw_masks: (N, R, R) float32 mask probabilities inside each box (BlendMask's R=56 bottom
             resolution), or None; full-image masks can always be produced from them.
    image_size: (height, width) of the original image.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    image_size: Tuple[int, int]
    masks: Optional[torch.Tensor] = None
    raw_masks: Optional[torch.Tensor] = None
    extras: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: Any) -> Detections:
        def mv(t):
            return None if t is None else t.to(device)

        return Detections(
            boxes=self.boxes.to(device),
            scores=self.scores.to(device),
            classes=self.classes.to(device),
            image_size=self.image_size,
            masks=mv(self.masks),
            raw_masks=mv(self.raw_masks),
            extras=dict(self.extras),
        )

    def cpu(self) -> Detections:
        return self.to("cpu")

    def full_masks(self) -> torch.Tensor:
        """(N, H, W) bool full-image masks; pasted from raw_masks if needed."""
        if self.masks is not None:
            return self.masks
        if self.raw_masks is None:
            raise ValueError("these detections carry neither full-image nor raw masks")
        return paste_masks(self.raw_masks, self.boxes, self.image_size, threshold=0.5)

    def to_record(self) -> Dict[str, Any]:
        """The per-image layout of the predictions JSON (as the fixture's expected.json):
        {height, width, boxes, scores, classes, masks_rle}; masks as COCO RLE of full-image masks."""
        det = self.cpu()
        h, w = self.image_size
        rec: Dict[str, Any] = {
            "height": int(h),
            "width": int(w),
            "boxes": det.boxes.float().tolist(),
            "scores": det.scores.float().tolist(),
            "classes": det.classes.long().tolist(),
        }
        if det.masks is not None or det.raw_masks is not None:
            rec["masks_rle"] = encode_rle(det.full_masks().cpu().numpy())
        return rec

    @staticmethod
    def from_record(rec: Dict[str, Any]) -> Detections:
        """Inverse of to_record (masks decoded from RLE when present)."""
        h, w = int(rec["height"]), int(rec["width"])
        masks = None
        if rec.get("masks_rle") is not None:
            masks = torch.from_numpy(decode_rle(rec["masks_rle"], (h, w)))
        return Detections(
            boxes=torch.tensor(rec["boxes"], dtype=torch.float32).reshape(-1, 4),
            scores=torch.tensor(rec["scores"], dtype=torch.float32).reshape(-1),
            classes=torch.tensor(rec["classes"], dtype=torch.int64).reshape(-1),
            image_size=(h, w),
            masks=masks,
        )


__all__: List[str] = ["Detections"]


def has_masks(det: Detections) -> bool:
    """Whether the detections carry masks (full-image or raw R x R)."""
    return det.masks is not None or det.raw_masks is not None
