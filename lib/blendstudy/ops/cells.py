"""A convolution computed only at chosen cells of a feature pyramid."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn


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
