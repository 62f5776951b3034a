"""Train the native BlendMask from scratch on the synthetic shapes dataset (the embedded default).

Training lives here, not in the model: the inference modules have no training branches, so this
module composes the model's parts (backbone + FPN, the FCOS towers, the top layer, ProtoNet and
the blender's ROIAlign / merge) and adds AdelaiDet's losses, re-implemented after reading
``adet/modeling/fcos/fcos_outputs.py``, ``adet/modeling/blendmask/blender.py`` and
``adet/modeling/blendmask/basis_module.py``:

* FCOS target assignment: every location of level l is a candidate for a GT box when it lies in
  the box's *center region* (box centre +- POS_RADIUS * stride, clipped to the box) and the
  largest of its l/t/r/b distances lies in the level's size range (SIZES_OF_INTEREST, from -1 to
  infinity); among several candidate boxes the smallest (box area) wins. Regression targets are
  l/t/r/b in units of the level's stride.
* Losses: sigmoid focal loss (alpha 0.25, gamma 2) summed over all locations and classes / the
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

CLI (``make tiny-model``)::

    python -m blendstudy.train --recipe tiny --out lib/blendstudy/weights/tiny_synthetic.pth \
        [--minutes 55] [--device auto] [--resume] [--iterations N] [--threads 1]

Data are generated deterministically into ``artifacts/_data/`` (re-generated when missing), the
model is trained for the recipe's fixed number of iterations (or until the ``--minutes`` wall-clock
cap, whichever comes first; the cosine decay follows whichever fraction is larger, so a run slowed
by a loaded CPU still ends at the low learning rate — the JSON says which limit ended it), saved
as ``{"model": state_dict}`` and evaluated with the real inference path
(``blendstudy.pipeline.Pipeline``) on a held-out validation split with pycocotools (bbox and segm
AP); the metrics are written next to the checkpoint as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from blendstudy import ops
from blendstudy.coco.convert import detections_to_coco
from blendstudy.coco.evaluate import STAT_NAMES, evaluate_coco
from blendstudy.coco.run import filter_detections
from blendstudy.config import load_config
from blendstudy.data.coco import CocoDataset
from blendstudy.data.images import read_image
from blendstudy.data.synthetic import synthetic_split
from blendstudy.model import build_model
from blendstudy.model.blendmask import BlendMask
from blendstudy.model.fcos import compute_locations
from blendstudy.pipeline import Pipeline, resized_shape

INF = 1e8


# ------------------------------------------------------------------------------------------------
# recipes


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a training run (besides the code and the library versions).

    Attributes:
        config: shipped config name (blendstudy.config.load_config).
        seed: torch / numpy seed of initialization, sampling and augmentation.
        train_images, train_seed: size and generator seed of the synthetic train split.
        val_images, val_seed: size and seed of the held-out validation split (another seed, so
            no image is shared with training).
        iterations: optimizer steps (fixed: the run is reproducible, not time-dependent).
        batch_size: images per step.
        lr, weight_decay: AdamW learning rate (1/step) and decoupled weight decay.
        warmup: linear warm-up steps (from lr * 0.001), then cosine decay to lr * final_lr_frac.
        clip_norm: global gradient-norm clip (0 = off).
        checkpoint_period: steps between resumable checkpoints.
        minutes: default wall-clock cap of the training loop, minutes.
    """

    config: str
    seed: int
    train_images: int
    train_seed: int
    val_images: int
    val_seed: int
    iterations: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int
    final_lr_frac: float
    clip_norm: float
    checkpoint_period: int
    minutes: float


RECIPES: Dict[str, Recipe] = {
    "tiny": Recipe(config="BlendMask/Tiny_synthetic", seed=0, train_images=2000, train_seed=0,
                   val_images=200, val_seed=1, iterations=1800, batch_size=4, lr=2e-3,
                   weight_decay=1e-4, warmup=150, final_lr_frac=0.02, clip_norm=10.0,
                   checkpoint_period=100, minutes=55.0),
}


# ------------------------------------------------------------------------------------------------
# data


@dataclass
class Sample:
    """One augmented training image.

    image: (3, h, w) float32 BGR, resized (not normalized, not padded).
    boxes: (G, 4) float32 xyxy GT boxes in resized-image pixels.
    classes: (G,) int64 contiguous class ids.
    mask_targets: (G, R, R) float32 {0, 1} GT masks cropped to their boxes, resized to R x R.
    sem: (h, w) int64 thing label map of the resized image (0 = background, class + 1).
    """

    image: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor
    mask_targets: torch.Tensor
    sem: torch.Tensor


