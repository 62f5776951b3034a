"""ProtoNet basis module: global bases at stride 4 from P3..P5 (AdelaiDet's ProtoNet)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from blendstudy.model.layers import make_norm


def conv_norm_relu(in_ch: int, out_ch: int, norm: Optional[str]) -> nn.Module:
    """AdelaiDet's conv_with_kaiming_uniform(norm, activation=True) block. Note the conv has no
    bias whenever a norm *string* is given, even "" (which adds no norm layer) — as upstream."""
    conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=norm is None)
    layers = [conv]
    norm_layer = make_norm(norm, out_ch) if norm else None
    if norm_layer is not None:
        layers.append(norm_layer)
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ProtoNet(nn.Module):
    def __init__(self, in_channels: int, in_features: Sequence[str], num_bases: int = 4,
                 convs_dim: int = 128, num_convs: int = 3, norm: Optional[str] = "SyncBN",
                 semantic_classes: Optional[int] = 80):
        """semantic_classes: classes of the auxiliary semantic head that exists in checkpoints
        trained with BASIS_MODULE.LOSS_ON (unused at inference, kept so weights load strictly);
        None when the checkpoint has no such head."""
        super().__init__()
        self.in_features = list(in_features)
        self.refine = nn.ModuleList([conv_norm_relu(in_channels, convs_dim, norm) for _ in in_features])
        tower = [conv_norm_relu(convs_dim, convs_dim, norm) for _ in range(num_convs)]
        tower.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        tower.append(conv_norm_relu(convs_dim, convs_dim, norm))
        tower.append(nn.Conv2d(convs_dim, num_bases, 1))
        self.tower = nn.Sequential(*tower)
        self.seg_head = None
        if semantic_classes is not None:
            self.seg_head = nn.Sequential(
                nn.Conv2d(in_channels, convs_dim, 3, 1, 1, bias=False), nn.BatchNorm2d(convs_dim),
                nn.ReLU(), nn.Conv2d(convs_dim, convs_dim, 3, 1, 1, bias=False),
                nn.BatchNorm2d(convs_dim), nn.ReLU(), nn.Conv2d(convs_dim, semantic_classes + 1, 1))

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Returns the bases (N, num_bases, H/4, W/4) of the padded input."""
        x = None
        for refine, name in zip(self.refine, self.in_features):
            y = refine(features[name])
            if x is None:
                x = y
            else:
                x = x + F.interpolate(y, x.shape[2:], mode="bilinear", align_corners=False)
        return self.tower(x)
