"""FCOS head (towers + predictions) and its inference decode, as AdelaiDet's FCOS."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from blendstudy import ops


class PerLevelNorm(nn.ModuleList):
    """One BatchNorm per FPN level (AdelaiDet's "BN"/"SyncBN" FCOS head norm): keys `i.<level>.*`."""

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:  # type: ignore[override]
        return self[level](x)


class Tower(nn.ModuleList):
    """conv [norm] relu, repeated; indices match AdelaiDet's nn.Sequential so keys load unchanged."""

    def __init__(self, num_convs: int, channels: int, norm: Optional[str], num_levels: int):
        layers: List[nn.Module] = []
        for _ in range(num_convs):
            layers.append(nn.Conv2d(channels, channels, 3, 1, 1, bias=True))
            if norm == "GN":
                layers.append(nn.GroupNorm(32, channels))
            elif norm in ("BN", "SyncBN"):
                layers.append(PerLevelNorm([nn.BatchNorm2d(channels) for _ in range(num_levels)]))
            layers.append(nn.ReLU())
        super().__init__(layers)

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, level) if isinstance(layer, PerLevelNorm) else layer(x)
        return x


class Scale(nn.Module):
    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@dataclass
class HeadOutputs:
    """Per-level raw predictions (lists over levels, each (N, ., H, W))."""

    logits: List[torch.Tensor]
    box_reg: List[torch.Tensor]      # ltrb distances in units of the level's stride, after relu
    ctrness: List[torch.Tensor]
    top_feats: List[torch.Tensor]    # attention maps from the top layer (N, bases*A*A, H, W)
    # the bbox towers' outputs (N, C, H, W), kept when the attention is computed later at the
    # detections only (BlendMask.lazy_attention); empty otherwise
    box_towers: List[torch.Tensor] = field(default_factory=list)


class FCOSHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, num_levels: int, num_cls_convs: int = 4,
                 num_box_convs: int = 4, num_share_convs: int = 0, norm: Optional[str] = "GN",
                 use_scale: bool = True, prior_prob: float = 0.01):
        super().__init__()
        norm = None if norm in (None, "", "none") else norm
        self.num_classes = num_classes
        self.cls_tower = Tower(num_cls_convs, in_channels, norm, num_levels)
        self.bbox_tower = Tower(num_box_convs, in_channels, norm, num_levels)
        self.share_tower = Tower(num_share_convs, in_channels, norm, num_levels)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, 1, 1)
        self.ctrness = nn.Conv2d(in_channels, 1, 3, 1, 1)
        self.scales = nn.ModuleList([Scale() for _ in range(num_levels)]) if use_scale else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[torch.Tensor], top_layer: Optional[nn.Module],
                keep_box_towers: bool = False) -> HeadOutputs:
        out = HeadOutputs([], [], [], [])
        for level, feature in enumerate(features):
            feature = self.share_tower(feature, level)
            cls_t = self.cls_tower(feature, level)
            box_t = self.bbox_tower(feature, level)
            out.logits.append(self.cls_logits(cls_t))
            out.ctrness.append(self.ctrness(box_t))
            reg = self.bbox_pred(box_t)
            if self.scales is not None:
                reg = self.scales[level](reg)
            out.box_reg.append(F.relu(reg))
            if top_layer is not None:
                out.top_feats.append(top_layer(box_t))
            if keep_box_towers:
                out.box_towers.append(box_t)
        return out


def compute_locations(h: int, w: int, stride: int, device: torch.device) -> torch.Tensor:
    """(h*w, 2) x,y centres of a level's cells in input pixels: stride * index + stride // 2."""
    xs = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
    ys = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1) + stride // 2


@dataclass
class Proposals:
    """FCOS detections of one image in network-input pixels (before rescaling to the original)."""

    boxes: torch.Tensor        # (K, 4) xyxy, unclipped
    scores: torch.Tensor       # (K,) sqrt(cls * ctrness)
    classes: torch.Tensor      # (K,) int64
    top_feats: torch.Tensor    # (K, bases*A*A)
    levels: torch.Tensor       # (K,) int64 FPN level index
    image_size: Tuple[int, int]  # resized (unpadded) input size (h, w)
    valid: Optional[torch.Tensor] = None  # (K,) bool; set by the fixed-shape decode only
    cells: Optional[torch.Tensor] = None  # (K,) int64 location index within its level (y * W + x)
    converged: Optional[torch.Tensor] = None  # 0-dim bool; the fixed-shape decode's exactness flag

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, idx: torch.Tensor) -> Proposals:
        return Proposals(self.boxes[idx], self.scores[idx], self.classes[idx], self.top_feats[idx],
                         self.levels[idx], self.image_size,
                         None if self.valid is None else self.valid[idx],
                         None if self.cells is None else self.cells[idx], self.converged)


