"""torch_npu's own operators, written in plain torch (they run wherever their inputs are).

``npu_deformable_conv2d`` follows Ascend's documentation ("(beta) torch_npu.npu_deformable_conv2d",
op-plugin) and the CANN operator behind it (DeformableOffsets, then a convolution):

    npu_deformable_conv2d(self, weight, offset, bias, kernel_size, stride, padding,
                          dilation=[1, 1, 1, 1], groups=1, deformable_groups=1, modulated=True)
        -> (output, offset_out)

- ``self`` (N, C, H, W); ``weight`` (O, C / groups, kh, kw); ``bias`` (O,) or None;
- ``offset`` (N, 3 * deformable_groups * kh * kw, Ho, Wo): every x offset first, then every y offset,
  then the modulation mask (already activated), each block indexed by group * kh * kw + ki * kw + kj;
- ``stride`` and ``dilation`` 4 numbers ordered (N, C, H, W), N and C set to 1; ``padding`` 4 numbers
  (top, bottom, left, right); ``kernel_size`` 2 numbers (torch_npu's own ModulatedDeformConv passes
  ``[kw, kh]``; either order of the weight's sizes is accepted);
- only v2 (``modulated=True``) is supported, as documented;
- ``offset_out`` is the deformed input (N, C, Ho * kh, Wo * kw): the bilinear samples (zero outside
  the image) times the mask, kernel point (ki, kj) of output (i, j) at row i * kh + ki, column
  j * kw + kj. ``output`` is its convolution with ``weight`` at stride (kh, kw), plus ``bias``.

Computed in float32 and returned in the input's dtype.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["npu_deformable_conv2d"]


def _four(name: str, values: Sequence[int]) -> Tuple[int, int, int, int]:
    values = [int(v) for v in values]
    if len(values) != 4:
        raise RuntimeError(f"npu_deformable_conv2d: {name} must have 4 elements, got {values}")
    return values[0], values[1], values[2], values[3]


def npu_deformable_conv2d(input: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor,
                          bias: Optional[torch.Tensor], kernel_size: Sequence[int], stride: Sequence[int],
                          padding: Sequence[int], dilation: Sequence[int] = (1, 1, 1, 1), groups: int = 1,
                          deformable_groups: int = 1, modulated: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    if not modulated:
        raise RuntimeError("npu_deformable_conv2d: only modulated=True (DeformableConv2D v2) is supported")
    if input.dim() != 4 or weight.dim() != 4 or offset.dim() != 4:
        raise RuntimeError("npu_deformable_conv2d: self, weight and offset must be 4D")
    n, c, h, w = input.shape
    out_ch, cg, kh, kw = weight.shape
    if sorted(int(k) for k in kernel_size) != sorted((kh, kw)):
        raise RuntimeError(f"npu_deformable_conv2d: kernel_size {list(kernel_size)} does not match weight "
                           f"{tuple(weight.shape)}")
    _, _, sh, sw = _four("stride", stride)
    _, _, dh, dw = _four("dilation", dilation)
    pt, pb, pl, pr = _four("padding", padding)
    g, dg = int(groups), int(deformable_groups)
    if c != cg * g or out_ch % g or c % dg:
        raise RuntimeError(f"npu_deformable_conv2d: channels {c} / weight {tuple(weight.shape)} / groups {g} / "
                           f"deformable_groups {dg} do not fit")
    ho = (h + pt + pb - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + pl + pr - (dw * (kw - 1) + 1)) // sw + 1
    k = kh * kw
    if tuple(offset.shape) != (n, 3 * dg * k, ho, wo):
        raise RuntimeError(f"npu_deformable_conv2d: offset {tuple(offset.shape)} must be {(n, 3 * dg * k, ho, wo)}")

    dtype = input.dtype
    dev = input.device
    off = offset.float().reshape(n, 3, dg, kh, kw, ho, wo).permute(1, 0, 2, 5, 3, 6, 4)  # (3, N, G, Ho, kh, Wo, kw)
    # undeformed sampling position of kernel point (ki, kj) of output (i, j), in pixels
    row = (torch.arange(ho, device=dev, dtype=torch.float32) * sh - pt)[:, None, None, None] \
        + (torch.arange(kh, device=dev, dtype=torch.float32) * dh)[None, :, None, None]        # (Ho, kh, 1, 1)
    col = (torch.arange(wo, device=dev, dtype=torch.float32) * sw - pl)[None, None, :, None] \
        + (torch.arange(kw, device=dev, dtype=torch.float32) * dw)[None, None, None, :]        # (1, 1, Wo, kw)
    y = row + off[1]
    x = col + off[0]
    # grid_sample, align_corners=False: pixel p sits at (2p + 1) / size - 1
    grid = torch.stack(((2.0 * x + 1.0) / w - 1.0, (2.0 * y + 1.0) / h - 1.0), dim=-1)
    grid = grid.reshape(n * dg, ho * kh, wo * kw, 2)
    samples = F.grid_sample(input.float().reshape(n * dg, c // dg, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)                       # (N*G, C/G, Ho*kh, Wo*kw)
    mask = off[2].reshape(n * dg, 1, ho * kh, wo * kw)
    offset_out = (samples * mask).reshape(n, c, ho * kh, wo * kw)
    out = F.conv2d(offset_out, weight.float(), None if bias is None else bias.float(), stride=(kh, kw), groups=g)
    return out.to(dtype), offset_out.to(dtype)
