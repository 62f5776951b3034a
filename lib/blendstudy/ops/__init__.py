"""Detection ops in plain PyTorch: box IoU, NMS, ROIAlign, mask pasting, a conv at chosen cells.

Semantics follow torchvision's kernels and detectron2's wrappers exactly (read, not copied), so the
native model gives AdelaiDet's answers without compiled extensions. Where a working torchvision is
importable its kernels can be used instead (`use_torchvision_ops(True)`); tests check both agree.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    # one coordinate at a time: contiguous (len(a), len(b)) operands instead of (.., .., 2) ones
    # whose last dimension defeats vectorisation (the same float operations, about 2x faster)
    w = (torch.min(a[:, 2, None], b[None, :, 2]) - torch.max(a[:, 0, None], b[None, :, 0])).clamp_(min=0)
    h = (torch.min(a[:, 3, None], b[None, :, 3]) - torch.max(a[:, 1, None], b[None, :, 1])).clamp_(min=0)
    inter = w * h
    return inter / (area_a[:, None] + area_b[None, :] - inter)


NMS_CHUNK = 512


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int = 0) -> torch.Tensor:
    """Greedy NMS. Returns int64 indices of kept boxes, by decreasing score (ties keep input order,
    as torchvision's stable sort). A box is suppressed when its IoU with a kept one is > threshold.

    max_keep > 0: the caller keeps only the max_keep best kept boxes and every box tied with the
    last of them (AdelaiDet's post-NMS top-k). Greedy NMS decides boxes in score order, so once
    max_keep boxes are kept, the first surviving box scored below the last of them ends the pass
    without changing what the caller keeps. Candidates are then taken in chunks (2 * max_keep
    first, doubling up to NMS_CHUNK): the IoU matrix is computed only as far as the pass goes."""
    if _USE_TORCHVISION:
        return torchvision_ops().nms(boxes, scores, iou_threshold)  # type: ignore[union-attr]
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    s_np = scores[order].detach().float().cpu().numpy()
    n = b.shape[0]
    chunk = min(max(2 * max_keep, 64), NMS_CHUNK) if max_keep > 0 else n
    keep: list = []
    start = 0
    while start < n:
        end = min(n, start + chunk)
        chunk = min(2 * chunk, max(NMS_CHUNK, chunk))
        cb = b[start:end]
        # one device sync per chunk: IoU within the chunk and against the boxes kept so far
        over = (box_iou(cb, cb) > iou_threshold).cpu().numpy()
        if keep:
            # index lists are made on the host and moved: under a TorchDispatchMode (the FLOP count) the
            # emulated Ascend stack cannot build torch.tensor(list, device=npu) directly
            kept = b[torch.as_tensor(keep, dtype=torch.int64).to(b.device)]
            removed = (box_iou(cb, kept) > iou_threshold).any(dim=1).cpu().numpy()
        else:
            removed = np.zeros(end - start, dtype=bool)
        for i in range(end - start):
            if removed[i]:
                continue
            if 0 < max_keep <= len(keep) and s_np[start + i] < s_np[keep[max_keep - 1]]:
                return order[torch.as_tensor(keep, dtype=torch.int64).to(boxes.device)]
            keep.append(start + i)
            removed |= over[i]
        start = end
    return order[torch.as_tensor(keep, dtype=torch.int64).to(boxes.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float, max_keep: int = 0) -> torch.Tensor:
    """Per-class NMS, torchvision's strategy: the coordinate-offset trick for small inputs, a loop
    over classes for large ones (4,000 coordinates on cpu, 20,000 elsewhere). Returns kept indices
    sorted by decreasing score. Boxes are cast to float32 (fp16 lacks the range for the offsets).
    max_keep: as in `nms` (the caller keeps the max_keep best and their ties)."""
    boxes = boxes.float()
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    limit = 4000 if boxes.device.type == "cpu" else 20000
    if boxes.numel() > limit:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            curr = torch.where(idxs == class_id)[0]
            curr_keep = nms(boxes[curr], scores[curr], iou_threshold, max_keep)
            keep_mask[curr[curr_keep]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True).indices]
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold, max_keep)


def _roi_axes(size: Tuple[int, int], y0: torch.Tensor, x0: torch.Tensor, bin_h: torch.Tensor,
              bin_w: torch.Tensor, ph: int, pw: int, grid_h: int, grid_w: int
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per roi and axis: normalised grid coordinates gy (K, ph*grid_h), gx (K, pw*grid_w) and
    whether each sample row / column lies inside [-1, H] / [-1, W] (see _roi_samples)."""
    h, w = size
    dt, dev = y0.dtype, y0.device
    # sample offsets inside a bin: (i + 0.5) / grid, for every (bin, sample) pair in order
    sy = torch.arange(ph * grid_h, device=dev)
    sx = torch.arange(pw * grid_w, device=dev)
    fy = (sy // grid_h).to(dt) + ((sy % grid_h).to(dt) + 0.5) / grid_h
    fx = (sx // grid_w).to(dt) + ((sx % grid_w).to(dt) + 0.5) / grid_w
    ys = y0[:, None] + fy[None, :] * bin_h[:, None]  # (K, ph * grid_h)
    xs = x0[:, None] + fx[None, :] * bin_w[:, None]  # (K, pw * grid_w)
    gy = ys * (2.0 / max(h - 1, 1)) - 1.0
    gx = xs * (2.0 / max(w - 1, 1)) - 1.0
    return gy, gx, (ys >= -1.0) & (ys <= h), (xs >= -1.0) & (xs <= w)


def _roi_grid(gy: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """The F.grid_sample grid (K, rows, cols, 2) of per-axis coordinates."""
    k, rows, cols = gy.shape[0], gy.shape[1], gx.shape[1]
    return torch.stack([gx[:, None, :].expand(k, rows, cols), gy[:, :, None].expand(k, rows, cols)], dim=-1)


def _roi_sample(features: torch.Tensor, batch_idx: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """F.grid_sample of every roi's grid on its image, unmasked: (K, C, rows, cols)."""
    k = grid.shape[0]
    _, c, h, w = features.shape
    # one image: a stride-0 view per roi, no copy (of an NCHW map: grid_sample would copy a
    # channels_last one k times)
    src = features.contiguous().expand(k, c, h, w) if features.shape[0] == 1 else features[batch_idx]
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _roi_samples(features: torch.Tensor, batch_idx: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
                 bin_h: torch.Tensor, bin_w: torch.Tensor, ph: int, pw: int, grid_h: int, grid_w: int
                 ) -> torch.Tensor:
    """ROIAlign bins (K, C, ph, pw) of K rois that share a (grid_h, grid_w) sampling grid: every
    sample point by ONE F.grid_sample call. torchvision's bilinear_interpolate rules map onto it
    exactly: a point outside [-1, H] x [-1, W] gives 0 (a mask here), otherwise its coordinates are
    clamped to [0, H-1] x [0, W-1] (padding_mode="border") and interpolated bilinearly; with
    align_corners=True the normalised grid addresses pixel centres 0 .. H-1 (one extra float
    rounding of the coordinate, ~1e-7 relative)."""
    k = batch_idx.shape[0]
    c = features.shape[1]
    gy, gx, in_y, in_x = _roi_axes(tuple(features.shape[-2:]), y0, x0, bin_h, bin_w, ph, pw, grid_h, grid_w)
    inside = in_y[:, None, :, None] & in_x[:, None, None, :]
    vals = _roi_sample(features, batch_idx, _roi_grid(gy, gx)) * inside.to(features.dtype)
    if grid_h * grid_w > 1:
        vals = vals.reshape(k, c, ph, grid_h, pw, grid_w).mean(dim=(3, 5))
    return vals


def _roi_geometry(rois: torch.Tensor, spatial_scale: float, aligned: bool
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y0, x0, height, width) of (K, 5) rois on the feature map (detectron2's ROIAlign rules)."""
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
    return y0, x0, roi_h, roi_w


class RoiSampler:
    """ROIAlign with one sample per bin (sampling_ratio 1) prepared once for K rois and sampled in
    slices: the sample coordinates of all rois are computed in one go (per axis: K x ph and K x pw
    values), `sample(s, e)` returns rois s..e-1 (e - s, C, ph, pw) WITHOUT the outside-the-map
    mask, and `inside(s, e)` (e - s, 1, ph, pw) is that mask (0/1). roi_align == sample * inside,
    bit for bit; a caller whose next step is linear per bin may apply the mask later, on fewer
    channels (the blender does)."""

    def __init__(self, features: torch.Tensor, rois: torch.Tensor, output_size: Tuple[int, int],
                 spatial_scale: float, aligned: bool):
        ph, pw = output_size
        rois = rois.to(features.dtype)
        y0, x0, roi_h, roi_w = _roi_geometry(rois, spatial_scale, aligned)
        self.features = features
        self.batch_idx = rois[:, 0].long()
        self.gy, self.gx, in_y, in_x = _roi_axes(tuple(features.shape[-2:]), y0, x0, roi_h / ph, roi_w / pw,
                                                 ph, pw, 1, 1)
        self.in_y, self.in_x = in_y.to(features.dtype), in_x.to(features.dtype)

    def __len__(self) -> int:
        return int(self.gy.shape[0])

    def sample(self, start: int, end: int) -> torch.Tensor:
        grid = _roi_grid(self.gy[start:end], self.gx[start:end])
        return _roi_sample(self.features, self.batch_idx[start:end], grid)

    def inside(self, start: int, end: int) -> torch.Tensor:
        return (self.in_y[start:end, :, None] * self.in_x[start:end, None, :])[:, None]


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
    y0, x0, roi_h, roi_w = _roi_geometry(rois, spatial_scale, aligned)
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
    batch_idx = rois[:, 0].long()
    if len(groups) == 1 and groups[0][0] > 0 and groups[0][1] > 0:
        grid_h, grid_w, _ = groups[0]
        return _roi_samples(features, batch_idx, y0, x0, bin_h, bin_w, ph, pw, grid_h, grid_w)
    out = features.new_zeros((k, c, ph, pw))
    for grid_h, grid_w, sel in groups:
        if grid_h == 0 or grid_w == 0:
            continue
        out[sel] = _roi_samples(features, batch_idx[sel], y0[sel], x0[sel], bin_h[sel], bin_w[sel], ph, pw,
                                grid_h, grid_w)
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


def conv_at(conv: nn.Conv2d, maps: Sequence[torch.Tensor], levels: torch.Tensor, cells: torch.Tensor,
            image: Union[int, torch.Tensor] = 0) -> torch.Tensor:
    """`conv(maps[level])[image, :, y, x]` for each row (level, cell = y * W + x), computing the conv
    at those cells only: (K, out_channels). `conv` must be stride 1 with "same" zero padding
    (odd square kernel, padding k // 2), no dilation or groups. `image` is one batch index or one
    per row. Shapes are fixed by K (no host sync): every level is gathered for every row and the
    rows of other levels are masked out, which costs K * k * k * C per level."""
    k = conv.kernel_size[0]
    if (conv.kernel_size != (k, k) or k % 2 == 0 or conv.padding != (k // 2, k // 2) or conv.stride != (1, 1)
            or conv.dilation != (1, 1) or conv.groups != 1):
        raise ValueError(f"conv_at needs a stride-1 'same' conv with an odd square kernel, got {conv}")
    rows = levels.shape[0]
    out_ch, in_ch = conv.out_channels, conv.in_channels
    offs = torch.arange(k, device=cells.device) - k // 2
    img = torch.as_tensor(image).to(cells.device).expand(rows)
    cols = None
    for level, fmap in enumerate(maps):
        n, c, h, w = fmap.shape
        ys = (cells // w)[:, None, None] + offs[None, :, None]    # (K, k, 1)
        xs = (cells % w)[:, None, None] + offs[None, None, :]     # (K, 1, k)
        use = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w) & (levels == level)[:, None, None]  # (K, k, k)
        idx = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).reshape(-1)
        im = img[:, None].expand(rows, k * k).reshape(-1)
        if fmap.is_contiguous():
            g = fmap.flatten(2)[im, :, idx]                        # (K*k*k, C)
        else:  # channels_last: the (N*H*W, C) view needs no copy
            g = fmap.permute(0, 2, 3, 1).reshape(n * h * w, c)[im * (h * w) + idx]
        g = torch.where(use.reshape(-1, 1), g, torch.zeros((), dtype=g.dtype, device=g.device))
        cols = g if cols is None else cols + g
    if cols is None:
        raise ValueError("conv_at needs at least one feature map")
    # (K*k*k, C) -> (K, C*k*k) in the weight's (c, ky, kx) order
    cols = cols.reshape(rows, k * k, in_ch).transpose(1, 2).reshape(rows, in_ch * k * k)
    out = cols @ conv.weight.reshape(out_ch, -1).t().to(cols.dtype)
    return out + conv.bias.to(out.dtype) if conv.bias is not None else out


@lru_cache(maxsize=32)
def bilinear_matrix(in_size: int, out_size: int, dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> torch.Tensor:
    """(out_size, in_size) weights M with M @ v == F.interpolate(v, out_size, mode="linear",
    align_corners=False) along one axis (half-pixel centres, source index clamped at 0, the last
    sample held; no antialias). Bilinear resizing of (..., H, W) is then Mh @ x @ Mw.T.
    Cached per (sizes, dtype, device): the blender asks for the same two on every image; callers
    must not modify the returned tensor."""
    dst = torch.arange(out_size, dtype=torch.float64)
    src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    l1 = torch.where(i0 == in_size - 1, torch.zeros_like(src), src - i0.double())
    m = torch.zeros((out_size, in_size), dtype=torch.float64)
    rows = torch.arange(out_size)
    m.index_put_((rows, i0), 1.0 - l1, accumulate=True)
    m.index_put_((rows, i1), l1, accumulate=True)
    return m.to(dtype=dtype, device=device)


def ceil_to_multiple(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m) if m > 1 else int(x)