def ensure_synthetic(root: Path, split: str, seed: int, num_images: int) -> CocoDataset:
    """The synthetic split (CocoDataset) of the tiny model, generated on first use
    (blendstudy.data.synthetic.synthetic_split names its folder)."""
    ann, image_dir = synthetic_split(root, split, num_images, seed=seed, show_progress=True)
    return CocoDataset(ann, image_dir)


def _ann_mask(coco, ann: Dict[str, Any]) -> np.ndarray:
    return coco.annToMask(ann).astype(bool)


class TrainData:
    """Reads a COCO split and produces augmented samples: random horizontal flip, resize of the
    shortest edge to one of ``min_sizes`` (max ``max_size``), PIL bilinear as at inference."""

    def __init__(self, dataset, min_sizes: Sequence[int], max_size: int, resolution: int,
                 flip: bool = True):
        self.ds = dataset
        self.ids = [i for i in dataset.image_ids if any(not a.get("iscrowd", 0)
                                                        for a in dataset.annotations(i))]
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.resolution = int(resolution)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        image_id = self.ids[index]
        img = read_image(self.ds.image_path(image_id), "BGR")
        anns = [a for a in self.ds.annotations(image_id) if not a.get("iscrowd", 0)]
        h, w = img.shape[:2]
        masks = np.stack([_ann_mask(self.ds.coco, a) for a in anns])  # (G, h, w)
        classes = [self.ds.category_id_to_contiguous[int(a["category_id"])] for a in anns]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=np.float32)
        if self.flip and rng.random() < 0.5:
            img = img[:, ::-1]
            masks = masks[:, :, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        size = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        nh, nw = resized_shape(h, w, size, self.max_size)
        img_r = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), Image.BILINEAR))
        sem = np.zeros((h, w), dtype=np.uint8)
        for m, c in zip(masks, classes):
            sem[m] = c + 1
        sem_r = np.asarray(Image.fromarray(sem).resize((nw, nh), Image.NEAREST))
        # mask targets: crop_and_resize of the full-resolution masks in original-pixel boxes
        boxes_t = torch.from_numpy(boxes)
        mask_t = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None]
        rois = torch.cat([torch.arange(len(anns), dtype=torch.float32)[:, None], boxes_t], dim=1)
        r = self.resolution
        targets = (ops.roi_align(mask_t, rois, (r, r), 1.0, 0, True)[:, 0] >= 0.5).float()
        scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
        return Sample(image=torch.from_numpy(np.ascontiguousarray(img_r.transpose(2, 0, 1))).float(),
                      boxes=boxes_t * scale, classes=torch.tensor(classes, dtype=torch.int64),
                      mask_targets=targets, sem=torch.from_numpy(sem_r.astype(np.int64)))


def batch_indices(n: int, batch_size: int, iteration: int, seed: int) -> List[int]:
    """Indices of step ``iteration``: consecutive slices of per-epoch permutations, a pure
    function of (n, batch, iteration, seed) so a resumed run sees the same batches."""
    out = []
    for k in range(iteration * batch_size, (iteration + 1) * batch_size):
        epoch, pos = divmod(k, n)
        perm = np.random.default_rng([seed, 7919, epoch]).permutation(n)
        out.append(int(perm[pos]))
    return out


def collate(samples: Sequence[Sample], model: BlendMask) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Normalize and zero-pad the images (bottom/right) to the size divisibility: (N, 3, H, W)."""
    m = model.size_divisibility
    hs = [s.image.shape[1] for s in samples]
    ws = [s.image.shape[2] for s in samples]
    ph, pw = ops.ceil_to_multiple(max(hs), m), ops.ceil_to_multiple(max(ws), m)
    mean = model.pixel_mean.cpu()
    std = model.pixel_std.cpu()
    batch = torch.zeros((len(samples), 3, ph, pw))
    for i, s in enumerate(samples):
        batch[i, :, :hs[i], :ws[i]] = (s.image - mean) / std
    return batch, list(zip(hs, ws))


# ------------------------------------------------------------------------------------------------
# targets and losses


def sizes_of_interest(soi: Sequence[float], num_levels: int) -> List[Tuple[float, float]]:
    """AdelaiDet's per-level (min, max) of the largest regression distance: -1, soi..., INF."""
    bounds = [-1.0] + [float(s) for s in soi] + [INF]
    if len(bounds) - 1 != num_levels:
        raise ValueError(f"SIZES_OF_INTEREST {list(soi)} needs {num_levels - 1} values for {num_levels} levels")
    return [(bounds[i], bounds[i + 1]) for i in range(num_levels)]


