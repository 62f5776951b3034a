"""ResNet bottom-up (detectron2's layout: stem, res2..res5; FrozenBN; stride_in_1x1)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from blendstudy.model.layers import ConvNorm, DeformConvNorm, make_norm

BLOCKS_PER_DEPTH = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
STAGE_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride, bias=False,
                                     norm=make_norm(norm, out_channels))
        self.conv1 = ConvNorm(in_channels, out_channels, 3, stride=stride, padding=1, bias=False,
                              norm=make_norm(norm, out_channels))
        self.conv2 = ConvNorm(out_channels, out_channels, 3, stride=1, padding=1, bias=False,
                              norm=make_norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 with the stride in the first 1x1 when stride_in_1x1 (MSRA weights)."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int,
                 num_groups: int, norm: str, stride_in_1x1: bool, dilation: int):
        super().__init__()
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride, bias=False,
                                     norm=make_norm(norm, out_channels))
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=s1, bias=False,
                              norm=make_norm(norm, bottleneck_channels))
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, stride=s3,
                              padding=dilation, dilation=dilation, groups=num_groups, bias=False,
                              norm=make_norm(norm, bottleneck_channels))
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, bias=False,
                              norm=make_norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class DeformBottleneckBlock(BottleneckBlock):
    """detectron2's DeformBottleneckBlock: the 3x3 conv2 is a (modulated) deformable conv whose
    offsets (and mask) come from `conv2_offset`, a plain 3x3 conv with bias, zero-initialised, to
    (2 or 3) * 9 * deform_num_groups channels. Checkpoint keys: `conv2_offset.weight/bias`,
    `conv2.weight`, `conv2.norm.*`. Modulated: offset = the first 18 * G channels, mask =
    sigmoid(the last 9 * G) (detectron2 chunks into three and concatenates the first two)."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int,
                 num_groups: int, norm: str, stride_in_1x1: bool, dilation: int,
                 deform_modulated: bool = False, deform_num_groups: int = 1):
        super().__init__(in_channels, out_channels, bottleneck_channels, stride, num_groups, norm,
                         stride_in_1x1, dilation)
        s3 = 1 if stride_in_1x1 else stride
        self.deform_modulated = deform_modulated
        self.conv2 = DeformConvNorm(bottleneck_channels, bottleneck_channels, 3, stride=s3, padding=dilation,
                                    dilation=dilation, groups=num_groups, bias=False,
                                    deformable_groups=deform_num_groups, modulated=deform_modulated,
                                    norm=make_norm(norm, bottleneck_channels))
        self.conv2_offset = ConvNorm(bottleneck_channels, self.conv2.offset_channels, 3, stride=s3,
                                     padding=dilation, dilation=dilation)
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        offset = self.conv2_offset(out)
        mask: Optional[torch.Tensor] = None
        if self.deform_modulated:
            split = offset.shape[1] * 2 // 3
            offset, mask = offset[:, :split], offset[:, split:].sigmoid()
        out = F.relu(self.conv2(out, offset, mask))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


def deform_blocks(num_blocks: int, deform_on: bool, interval: int) -> List[bool]:
    """Which blocks of a stage are deformable: AdelaiDet's resnet_interval (block i when
    i % DEFORM_INTERVAL == 0; interval 1 is detectron2's every block), none when the stage is off."""
    return [bool(deform_on) and i % interval == 0 for i in range(num_blocks)]


class Stem(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.conv1 = ConvNorm(in_channels, out_channels, 7, stride=2, padding=3, bias=False,
                              norm=make_norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """Returns {name: feature} for `out_features` among res2..res5."""

    def __init__(self, depth: int = 50, out_features: Sequence[str] = ("res3", "res4", "res5"),
                 norm: str = "FrozenBN", stem_out_channels: int = 64, res2_out_channels: int = 256,
                 num_groups: int = 1, width_per_group: int = 64, stride_in_1x1: bool = True,
                 res5_dilation: int = 1, deform_on_per_stage: Sequence[bool] = (False, False, False, False),
                 deform_modulated: bool = False, deform_num_groups: int = 1, deform_interval: int = 1):
        super().__init__()
        if depth not in BLOCKS_PER_DEPTH:
            raise ValueError(f"ResNet depth {depth} not supported (18, 34, 50, 101)")
        if res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation {res5_dilation} must be 1 or 2")
        if len(deform_on_per_stage) != 4 or deform_interval < 1 or deform_num_groups < 1:
            raise ValueError("deform_on_per_stage needs 4 flags (res2..res5); deform_interval and "
                             "deform_num_groups must be >= 1")
        self.out_features = list(out_features)
        self.stem = Stem(3, stem_out_channels, norm)
        self.stage_names: List[str] = []
        self._channels: Dict[str, int] = {}
        basic = depth in (18, 34)
        if basic and (res2_out_channels != 64 or res5_dilation != 1 or num_groups != 1):
            raise ValueError("ResNet-18/34 need RES2_OUT_CHANNELS 64, RES5_DILATION 1, NUM_GROUPS 1")
        if basic and any(deform_on_per_stage):
            raise ValueError("DEFORM_ON_PER_STAGE is unsupported for ResNet-18/34 (as in detectron2)")
        in_channels = stem_out_channels
        out_channels = res2_out_channels
        bottleneck = num_groups * width_per_group
        last = max(int(f[3:]) for f in self.out_features)
        for idx, blocks in enumerate(BLOCKS_PER_DEPTH[depth]):
            stage = idx + 2
            if stage > last:
                break
            dilation = res5_dilation if stage == 5 else 1
            first_stride = 1 if idx == 0 or (stage == 5 and dilation == 2) else 2
            layers = []
            deform = deform_blocks(blocks, deform_on_per_stage[idx], deform_interval)
            for b in range(blocks):
                stride = first_stride if b == 0 else 1
                if basic:
                    layers.append(BasicBlock(in_channels, out_channels, stride, norm))
                elif deform[b]:
                    layers.append(DeformBottleneckBlock(in_channels, out_channels, bottleneck, stride, num_groups,
                                                        norm, stride_in_1x1, dilation, deform_modulated,
                                                        deform_num_groups))
                else:
                    layers.append(BottleneckBlock(in_channels, out_channels, bottleneck, stride,
                                                  num_groups, norm, stride_in_1x1, dilation))
                in_channels = out_channels
            name = f"res{stage}"
            self.add_module(name, nn.Sequential(*layers))
            self.stage_names.append(name)
            self._channels[name] = out_channels
            out_channels *= 2
            bottleneck *= 2

    def channels(self, name: str) -> int:
        return self._channels[name]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs
