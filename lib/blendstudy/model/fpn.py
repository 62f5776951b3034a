"""FPN over ResNet with FCOS's extra top levels (P6/P7 from P5)."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from blendstudy.model.layers import ConvNorm, make_norm
from blendstudy.model.resnet import STAGE_STRIDES, ResNet


class TopLevels(nn.Module):
    """P6 (and P7) by stride-2 3x3 convs on P5; P7 sees relu(P6). `num_levels` is 1 or 2."""

    def __init__(self, channels: int, num_levels: int):
        super().__init__()
        self.num_levels = num_levels
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        if num_levels == 2:
            self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, p5: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(p5)
        if self.num_levels == 1:
            return [p6]
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """bottom_up features `in_features` (e.g. res3..res5) -> p3..p5 (+ p6, p7).
    Returns an ordered {name: tensor} from high to low resolution."""

    def __init__(self, bottom_up: ResNet, in_features: Sequence[str], out_channels: int,
                 norm: str = "", top_levels: int = 2, fuse_type: str = "sum"):
        super().__init__()
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.fuse_type = fuse_type
        strides = [STAGE_STRIDES[f] for f in self.in_features]
        use_bias = norm == ""
        self._stages = []
        for f, s in zip(self.in_features, strides):
            stage = int(math.log2(s))
            lateral = ConvNorm(bottom_up.channels(f), out_channels, 1, bias=use_bias,
                               norm=make_norm(norm, out_channels))
            output = ConvNorm(out_channels, out_channels, 3, padding=1, bias=use_bias,
                              norm=make_norm(norm, out_channels))
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            self._stages.append(stage)
        self.top_block = TopLevels(out_channels, top_levels) if top_levels > 0 else None
        last = self._stages[-1]
        self.out_features = [f"p{s}" for s in self._stages] + [
            f"p{last + i + 1}" for i in range(top_levels)]
        self.strides = {name: 2 ** int(name[1:]) for name in self.out_features}
        self.size_divisibility = strides[-1]
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.bottom_up(x)
        results: List[torch.Tensor] = []
        prev = None
        for f, stage in zip(reversed(self.in_features), reversed(self._stages)):
            lateral = getattr(self, f"fpn_lateral{stage}")(feats[f])
            if prev is None:
                prev = lateral
            else:
                prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
                if self.fuse_type == "avg":
                    prev = prev / 2
            results.insert(0, getattr(self, f"fpn_output{stage}")(prev))
        if self.top_block is not None:
            results.extend(self.top_block(results[-1]))
        return dict(zip(self.out_features, results))