def assign_targets(locations: Sequence[torch.Tensor], strides: Sequence[int],
                   size_ranges: Sequence[Tuple[float, float]], boxes: torch.Tensor,
                   classes: torch.Tensor, num_classes: int, radius: float = 1.5,
                   center_sample: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FCOS targets of one image over all levels (level-major order of ``locations``).

    Args:
        locations: per level (n_l, 2) x, y of the cells in input pixels (compute_locations).
        strides: per level stride, pixels.
        size_ranges: per level (min, max) of max(l, t, r, b), pixels.
        boxes: (G, 4) xyxy GT boxes, input pixels; classes: (G,) contiguous ids.
    Returns:
        labels (L,) int64 (num_classes = background), reg_targets (L, 4) l/t/r/b in units of the
        location's stride, gt_inds (L,) int64 index of the assigned box (-1 = background).
    """
    locs = torch.cat(list(locations), dim=0)
    n_per = [len(x) for x in locations]
    n = locs.shape[0]
    stride_per = torch.cat([torch.full((k,), float(s)) for k, s in zip(n_per, strides)]).to(locs)
    if boxes.numel() == 0:
        return (torch.full((n,), num_classes, dtype=torch.int64), locs.new_zeros((n, 4)),
                torch.full((n,), -1, dtype=torch.int64))
    xs, ys = locs[:, 0:1], locs[:, 1:2]
    ltrb = torch.stack([xs - boxes[None, :, 0], ys - boxes[None, :, 1],
                        boxes[None, :, 2] - xs, boxes[None, :, 3] - ys], dim=2)  # (L, G, 4)
    if center_sample:
        cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
        cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
        r = stride_per[:, None] * radius
        x0 = torch.maximum(cx[None] - r, boxes[None, :, 0])
        y0 = torch.maximum(cy[None] - r, boxes[None, :, 1])
        x1 = torch.minimum(cx[None] + r, boxes[None, :, 2])
        y1 = torch.minimum(cy[None] + r, boxes[None, :, 3])
        inside = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2).min(dim=2).values > 0
    else:
        inside = ltrb.min(dim=2).values > 0
    lo = torch.cat([torch.full((k,), float(a)) for k, (a, _) in zip(n_per, size_ranges)]).to(locs)
    hi = torch.cat([torch.full((k,), float(b)) for k, (_, b) in zip(n_per, size_ranges)]).to(locs)
    max_reg = ltrb.max(dim=2).values
    cared = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].repeat(n, 1)
    area[~inside] = INF
    area[~cared] = INF
    min_area, gt_inds = area.min(dim=1)
    labels = classes[gt_inds].clone()
    bg = min_area == INF
    labels[bg] = num_classes
    reg = ltrb[torch.arange(n), gt_inds] / stride_per[:, None]
    gt_inds = torch.where(bg, torch.full_like(gt_inds, -1), gt_inds)
    return labels, reg, gt_inds


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
    f = cfg.MODEL.FCOS
    n_levels = len(f.IN_FEATURES)
    return LossSettings(num_classes=int(f.NUM_CLASSES), strides=[int(s) for s in f.FPN_STRIDES],
                        size_ranges=sizes_of_interest(f.SIZES_OF_INTEREST, n_levels),
                        radius=float(f.POS_RADIUS), center_sample=bool(f.CENTER_SAMPLE),
                        alpha=float(f.LOSS_ALPHA), gamma=float(f.LOSS_GAMMA),
                        sem_weight=float(cfg.MODEL.BASIS_MODULE.LOSS_WEIGHT),
                        sem_stride=int(cfg.MODEL.BASIS_MODULE.COMMON_STRIDE),
                        mask_weight=float(cfg.MODEL.BLENDMASK.INSTANCE_LOSS_WEIGHT))


def compute_losses(model: BlendMask, images: torch.Tensor, samples: Sequence[Sample],
                   s: LossSettings) -> Dict[str, torch.Tensor]:
    """All BlendMask training losses of one padded batch (model in train mode)."""
    features = model.extract_features(images)
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
    n_img = images.shape[0]
    logits_all = torch.cat(logits, dim=1).reshape(-1, s.num_classes)  # image-major, then levels
    reg_all = torch.cat(box_reg, dim=1).reshape(-1, 4)
    ctr_all = torch.cat(ctrness, dim=1).reshape(-1)
    locations = [compute_locations(h, w, st, images.device) for (h, w), st in zip(shapes, s.strides)]
    n_loc = sum(len(x) for x in locations)
    level_of = torch.cat([torch.full((len(x),), i, dtype=torch.int64) for i, x in enumerate(locations)])
    cell_of = torch.cat([torch.arange(len(x)) for x in locations])

    labels, regs, gt_inds = [], [], []
    offset = 0
    for sample in samples:
        lab, reg, gi = assign_targets(locations, s.strides, s.size_ranges, sample.boxes, sample.classes,
                                      s.num_classes, s.radius, s.center_sample)
        labels.append(lab)
        regs.append(reg)
        gt_inds.append(torch.where(gi >= 0, gi + offset, gi))
        offset += len(sample.boxes)
    labels_t = torch.cat(labels)
    reg_t = torch.cat(regs)
    gt_t = torch.cat(gt_inds)
    pos = torch.nonzero(labels_t != s.num_classes).squeeze(1)
    num_pos = max(float(pos.numel()), 1.0)

    cls_target = torch.zeros_like(logits_all)
    cls_target[pos, labels_t[pos]] = 1.0
    losses: Dict[str, torch.Tensor] = {}
    losses["loss_fcos_cls"] = sigmoid_focal_loss(logits_all, cls_target, s.alpha, s.gamma) / num_pos
    ctr_targets = centerness_targets(reg_t[pos])
    loss_denorm = max(float(ctr_targets.sum()), 1e-6)
    if pos.numel() > 0:
        _, gious = ltrb_giou(reg_all[pos], reg_t[pos])
        losses["loss_fcos_loc"] = ((1 - gious) * ctr_targets).sum() / loss_denorm
        losses["loss_fcos_ctr"] = F.binary_cross_entropy_with_logits(
            ctr_all[pos], ctr_targets, reduction="sum") / num_pos
    else:
        losses["loss_fcos_loc"] = reg_all.sum() * 0
        losses["loss_fcos_ctr"] = ctr_all.sum() * 0

    bases = model.compute_bases(features)
    blender = model.blender
    if pos.numel() > 0:
        # attentions of the positive locations only
        img_of = pos // n_loc
        within = pos % n_loc
        lev = level_of[within]
        cell = cell_of[within]
        attns = ops.conv_at(model.top_layer, box_feats, lev, cell, img_of)
        gt_boxes = torch.cat([smp.boxes for smp in samples])
        gt_img = torch.cat([torch.full((len(smp.boxes),), i, dtype=torch.float32)
                            for i, smp in enumerate(samples)])
        r = blender.resolution
        rois = torch.cat([gt_img[:, None], gt_boxes], dim=1)
        pooled = ops.roi_align(bases, rois, (r, r), blender.pooler_scale, blender.sampling_ratio,
                               blender.aligned)  # (G, B, R, R)
        gi = gt_t[pos]
        mask_logits = blender.merge(pooled[gi], attns)
        mask_targets = torch.cat([smp.mask_targets for smp in samples])[gi]
        bce = F.binary_cross_entropy_with_logits(mask_logits, mask_targets, reduction="none")
        losses["loss_mask"] = s.mask_weight * (bce.mean(dim=(1, 2)) * ctr_targets).sum() / loss_denorm
    else:
        losses["loss_mask"] = bases.sum() * 0 + model.top_layer.weight.sum() * 0

    seg_head = model.basis_module.seg_head
    if seg_head is not None and s.sem_weight > 0:
        sem_logits = seg_head(features[model.basis_module.in_features[0]])
        ph, pw = images.shape[-2:]
        sem = torch.zeros((n_img, ph, pw), dtype=torch.int64)
        for i, smp in enumerate(samples):
            sem[i, :smp.sem.shape[0], :smp.sem.shape[1]] = smp.sem
        st = s.sem_stride
        sem = sem[:, ::st, ::st][:, :sem_logits.shape[2], :sem_logits.shape[3]]  # nearest, 1/stride
        losses["loss_basis_sem"] = F.cross_entropy(sem_logits, sem) * s.sem_weight
    return losses


# ------------------------------------------------------------------------------------------------
# evaluation


def evaluate(model: BlendMask, cfg: Any, dataset: CocoDataset, max_dets: int = 100,
             show_progress: bool = True) -> Dict[str, Dict[str, float]]:
    """COCO bbox and segm AP (percent) of ``model`` on ``dataset`` through the real inference
    path (Pipeline at the config's test size and score threshold), at most ``max_dets`` per image,
    scored by the study's one COCO evaluation (blendstudy.coco.evaluate)."""
    model.eval()
    pipe = Pipeline.from_config(cfg, model)
    results: List[Dict[str, Any]] = []
    for image_id in tqdm(dataset.image_ids, desc="eval", unit="img", disable=not show_progress):
        det = filter_detections(pipe(read_image(dataset.image_path(image_id), "BGR")), None, max_dets)
        results.extend(detections_to_coco(det, image_id, dataset.contiguous_to_category_id))
    metrics = evaluate_coco(dataset.coco, results, ("bbox", "segm"), max_dets=max_dets,
                            image_ids=dataset.image_ids)
    return {t: {k: round(float(getattr(m, k)), 3) for k in STAT_NAMES[:6]} for t, m in metrics.items()}


# ------------------------------------------------------------------------------------------------
# training loop


def lr_at(it: int, r: Recipe, time_fraction: float = 0.0) -> float:
    """Learning rate (1/step) of step ``it``: linear warm-up from lr/1000 over ``r.warmup`` steps,
    then cosine decay to lr * final_lr_frac. Progress is the larger of the step fraction and
    ``time_fraction`` (elapsed / wall-clock cap): on an unloaded machine the schedule depends on
    the step only (reproducible); when a loaded CPU would hit the cap first, the decay still
    completes before the cap instead of stopping at a high learning rate."""
    if it < r.warmup:
        a = it / max(r.warmup, 1)
        return r.lr * (0.001 * (1 - a) + a)
    progress = max(it / max(r.iterations, 1), min(max(time_fraction, 0.0), 1.0))
    t = (progress * r.iterations - r.warmup) / max(r.iterations - r.warmup, 1)
    t = min(max(t, 0.0), 1.0)
    return r.lr * (r.final_lr_frac + (1 - r.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model: torch.nn.Module, r: Recipe) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, betas=(0.9, 0.999))


def plain_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of the model's state dict (fp32 floats)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(recipe: Recipe, out: Path, data_root: Path, work_dir: Path, minutes: Optional[float] = None,
          device: str = "auto", resume: bool = False, iterations: Optional[int] = None,
          threads: int = 1, evaluate_after: bool = True, log_every: int = 20) -> Dict[str, Any]:
    """Train ``recipe``, save ``out`` ({"model": state_dict}) and ``out`` .json (metrics).
    Returns the metrics record."""
    if iterations is not None:
        recipe = Recipe(**dict(asdict(recipe), iterations=int(iterations)))
    cap_min = recipe.minutes if minutes is None else float(minutes)
    if threads > 0:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)

    cfg = load_config(recipe.config)
    train_ds = ensure_synthetic(data_root, "train", recipe.train_seed, recipe.train_images)
    data = TrainData(train_ds, cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                     cfg.MODEL.BLENDMASK.BOTTOM_RESOLUTION, flip=cfg.INPUT.RANDOM_FLIP == "horizontal")
    model = build_model(cfg).to(dev).train()
    settings = loss_settings(cfg)
    opt = make_optimizer(model, recipe)
    start_it = 0
    elapsed_before = 0.0
    ckpt_path = work_dir / "last.pth"
    if resume and ckpt_path.is_file():
        state = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_it = int(state["iteration"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        print(f"resumed from {ckpt_path} at iteration {start_it}", file=sys.stderr)

    def save_resumable(it: int, elapsed: float) -> None:
        _save_atomic({"model": plain_state_dict(model), "optimizer": opt.state_dict(), "iteration": it,
                      "elapsed_s": elapsed, "recipe": asdict(recipe)}, ckpt_path)

    t0 = time.perf_counter()
    it = start_it
    smoothed: Dict[str, float] = {}
    bar = tqdm(total=recipe.iterations, initial=start_it, desc="train", unit="it", dynamic_ncols=True)
    stopped_by_cap = False
    while it < recipe.iterations:
        elapsed = elapsed_before + time.perf_counter() - t0
        if elapsed > cap_min * 60:
            stopped_by_cap = True
            print(f"\nstopping at iteration {it}: the {cap_min} min cap is reached", file=sys.stderr)
            break
        idx = batch_indices(len(data), recipe.batch_size, it, recipe.seed)
        samples = [data.load(i, np.random.default_rng([recipe.seed, 104729, it, j]))
                   for j, i in enumerate(idx)]
        images, _ = collate(samples, model)
        images = images.to(dev)
        samples = [Sample(sm.image, sm.boxes.to(dev), sm.classes.to(dev), sm.mask_targets.to(dev),
                          sm.sem.to(dev)) for sm in samples]
        lr = lr_at(it, recipe, elapsed / (cap_min * 60))
        for g in opt.param_groups:
            g["lr"] = lr
        losses = compute_losses(model, images, samples, settings)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss at iteration {it}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        opt.zero_grad(set_to_none=True)
        total.backward()
        if recipe.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm)
        opt.step()
        it += 1
        for k, v in losses.items():
            val = float(v.detach())
            smoothed[k] = 0.9 * smoothed.get(k, val) + 0.1 * val
        bar.update(1)
        if it % log_every == 0 or it == recipe.iterations:
            msg = " ".join(f"{k[5:]}={v:.3f}" for k, v in smoothed.items())
            bar.set_postfix_str(f"lr={lr:.2e} {msg}")
            print(f"it {it} lr={lr:.2e} total={sum(smoothed.values()):.3f} {msg} "
                  f"elapsed={(elapsed_before + time.perf_counter() - t0) / 60:.1f}min", file=sys.stderr,
                  flush=True)
        if it % recipe.checkpoint_period == 0 and it < recipe.iterations:
            save_resumable(it, elapsed_before + time.perf_counter() - t0)
    bar.close()
    train_s = elapsed_before + time.perf_counter() - t0
    save_resumable(it, train_s)
    model.eval()
    _save_atomic({"model": plain_state_dict(model)}, out)

    record: Dict[str, Any] = {
        "config": recipe.config,
        "recipe": asdict(recipe),
        "seed": recipe.seed,
        "iterations": it,
        "iterations_planned": recipe.iterations,
        "stopped_by_time_cap": stopped_by_cap,
        "training_minutes": round(train_s / 60, 2),
        "seconds_per_iteration": round(train_s / max(it - start_it, 1), 3) if start_it == 0 else None,
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "train_split": {"generator": "blendstudy.data.generate_synthetic_coco", "seed": recipe.train_seed,
                        "num_images": recipe.train_images},
        "val_split": {"generator": "blendstudy.data.generate_synthetic_coco", "seed": recipe.val_seed,
                      "num_images": recipe.val_images, "split_name": "val"},
        "torch_version": torch.__version__,
        "checkpoint_bytes": out.stat().st_size,
    }
    if evaluate_after:
        val_ds = ensure_synthetic(data_root, "val", recipe.val_seed, recipe.val_images)
        te = time.perf_counter()
        metrics = evaluate(model.cpu() if dev.type != "cpu" else model, cfg, val_ds)
        record["eval"] = {"min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
                          "score_thresh": cfg.MODEL.FCOS.INFERENCE_TH_TEST, "max_dets_per_image": 100,
                          "seconds": round(time.perf_counter() - te, 1)}
        record["bbox"] = metrics["bbox"]
        record["segm"] = metrics["segm"]
        print(f"val bbox {metrics['bbox']}\nval segm {metrics['segm']}", file=sys.stderr)
    with open(out.with_suffix(".json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blendstudy.train", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="tiny", choices=sorted(RECIPES))
    p.add_argument("--out", type=Path, default=Path("lib/blendstudy/weights/tiny_synthetic.pth"))
    p.add_argument("--minutes", type=float, default=None, help="wall-clock cap of training (minutes)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--resume", action="store_true", help="continue from <work-dir>/last.pth")
    p.add_argument("--iterations", type=int, default=None, help="override the recipe's step count")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0 = torch default). 1 is the default: on a shared 2-core "
                        "machine 2 threads were measured 4x slower than 1 (OpenMP waits on a busy core)")
    p.add_argument("--data-root", type=Path, default=Path("artifacts/_data"))
    p.add_argument("--work-dir", type=Path, default=None, help="resumable checkpoints (default "
                   "artifacts/_train/<recipe>)")
    p.add_argument("--no-eval", action="store_true")
    a = p.parse_args(argv)
    work = a.work_dir or Path("artifacts/_train") / a.recipe
    rec = train(RECIPES[a.recipe], a.out, a.data_root, work, minutes=a.minutes, device=a.device,
                resume=a.resume, iterations=a.iterations, threads=a.threads, evaluate_after=not a.no_eval)
    print(json.dumps({k: rec.get(k) for k in ("iterations", "training_minutes", "bbox", "segm")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
