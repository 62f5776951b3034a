"""Sizes and resampling: bilinear resizing as a matrix product, sizes padded to a multiple."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch


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
