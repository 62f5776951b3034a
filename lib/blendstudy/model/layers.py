"""Small building blocks whose parameter names match detectron2/AdelaiDet checkpoints."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from blendstudy.ops.deform_conv import deform_conv2d


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (detectron2's FrozenBN): buffers
    weight, bias, running_mean, running_var; eps 1e-5."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)

    def scale_and_shift(self):
        """(scale, shift) such that forward(x) == x * scale + shift per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale


def make_norm(kind: Optional[str], channels: int) -> Optional[nn.Module]:
    """detectron2's get_norm for the kinds inference needs. BN and SyncBN act as plain BatchNorm
    in eval mode (running statistics), and keep num_batches_tracked for strict loading."""
    if kind is None or kind in ("", "none"):
        return None
    if kind == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if kind in ("BN", "SyncBN", "NaiveSyncBN"):
        return nn.BatchNorm2d(channels)
    if kind == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unsupported norm {kind!r}")


class ConvNorm(nn.Conv2d):
    """detectron2's Conv2d wrapper: a conv with an optional `norm` submodule and activation, so
    checkpoint keys read `conv1.weight`, `conv1.norm.weight`, ..."""

    def __init__(self, *args, norm: Optional[nn.Module] = None, activation: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation:
            x = F.relu(x)
        return x


class DeformConvNorm(ConvNorm):
    """detectron2's DeformConv / ModulatedDeformConv layer: the deformable convolution's `weight`
    (and `bias`, None in ResNet), then the optional `norm` and activation. forward(x, offset, mask)
    takes the offsets (and, modulated, the sigmoid-ed mask) computed by the block's `conv2_offset`.
    A ConvNorm subclass, so fold_frozen_bn folds its norm into weight and bias like any other.
    The kernel is blendstudy.ops.deform_conv.deform_conv2d's choice (deform_kernel_info)."""

    def __init__(self, *args, deformable_groups: int = 1, modulated: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("DeformConvNorm supports integer zero padding only")
        self.deformable_groups = deformable_groups
        self.modulated = modulated

    @property
    def offset_channels(self) -> int:
        """Channels of the offset conv: (2 or 3) * kh * kw * deformable groups (18 / 27 for 3x3)."""
        kh, kw = self.kernel_size
        return (3 if self.modulated else 2) * kh * kw * self.deformable_groups

    def forward(self, x: torch.Tensor, offset: torch.Tensor,  # type: ignore[override]
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.modulated and mask is None:
            raise ValueError("modulated deformable conv needs a mask")
        x = deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, mask=mask if self.modulated else None)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation:
            x = F.relu(x)
        return x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, deformable_groups={self.deformable_groups}, modulated={self.modulated}"