@dataclass
class DecodeSettings:
    strides: Sequence[int]
    score_thresh: float = 0.05
    pre_nms_topk: int = 1000
    post_nms_topk: int = 100
    nms_thresh: float = 0.6
    thresh_with_ctr: bool = False


def _flatten_level(logits, reg, ctr, top, stride):
    n, c, h, w = logits.shape
    cls = logits.permute(0, 2, 3, 1).reshape(n, -1, c).sigmoid()
    box = reg.permute(0, 2, 3, 1).reshape(n, -1, 4) * stride
    ctn = ctr.permute(0, 2, 3, 1).reshape(n, -1).sigmoid()
    tf = top.permute(0, 2, 3, 1).reshape(n, h * w, -1) if top is not None else None
    return cls, box, ctn, tf, (h, w)


def decode(head: HeadOutputs, image_sizes: Sequence[Tuple[int, int]], s: DecodeSettings) -> List[Proposals]:
    """AdelaiDet's FCOSOutputs.predict_proposals: per level threshold + pre-NMS top-k, then per image
    class-aware NMS and the post-NMS top-k where every score tied with the k-th is kept.
    Returns one Proposals per image, ordered by decreasing score."""
    n_img = head.logits[0].shape[0]
    per_image: List[List[Proposals]] = [[] for _ in range(n_img)]
    for level, stride in enumerate(s.strides):
        top = head.top_feats[level] if head.top_feats else None
        cls, box, ctn, tf, (h, w) = _flatten_level(head.logits[level], head.box_reg[level],
                                                   head.ctrness[level], top, stride)
        locations = compute_locations(h, w, stride, cls.device)
        if s.thresh_with_ctr:
            cls = cls * ctn[:, :, None]
        candidates = cls > s.score_thresh
        top_n = candidates.reshape(n_img, -1).sum(1).clamp(max=s.pre_nms_topk)
        if not s.thresh_with_ctr:
            cls = cls * ctn[:, :, None]
        for i in range(n_img):
            scores = cls[i][candidates[i]]
            nz = candidates[i].nonzero()
            loc_idx, classes = nz[:, 0], nz[:, 1]
            k = int(top_n[i])
            if scores.shape[0] > k:
                scores, pick = scores.topk(k, sorted=False)
                loc_idx, classes = loc_idx[pick], classes[pick]
            reg = box[i][loc_idx]
            loc = locations[loc_idx]
            boxes = torch.stack([loc[:, 0] - reg[:, 0], loc[:, 1] - reg[:, 1],
                                 loc[:, 0] + reg[:, 2], loc[:, 1] + reg[:, 3]], dim=1)
            feats = tf[i][loc_idx] if tf is not None else boxes.new_zeros((boxes.shape[0], 0))
            per_image[i].append(Proposals(boxes, torch.sqrt(scores), classes, feats,
                                          torch.full_like(classes, level), tuple(image_sizes[i]),
                                          cells=loc_idx))
    return [_select_over_levels(levels, s) for levels in per_image]


def _cat(props: List[Proposals]) -> Proposals:
    return Proposals(torch.cat([p.boxes for p in props]), torch.cat([p.scores for p in props]),
                     torch.cat([p.classes for p in props]), torch.cat([p.top_feats for p in props]),
                     torch.cat([p.levels for p in props]), props[0].image_size,
                     cells=torch.cat([p.cells for p in props]))


def _select_over_levels(levels: List[Proposals], s: DecodeSettings) -> Proposals:
    props = _cat(levels)
    if s.nms_thresh > 0:
        # only the post-NMS top-k (with ties) survive below, so the NMS may stop once it is settled
        props = props.select(ops.batched_nms(props.boxes, props.scores, props.classes, s.nms_thresh,
                                             max_keep=max(s.post_nms_topk, 0)))
    n = len(props)
    if n > s.post_nms_topk > 0:
        thresh = ops.kth_largest_threshold(props.scores, s.post_nms_topk)
        keep = torch.nonzero(props.scores >= thresh.item()).squeeze(1)
        props = props.select(keep)
    return props


class FCOS(nn.Module):
    """Holds the head under AdelaiDet's name (`proposal_generator.fcos_head.*`) and the decode."""

    def __init__(self, head: FCOSHead, in_features: Sequence[str], settings: DecodeSettings):
        super().__init__()
        self.fcos_head = head
        self.in_features = list(in_features)
        self.settings = settings

    def forward(self, features, top_layer: Optional[nn.Module], keep_box_towers: bool = False) -> HeadOutputs:
        return self.fcos_head([features[f] for f in self.in_features], top_layer, keep_box_towers)

    def decode(self, head: HeadOutputs, image_sizes: Sequence[Tuple[int, int]]) -> List[Proposals]:
        return decode(head, image_sizes, self.settings)
