"""Mask pasting: R x R soft masks into full-image bool masks (detectron2's paste_masks_in_image)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: Tuple[int, int],
                threshold: float = 0.5, chunk_pixels: int = 1 << 26,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Paste (N, M, M) soft masks into (N, H, W) bool full-image masks, each into its xyxy box (in
    output-image pixels): detectron2's paste_masks_in_image (grid_sample at pixel centres,
    align_corners=False, then >= threshold). Each mask is computed only over the region that
    bounds its box, as detectron2 does on the CPU; results are identical on every device.
    valid: optional (N,) bool of the rows that matter (fixed-shape results); the others stay empty
    where skipping them is free (the CPU loop), and are computed anyway elsewhere (no sync)."""
    h, w = image_size
    n = masks.shape[0]
    out = torch.zeros((n, h, w), dtype=torch.bool, device=masks.device)
    if n == 0:
        return out
    boxes = boxes.to(torch.float32)
    if masks.device.type == "cpu":
        rows = range(n) if valid is None else torch.nonzero(valid).flatten().tolist()
        for i in rows:
            region, (ys, xs) = _paste_region(masks[i:i + 1], boxes[i:i + 1], h, w, True)
            out[i, ys, xs] = region[0] >= threshold
        return out
    per_chunk = max(1, chunk_pixels // max(1, h * w))
    for start in range(0, n, per_chunk):
        sl = slice(start, start + per_chunk)
        region, _ = _paste_region(masks[sl], boxes[sl], h, w, False)
        out[sl] = region >= threshold
    return out


def _paste_region(masks: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int,
                  tight: bool) -> Tuple[torch.Tensor, Tuple[slice, slice]]:
    if tight:
        lo = torch.clamp(boxes.min(dim=0).values.floor()[:2] - 1, min=0).to(torch.int32)
        x0i, y0i = int(lo[0]), int(lo[1])
        x1i = int(torch.clamp(boxes[:, 2].max().ceil() + 1, max=img_w))
        y1i = int(torch.clamp(boxes[:, 3].max().ceil() + 1, max=img_h))
        # a box wholly outside the image: empty region (detectron2 would raise in arange here)
        x0i, y0i = min(x0i, img_w), min(y0i, img_h)
        x1i, y1i = max(x1i, x0i), max(y1i, y0i)
    else:
        x0i, y0i, x1i, y1i = 0, 0, img_w, img_h
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    n = masks.shape[0]
    img_y = torch.arange(y0i, y1i, device=masks.device, dtype=torch.float32) + 0.5
    img_x = torch.arange(x0i, x1i, device=masks.device, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    gx = img_x[:, None, :].expand(n, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(n, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)
    m = masks[:, None].float() if not masks.dtype.is_floating_point else masks[:, None]
    pasted = F.grid_sample(m, grid.to(m.dtype), align_corners=False)
    return pasted[:, 0], (slice(y0i, y1i), slice(x0i, x1i))
