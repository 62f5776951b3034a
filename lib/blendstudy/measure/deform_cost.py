"""What a deformable convolution costs next to the ordinary 3x3 convolution it replaces.

`fallback_cost` times the deformable conv (by default the plain-PyTorch fallback: one grid_sample
and one matmul) against nn.Conv2d of the same shape at ResNet-101's res3-res5 3x3 convolutions for
an 800 x 1333 image, with the study's synchronised clock; medians of repeated calls.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from blendstudy.measure.clock import timed_call
from blendstudy.ops import ceil_to_multiple
from blendstudy.ops.deform_conv import (
    deform_conv2d,
    deform_conv2d_npu,
    deform_conv2d_plain,
    deform_conv2d_torchvision,
    deform_kernel_info,
)

__all__ = ["DeformCost", "DeformShape", "fallback_cost", "r101_deform_shapes"]

_KERNELS: Dict[str, Callable[..., torch.Tensor]] = {
    "plain": deform_conv2d_plain, "torchvision": deform_conv2d_torchvision, "npu": deform_conv2d_npu}


@dataclass(frozen=True)
class DeformShape:
    """One 3x3 convolution of a bottleneck block: `channels` in and out, the input map
    `height` x `width`, `stride`; `blocks`: how many blocks of R_101_dcni3_5x (every third block of
    res3-res5) run a deformable conv of exactly this shape."""

    stage: str
    channels: int
    height: int
    width: int
    stride: int = 1
    blocks: int = 1

    @property
    def out_size(self):
        return (self.height - 1) // self.stride + 1, (self.width - 1) // self.stride + 1


@dataclass(frozen=True)
class DeformCost:
    """Median milliseconds of the deformable conv (`deform_ms`, offsets and mask given; DCNv2) and
    of nn.Conv2d of the same shape (`conv_ms`); ratio = deform_ms / conv_ms; `offset_ms`: the
    block's extra offset conv (channels -> 27); `impl`: the deformable kernel timed."""

    shape: DeformShape
    deform_ms: float
    conv_ms: float
    ratio: float
    impl: str
    offset_ms: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def r101_deform_shapes(height: int = 800, width: int = 1333, stride_in_1x1: bool = True,
                       size_divisibility: int = 32, interval: int = 3) -> List[DeformShape]:
    """The 3x3 conv shapes of ResNet-101's res3-res5 for a `height` x `width` image padded to
    `size_divisibility` (the FPN's 32): res2 runs at stride 4, res3/4/5 at 8/16/32 with bottleneck
    channels 128/256/512. With stride_in_1x1 (MSRA weights, the configs' default) the first block's
    stride sits in its 1x1 conv, so every 3x3 conv of a stage has one shape; otherwise the first
    block's 3x3 conv has stride 2 on the previous stage's resolution (listed separately)."""
    h, w = ceil_to_multiple(height, size_divisibility), ceil_to_multiple(width, size_divisibility)
    blocks = {"res3": 4, "res4": 23, "res5": 3}
    shapes = []
    for i, (stage, n) in enumerate(blocks.items()):
        stride = 8 * 2 ** i
        ch = 128 * 2 ** i
        oh, ow = -(-h // stride), -(-w // stride)
        deform = [b for b in range(n) if b % interval == 0]
        if stride_in_1x1:
            shapes.append(DeformShape(stage, ch, oh, ow, 1, len(deform)))
        else:
            shapes.append(DeformShape(stage, ch, 2 * oh, 2 * ow, 2, 1))
            if len(deform) > 1:
                shapes.append(DeformShape(stage, ch, oh, ow, 1, len(deform) - 1))
    return shapes


def _interleaved_medians(fns: Sequence[Callable[[Any], Any]], x: Any, device: torch.device, repeats: int,
                         warmup: int) -> List[float]:
    """Median ms of each of `fns` on `x`, the calls interleaved (a, b, c, a, b, c, ...) so that a
    change of machine load during the measurement hits all of them alike."""
    times: List[List[float]] = [[] for _ in fns]
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns:
                fn(x)
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                times[i].append(timed_call(fn, x, device))
    return [statistics.median(t) for t in times]


def fallback_cost(shapes: Optional[Sequence[DeformShape]] = None, device: Union[torch.device, str] = "cpu",
                  repeats: int = 5, warmup: int = 1, impl: Optional[str] = "plain",
                  dtype: torch.dtype = torch.float32, seed: int = 0) -> List[DeformCost]:
    """Median ms (calls interleaved) of a DCNv2 deformable conv (kernel `impl`: "plain", "torchvision", "npu", or None
    for deform_conv2d's own choice) and of an ordinary 3x3 nn.Conv2d (no bias, as in ResNet) at each
    shape (default: r101_deform_shapes() for 800 x 1333), batch 1, random offsets of about a pixel."""
    dev = torch.device(device)
    if shapes is None:
        shapes = r101_deform_shapes()
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    name = impl if impl is not None else deform_kernel_info(dev)["selected"]
    kernel = _KERNELS[name] if impl is not None else deform_conv2d
    gen = torch.Generator().manual_seed(seed)
    results = []
    for s in shapes:
        ho, wo = s.out_size
        x = torch.randn(1, s.channels, s.height, s.width, generator=gen).to(dev, dtype)
        conv = nn.Conv2d(s.channels, s.channels, 3, stride=s.stride, padding=1, bias=False).to(dev, dtype).eval()
        offset_conv = nn.Conv2d(s.channels, 27, 3, stride=s.stride, padding=1).to(dev, dtype).eval()
        offset = torch.randn(1, 18, ho, wo, generator=gen).to(dev, dtype)
        mask = torch.rand(1, 9, ho, wo, generator=gen).to(dev, dtype)
        weight = conv.weight.detach()

        def run_deform(inp: torch.Tensor, _o=offset, _m=mask, _w=weight, _s=s.stride) -> torch.Tensor:
            return kernel(inp, _o, _w, None, stride=_s, padding=1, dilation=1, mask=_m)

        def run_offset(inp: torch.Tensor, _c=offset_conv) -> torch.Tensor:
            out = _c(inp)
            return torch.cat((out[:, :18], out[:, 18:].sigmoid()), dim=1)

        def run_conv(inp: torch.Tensor, _c=conv) -> torch.Tensor:
            return F.conv2d(inp, _c.weight, None, _c.stride, _c.padding)

        deform_ms, conv_ms, offset_ms = _interleaved_medians([run_deform, run_conv, run_offset], x, dev, repeats,
                                                             warmup)
        results.append(DeformCost(s, deform_ms, conv_ms, deform_ms / max(conv_ms, 1e-9), name, offset_ms))
    return results
