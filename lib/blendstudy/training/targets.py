"""FCOS target assignment, re-implemented after AdelaiDet's ``adet/modeling/fcos/fcos_outputs.py``.

Every location of level l is a candidate for a GT box when it lies in the box's *center region*
(box centre +- POS_RADIUS * stride, clipped to the box) and the largest of its l/t/r/b distances
lies in the level's size range (SIZES_OF_INTEREST, from -1 to infinity); among several candidate
boxes the smallest (box area) wins. Regression targets are l/t/r/b in units of the level's stride.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

INF = 1e8


def sizes_of_interest(soi: Sequence[float], num_levels: int) -> List[Tuple[float, float]]:
    """AdelaiDet's per-level (min, max) of the largest regression distance: -1, soi..., INF."""
    bounds = [-1.0] + [float(s) for s in soi] + [INF]
    if len(bounds) - 1 != num_levels:
        raise ValueError(f"SIZES_OF_INTEREST {list(soi)} needs {num_levels - 1} values for {num_levels} levels")
    return [(bounds[i], bounds[i + 1]) for i in range(num_levels)]


def _per_location(n_per: Sequence[int], values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(L,) tensor holding ``values[l]`` at each of the ``n_per[l]`` locations of level l."""
    return torch.cat([torch.full((k,), float(v)) for k, v in zip(n_per, values)]).to(like)


def _in_center_region(xs: torch.Tensor, ys: torch.Tensor, boxes: torch.Tensor, stride_per: torch.Tensor,
                      radius: float) -> torch.Tensor:
    """(L, G) bool: location inside box centre +- radius * its stride, clipped to the box."""
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    r = stride_per[:, None] * radius
    x0 = torch.maximum(cx[None] - r, boxes[None, :, 0])
    y0 = torch.maximum(cy[None] - r, boxes[None, :, 1])
    x1 = torch.minimum(cx[None] + r, boxes[None, :, 2])
    y1 = torch.minimum(cy[None] + r, boxes[None, :, 3])
    return torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2).min(dim=2).values > 0


def assign_targets(locations: Sequence[torch.Tensor], strides: Sequence[int],
                   size_ranges: Sequence[Tuple[float, float]], boxes: torch.Tensor,
                   classes: torch.Tensor, num_classes: int, radius: float = 1.5,
                   center_sample: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FCOS targets of one image over all levels (level-major order of ``locations``).

    Args:
        locations: per level (n_l, 2) x, y of the cells in input pixels (compute_locations).
        strides: per level stride, pixels.
        size_ranges: per level (min, max) of max(l, t, r, b), pixels.
        boxes: (G, 4) xyxy GT boxes, input pixels; classes: (G,) contiguous ids.
    Returns:
        labels (L,) int64 (num_classes = background), reg_targets (L, 4) l/t/r/b in units of the
        location's stride, gt_inds (L,) int64 index of the assigned box (-1 = background).
    """
    locs = torch.cat(list(locations), dim=0)
    n_per = [len(x) for x in locations]
    n = locs.shape[0]
    stride_per = _per_location(n_per, strides, locs)
    if boxes.numel() == 0:
        return (torch.full((n,), num_classes, dtype=torch.int64), locs.new_zeros((n, 4)),
                torch.full((n,), -1, dtype=torch.int64))
    xs, ys = locs[:, 0:1], locs[:, 1:2]
    ltrb = torch.stack([xs - boxes[None, :, 0], ys - boxes[None, :, 1],
                        boxes[None, :, 2] - xs, boxes[None, :, 3] - ys], dim=2)  # (L, G, 4)
    if center_sample:
        inside = _in_center_region(xs, ys, boxes, stride_per, radius)
    else:
        inside = ltrb.min(dim=2).values > 0
    lo = _per_location(n_per, [a for a, _ in size_ranges], locs)
    hi = _per_location(n_per, [b for _, b in size_ranges], locs)
    max_reg = ltrb.max(dim=2).values
    cared = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].repeat(n, 1)
    area[~inside] = INF
    area[~cared] = INF
    min_area, gt_inds = area.min(dim=1)
    labels = classes[gt_inds].clone()
    bg = min_area == INF
    labels[bg] = num_classes
    reg = ltrb[torch.arange(n), gt_inds] / stride_per[:, None]
    gt_inds = torch.where(bg, torch.full_like(gt_inds, -1), gt_inds)
    return labels, reg, gt_inds
