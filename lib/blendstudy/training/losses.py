"""BlendMask's training losses, re-implemented after reading AdelaiDet's
``adet/modeling/fcos/fcos_outputs.py``, ``adet/modeling/blendmask/blender.py`` and
``adet/modeling/blendmask/basis_module.py`` (the targets: blendstudy.training.targets):

* FCOS: sigmoid focal loss (alpha 0.25, gamma 2) summed over all locations and classes / the
  number of positives; GIoU loss of the positives weighted by their centerness targets / the sum
  of those targets (``loss_denorm``); centerness BCE summed / the number of positives.
* BlendMask mask loss: the bases are ROIAligned (56 x 56, ROIAlignV2) in the GT box of each
  positive location, merged with the attention predicted at that location, and compared (BCE)
  with the GT mask cropped and resized to the box (ROIAlign of the binary mask, >= 0.5); per
  instance the mean over the 56 x 56 pixels, weighted by the centerness target, / loss_denorm.
* ProtoNet auxiliary semantic loss (BASIS_MODULE.LOSS_ON): cross-entropy of ``seg_head(p3)``
  against the thing-class label map (0 = background, class + 1) sampled at stride 8, x LOSS_WEIGHT.

One deliberate deviation, for speed only: the top layer (a 3x3 conv with bases * A * A outputs)
is evaluated at the positive locations only (a gather of their 3x3 neighbourhoods times the same
weights) instead of on every location; the result is identical for the locations the loss uses.
The inference modules have no training branches: this module composes the model's parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from blendstudy import ops
from blendstudy.model.blendmask import BlendMask
from blendstudy.model.fcos import compute_locations

from .samples import Sample
from .targets import assign_targets, sizes_of_interest


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Summed focal loss (RetinaNet / fvcore's sigmoid_focal_loss, reduction "sum")."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def ltrb_giou(pred: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """IoU (with AdelaiDet's +1 smoothing) and GIoU of boxes given as l/t/r/b distances from the
    same location (both (P, 4), any common unit)."""
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    t_area = (tl + tr) * (tt + tb)
    p_area = (pl + pr) * (pt + pb)
    w_i = torch.min(pl, tl) + torch.min(pr, tr)
    h_i = torch.min(pb, tb) + torch.min(pt, tt)
    g_w = torch.max(pl, tl) + torch.max(pr, tr)
    g_h = torch.max(pb, tb) + torch.max(pt, tt)
    enclose = g_w * g_h + 1e-7
    inter = w_i * h_i
    union = t_area + p_area - inter
    ious = (inter + 1.0) / (union + 1.0)
    gious = ious - (enclose - union) / enclose
    return ious, gious


def centerness_targets(reg: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of (P, 4) l/t/r/b targets."""
    lr = reg[:, [0, 2]]
    tb = reg[:, [1, 3]]
    c = (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
    return torch.sqrt(c.clamp(min=0))


@dataclass
class LossSettings:
    """The config values the losses use (loss_settings reads them from a config)."""

    num_classes: int
    strides: List[int]
    size_ranges: List[Tuple[float, float]]
    radius: float
    center_sample: bool
    alpha: float
    gamma: float
    sem_weight: float
    sem_stride: int
    mask_weight: float


def loss_settings(cfg: Any) -> LossSettings:
    """The LossSettings of config ``cfg`` (MODEL.FCOS, BASIS_MODULE and BLENDMASK values)."""
    f = cfg.MODEL.FCOS
    n_levels = len(f.IN_FEATURES)
    return LossSettings(num_classes=int(f.NUM_CLASSES), strides=[int(s) for s in f.FPN_STRIDES],
                        size_ranges=sizes_of_interest(f.SIZES_OF_INTEREST, n_levels),
                        radius=float(f.POS_RADIUS), center_sample=bool(f.CENTER_SAMPLE),
                        alpha=float(f.LOSS_ALPHA), gamma=float(f.LOSS_GAMMA),
                        sem_weight=float(cfg.MODEL.BASIS_MODULE.LOSS_WEIGHT),
                        sem_stride=int(cfg.MODEL.BASIS_MODULE.COMMON_STRIDE),
                        mask_weight=float(cfg.MODEL.BLENDMASK.INSTANCE_LOSS_WEIGHT))


@dataclass
class HeadOutputs:
    """The FCOS head's outputs of a batch, flattened image-major, then level-major, then cells.

    logits (N*L, C), reg (N*L, 4) relu'd l/t/r/b, ctr (N*L,) centerness logits; box_feats the
    per-level bbox-tower features (the top layer's input); shapes the per-level (h, w).
    """

    logits: torch.Tensor
    reg: torch.Tensor
    ctr: torch.Tensor
    box_feats: List[torch.Tensor]
    shapes: List[Tuple[int, int]]


def head_outputs(model: BlendMask, features: Dict[str, torch.Tensor], num_classes: int) -> HeadOutputs:
    """Run the FCOS towers and predictors of ``model`` on the FPN ``features``."""
    fcos = model.proposal_generator
    head = fcos.fcos_head
    logits, box_reg, ctrness, box_feats, shapes = [], [], [], [], []
    for level, name in enumerate(fcos.in_features):
        x = head.share_tower(features[name], level)
        cls_t = head.cls_tower(x, level)
        box_t = head.bbox_tower(x, level)
        reg = head.bbox_pred(box_t)
        if head.scales is not None:
            reg = head.scales[level](reg)
        n, _, h, w = reg.shape
        shapes.append((h, w))
        logits.append(head.cls_logits(cls_t).permute(0, 2, 3, 1).reshape(n, h * w, -1))
        box_reg.append(F.relu(reg).permute(0, 2, 3, 1).reshape(n, h * w, 4))
        ctrness.append(head.ctrness(box_t).permute(0, 2, 3, 1).reshape(n, h * w))
        box_feats.append(box_t)
    return HeadOutputs(logits=torch.cat(logits, dim=1).reshape(-1, num_classes),
                       reg=torch.cat(box_reg, dim=1).reshape(-1, 4),
                       ctr=torch.cat(ctrness, dim=1).reshape(-1), box_feats=box_feats, shapes=shapes)


def batch_targets(locations: Sequence[torch.Tensor], samples: Sequence[Sample], s: LossSettings
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """assign_targets of every sample, concatenated image-major: labels, l/t/r/b targets and the
    index of the assigned GT box among all the batch's boxes (-1 = background)."""
    labels, regs, gt_inds = [], [], []
    offset = 0
    for sample in samples:
        lab, reg, gi = assign_targets(locations, s.strides, s.size_ranges, sample.boxes, sample.classes,
                                      s.num_classes, s.radius, s.center_sample)
        labels.append(lab)
        regs.append(reg)
        gt_inds.append(torch.where(gi >= 0, gi + offset, gi))
        offset += len(sample.boxes)
    return torch.cat(labels), torch.cat(regs), torch.cat(gt_inds)


def fcos_losses(out: HeadOutputs, labels: torch.Tensor, reg_t: torch.Tensor, pos: torch.Tensor,
                s: LossSettings) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, float]:
    """The FCOS losses (classification, GIoU, centerness) of the positives ``pos``; also returns
    the positives' centerness targets and loss_denorm (their sum, at least 1e-6)."""
    num_pos = max(float(pos.numel()), 1.0)
    cls_target = torch.zeros_like(out.logits)
    cls_target[pos, labels[pos]] = 1.0
    losses: Dict[str, torch.Tensor] = {}
    losses["loss_fcos_cls"] = sigmoid_focal_loss(out.logits, cls_target, s.alpha, s.gamma) / num_pos
    ctr_targets = centerness_targets(reg_t[pos])
    loss_denorm = max(float(ctr_targets.sum()), 1e-6)
    if pos.numel() > 0:
        _, gious = ltrb_giou(out.reg[pos], reg_t[pos])
        losses["loss_fcos_loc"] = ((1 - gious) * ctr_targets).sum() / loss_denorm
        losses["loss_fcos_ctr"] = F.binary_cross_entropy_with_logits(
            out.ctr[pos], ctr_targets, reduction="sum") / num_pos
    else:
        losses["loss_fcos_loc"] = out.reg.sum() * 0
        losses["loss_fcos_ctr"] = out.ctr.sum() * 0
    return losses, ctr_targets, loss_denorm


def _positive_attentions(model: BlendMask, out: HeadOutputs, locations: Sequence[torch.Tensor],
                         pos: torch.Tensor) -> torch.Tensor:
    """The top layer's attentions at the positive locations only (ops.conv_at)."""
    n_loc = sum(len(x) for x in locations)
    level_of = torch.cat([torch.full((len(x),), i, dtype=torch.int64) for i, x in enumerate(locations)])
    cell_of = torch.cat([torch.arange(len(x)) for x in locations])
    within = pos % n_loc
    return ops.conv_at(model.top_layer, out.box_feats, level_of[within], cell_of[within], pos // n_loc)


def mask_loss(model: BlendMask, bases: torch.Tensor, attns: torch.Tensor, samples: Sequence[Sample],
              gi: torch.Tensor, ctr_targets: torch.Tensor, loss_denorm: float, weight: float) -> torch.Tensor:
    """BlendMask's mask loss: the bases ROIAligned in the GT box ``gi`` of each positive, merged
    with its attention, BCE against the GT mask target, weighted by centerness / loss_denorm."""
    blender = model.blender
    gt_boxes = torch.cat([smp.boxes for smp in samples])
    gt_img = torch.cat([torch.full((len(smp.boxes),), i, dtype=torch.float32)
                        for i, smp in enumerate(samples)])
    r = blender.resolution
    rois = torch.cat([gt_img[:, None], gt_boxes], dim=1)
    pooled = ops.roi_align(bases, rois, (r, r), blender.pooler_scale, blender.sampling_ratio,
                           blender.aligned)  # (G, B, R, R)
    mask_logits = blender.merge(pooled[gi], attns)
    mask_targets = torch.cat([smp.mask_targets for smp in samples])[gi]
    bce = F.binary_cross_entropy_with_logits(mask_logits, mask_targets, reduction="none")
    return weight * (bce.mean(dim=(1, 2)) * ctr_targets).sum() / loss_denorm


def semantic_loss(sem_logits: torch.Tensor, samples: Sequence[Sample], padded: Tuple[int, int],
                  s: LossSettings) -> torch.Tensor:
    """ProtoNet's auxiliary loss: cross-entropy against the samples' label maps, zero-padded to
    ``padded`` (H, W) and sampled every sem_stride pixels (nearest), x sem_weight."""
    ph, pw = padded
    sem = torch.zeros((len(samples), ph, pw), dtype=torch.int64)
    for i, smp in enumerate(samples):
        sem[i, :smp.sem.shape[0], :smp.sem.shape[1]] = smp.sem
    st = s.sem_stride
    sem = sem[:, ::st, ::st][:, :sem_logits.shape[2], :sem_logits.shape[3]]  # nearest, 1/stride
    return F.cross_entropy(sem_logits, sem) * s.sem_weight


def compute_losses(model: BlendMask, images: torch.Tensor, samples: Sequence[Sample],
                   s: LossSettings) -> Dict[str, torch.Tensor]:
    """All BlendMask training losses of one padded batch (model in train mode)."""
    features = model.extract_features(images)
    out = head_outputs(model, features, s.num_classes)
    locations = [compute_locations(h, w, st, images.device) for (h, w), st in zip(out.shapes, s.strides)]
    labels, reg_t, gt_t = batch_targets(locations, samples, s)
    pos = torch.nonzero(labels != s.num_classes).squeeze(1)
    losses, ctr_targets, loss_denorm = fcos_losses(out, labels, reg_t, pos, s)
    bases = model.compute_bases(features)
    if pos.numel() > 0:
        attns = _positive_attentions(model, out, locations, pos)
        losses["loss_mask"] = mask_loss(model, bases, attns, samples, gt_t[pos], ctr_targets, loss_denorm,
                                        s.mask_weight)
    else:
        losses["loss_mask"] = bases.sum() * 0 + model.top_layer.weight.sum() * 0
    seg_head = model.basis_module.seg_head
    if seg_head is not None and s.sem_weight > 0:
        sem_logits = seg_head(features[model.basis_module.in_features[0]])
        losses["loss_basis_sem"] = semantic_loss(sem_logits, samples, tuple(images.shape[-2:]), s)
    return losses
