"""Detection ops in plain PyTorch: box IoU, NMS, ROIAlign, mask pasting.

Semantics follow torchvision's kernels and detectron2's wrappers exactly (read, not copied), so the
native model gives AdelaiDet's answers without compiled extensions. Where a working torchvision is
importable its kernels can be used instead (`use_torchvision_ops(True)`); tests check both agree.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

_USE_TORCHVISION = False


@lru_cache(maxsize=1)
def torchvision_ops() -> Optional[object]:
    """torchvision.ops if torchvision imports (a CUDA build with CPU torch raises: then None)."""
    try:
        import torchvision.ops as tv_ops

        tv_ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)  # the import can succeed yet the op fail
    except Exception:
        return None
    return tv_ops


def use_torchvision_ops(enabled: bool) -> bool:
    """Route nms/roi_align through torchvision where it works. Returns whether it is now in use."""
    global _USE_TORCHVISION
    _USE_TORCHVISION = bool(enabled) and torchvision_ops() is not None
    return _USE_TORCHVISION


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (len(a), len(b)) of xyxy boxes (no +1 on widths, as torchvision/detectron2)."""
    area_a = box_area(a)
    area_b = box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS. Returns int64 indices of kept boxes, by decreasing score (ties keep input order,
    as torchvision's stable sort). A box is suppressed when its IoU with a kept one is > threshold."""
    if _USE_TORCHVISION:
        return torchvision_ops().nms(boxes, scores, iou_threshold)  # type: ignore[union-attr]
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    # The full IoU matrix once, then the greedy pass on the CPU-side boolean matrix: O(n^2) memory
    # but only one device sync, and n is bounded by the pre-NMS top-k.
    over = (box_iou(b, b) > iou_threshold).cpu()
    n = over.shape[0]
    removed = torch.zeros(n, dtype=torch.bool)
    keep = []
    over_np = over.numpy()
    removed_np = removed.numpy()
    for i in range(n):
        if removed_np[i]:
            continue
        keep.append(i)
        removed_np |= over_np[i]
    keep_t = torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
    return order[keep_t]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Per-class NMS, torchvision's strategy: the coordinate-offset trick for small inputs, a loop
    over classes for large ones (4,000 coordinates on cpu, 20,000 elsewhere). Returns kept indices
    sorted by decreasing score. Boxes are cast to float32 (fp16 lacks the range for the offsets)."""
    boxes = boxes.float()
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    limit = 4000 if boxes.device.type == "cpu" else 20000
    if boxes.numel() > limit:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            curr = torch.where(idxs == class_id)[0]
            curr_keep = nms(boxes[curr], scores[curr], iou_threshold)
            keep_mask[curr[curr_keep]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True).indices]
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _bilinear_sample(feat: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sample feat (C, H, W) at points y, x (same shape S) with torchvision ROIAlign's rules:
    points outside [-1, H] x [-1, W] give 0; coordinates in [-1, 0] clamp to 0; the last row and
    column are held. Returns (C, *S)."""
    c, h, w = feat.shape
    outside = (y < -1.0) | (y > h) | (x < -1.0) | (x > w)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y_low = y.floor().long()
    x_low = x.floor().long()
    y_at_end = y_low >= h - 1
    x_at_end = x_low >= w - 1
    y_low = torch.where(y_at_end, torch.full_like(y_low, h - 1), y_low)
    x_low = torch.where(x_at_end, torch.full_like(x_low, w - 1), x_low)
    y = torch.where(y_at_end, y_low.to(y.dtype), y)
    x = torch.where(x_at_end, x_low.to(x.dtype), x)
    y_high = torch.where(y_at_end, y_low, y_low + 1)
    x_high = torch.where(x_at_end, x_low, x_low + 1)
    ly = y - y_low.to(y.dtype)
    lx = x - x_low.to(x.dtype)
    hy = 1.0 - ly
    hx = 1.0 - lx
    flat = feat.reshape(c, h * w)

    def gather(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        idx = (yy * w + xx).reshape(-1)
        return flat[:, idx].reshape((c,) + tuple(yy.shape))

    val = (hy * hx) * gather(y_low, x_low) + (hy * lx) * gather(y_low, x_high) \
        + (ly * hx) * gather(y_high, x_low) + (ly * lx) * gather(y_high, x_high)
    return torch.where(outside, torch.zeros((), dtype=val.dtype, device=val.device), val)


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: Tuple[int, int],
              spatial_scale: float, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """ROIAlign of torchvision.ops.roi_align: features (B, C, H, W); rois (K, 5) as
    [batch_index, x0, y0, x1, y1] in input-image pixels. Returns (K, C, out_h, out_w).

    aligned=True is detectron2's ROIAlignV2 (half-pixel shift); sampling_ratio <= 0 means an
    adaptive ceil(roi_size / output_size) samples per bin, computed per ROI.
    """
    if _USE_TORCHVISION:
        return torchvision_ops().roi_align(  # type: ignore[union-attr]
            features, rois.to(features.dtype), output_size, spatial_scale, sampling_ratio, aligned)
    ph, pw = output_size
    k = rois.shape[0]
    b, c, h, w = features.shape
    if k == 0:
        return features.new_zeros((0, c, ph, pw))
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * spatial_scale - offset
    y0 = rois[:, 2] * spatial_scale - offset
    x1 = rois[:, 3] * spatial_scale - offset
    y1 = rois[:, 4] * spatial_scale - offset
    roi_w = x1 - x0
    roi_h = y1 - y0
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / ph
    bin_w = roi_w / pw
    if sampling_ratio > 0:
        groups = [(sampling_ratio, sampling_ratio, torch.arange(k, device=rois.device))]
    else:
        # torchvision: ceil(size / bins) samples, 0 for an empty roi (whose output stays 0)
        gh = torch.ceil(roi_h / ph).clamp(min=0).long().cpu()
        gw = torch.ceil(roi_w / pw).clamp(min=0).long().cpu()
        pairs = torch.stack([gh, gw], 1)
        groups = []
        for pair in torch.unique(pairs, dim=0):
            sel = torch.where((pairs == pair).all(1))[0].to(rois.device)
            groups.append((int(pair[0]), int(pair[1]), sel))
    out = features.new_zeros((k, c, ph, pw))
    batch_idx = rois[:, 0].long()
    for grid_h, grid_w, sel in groups:
        if grid_h == 0 or grid_w == 0:
            continue
        # sample offsets inside a bin: (iy + 0.5) / grid of the bin size
        iy = (torch.arange(grid_h, device=rois.device, dtype=rois.dtype) + 0.5) / grid_h
        ix = (torch.arange(grid_w, device=rois.device, dtype=rois.dtype) + 0.5) / grid_w
        pyi = torch.arange(ph, device=rois.device, dtype=rois.dtype)
        pxi = torch.arange(pw, device=rois.device, dtype=rois.dtype)
        # ys: (K', ph, grid_h); xs: (K', pw, grid_w)
        ys = y0[sel, None, None] + (pyi[None, :, None] + iy[None, None, :]) * bin_h[sel, None, None]
        xs = x0[sel, None, None] + (pxi[None, :, None] + ix[None, None, :]) * bin_w[sel, None, None]
        yy = ys[:, :, :, None, None].expand(-1, ph, grid_h, pw, grid_w)
        xx = xs[:, None, None, :, :].expand(-1, ph, grid_h, pw, grid_w)
        for img in range(b):
            in_img = batch_idx[sel] == img
            if b > 1:
                idx = torch.where(in_img)[0]
                if idx.numel() == 0:
                    continue
            else:
                idx = slice(None)
            vals = _bilinear_sample(features[img], yy[idx], xx[idx])  # (C, K'', ph, gh, pw, gw)
            pooled = vals.sum(dim=(3, 5)) / float(max(grid_h * grid_w, 1))
            target = sel[idx] if b > 1 else sel
            out[target] = pooled.permute(1, 0, 2, 3).to(out.dtype)
    return out


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


def boxes_to_rois(boxes_per_image: Sequence[torch.Tensor]) -> torch.Tensor:
    """List of (Ni, 4) boxes -> (sum Ni, 5) rois with the batch index first."""
    rois = []
    for i, b in enumerate(boxes_per_image):
        idx = torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device)
        rois.append(torch.cat([idx, b], dim=1))
    return torch.cat(rois, dim=0)


def kth_largest_threshold(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest score (0-dim tensor), computed as AdelaiDet does (kthvalue of the
    (n - k + 1)-th smallest), so every score >= it is kept: ties at the k-th value all stay."""
    n = scores.shape[0]
    return torch.kthvalue(scores.cpu(), n - k + 1).values


def ceil_to_multiple(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m) if m > 1 else int(x)
