"""ROIAlign (torchvision's kernel semantics, detectron2's ROIAlignV2) by F.grid_sample, a sampler
that serves it in slices, and the rois of per-image boxes."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from blendstudy.ops.kernels import kernels_for


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
              spatial_scale: float, sampling_ratio: int, aligned: bool, impl: str = "native") -> torch.Tensor:
    """ROIAlign of torchvision.ops.roi_align: features (B, C, H, W); rois (K, 5) as
    [batch_index, x0, y0, x1, y1] in input-image pixels. Returns (K, C, out_h, out_w).

    aligned=True is detectron2's ROIAlignV2 (half-pixel shift); sampling_ratio <= 0 means an
    adaptive ceil(roi_size / output_size) samples per bin, computed per ROI.
    impl: "native" (this code) or "torchvision" (its kernel; see blendstudy.ops.kernels).
    """
    tv = kernels_for(impl)
    if tv is not None:
        return tv.roi_align(  # type: ignore[attr-defined]
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


def boxes_to_rois(boxes_per_image: Sequence[torch.Tensor]) -> torch.Tensor:
    """List of (Ni, 4) boxes -> (sum Ni, 5) rois with the batch index first."""
    rois = []
    for i, b in enumerate(boxes_per_image):
        idx = torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device)
        rois.append(torch.cat([idx, b], dim=1))
    return torch.cat(rois, dim=0)
