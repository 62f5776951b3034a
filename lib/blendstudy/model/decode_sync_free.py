"""P1: FCOS decode with fixed shapes and no host synchronisation (no .cpu(), .item(), nonzero or
data-dependent Python branches between the head and the final results).

Same answers as AdelaiDet's decode (blendstudy.model.fcos.decode):
- per level, the candidates above the threshold, at most PRE_NMS_TOPK of them: a masked top-k of
  static size;
- class-aware greedy NMS on the NMS_CANDIDATES best-scored candidates only: a box's fate depends
  only on boxes scored above it, so their keep flags are exact, and the post-NMS top-k is exact
  whenever it is filled before the first excluded candidate's score (or nothing was excluded);
- the NMS itself as the fixed point of a suppression matrix, iterated a fixed number of times;
- a `converged` flag (checked when results reach the host anyway) says whether all of the above
  held; the pipeline redoes the decode exactly on the rare input where it is False;
- post-NMS top-k keeping every score tied with the k-th, into a fixed number of rows
  (POST_NMS_TOPK + TIE_SLACK) with a validity mask.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from blendstudy.model.fcos import DecodeSettings, HeadOutputs, Proposals, compute_locations
from blendstudy.ops import box_iou

TIE_SLACK = 16
NMS_STEPS = 24
NMS_CANDIDATES = 1000


def _level_candidates(logits, reg, ctr, stride: int, s: DecodeSettings):
    n, c, h, w = logits.shape
    cls = logits.permute(0, 2, 3, 1).reshape(n, h * w, c).sigmoid()
    ctn = ctr.permute(0, 2, 3, 1).reshape(n, h * w).sigmoid()
    if s.thresh_with_ctr:
        cls = cls * ctn[:, :, None]
    candidate = cls > s.score_thresh
    if not s.thresh_with_ctr:
        cls = cls * ctn[:, :, None]
    masked = torch.where(candidate, cls, torch.full_like(cls, -1.0)).reshape(n, -1)
    k = min(s.pre_nms_topk, masked.shape[1])
    vals, idx = masked.topk(k, dim=1)  # (n, k): the top-k candidates, padded with -1 rows
    valid = vals > -0.5
    loc_idx = idx // c
    classes = idx % c
    box = reg.permute(0, 2, 3, 1).reshape(n, h * w, 4) * stride
    loc = compute_locations(h, w, stride, logits.device)
    r = torch.gather(box, 1, loc_idx[:, :, None].expand(-1, -1, 4))
    xy = loc[loc_idx]
    boxes = torch.stack([xy[..., 0] - r[..., 0], xy[..., 1] - r[..., 1],
                         xy[..., 0] + r[..., 2], xy[..., 1] + r[..., 3]], dim=-1)
    return boxes, torch.sqrt(vals.clamp(min=0)), classes, valid, loc_idx


def greedy_nms_fixed(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, valid: torch.Tensor,
                     iou_threshold: float, steps: int = NMS_STEPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Class-aware greedy NMS on (K,) inputs with static shapes. Returns (keep mask, converged):
    converged is a 0-dim bool tensor, True when the iteration reached the greedy fixed point."""
    s = torch.where(valid, scores, torch.full_like(scores, -1.0))
    order = torch.sort(s, descending=True, stable=True).indices
    b, c, v = boxes[order].float(), classes[order], valid[order]
    over = (box_iou(b, b) > iou_threshold) & (c[:, None] == c[None, :]) & v[:, None] & v[None, :]
    # as a float matrix the "is any kept box suppressing me" test is one matrix-vector product
    over = torch.triu(over, diagonal=1).to(torch.float32)
    keep = v.clone()
    prev = keep
    for _ in range(steps):
        prev = keep
        keep = v & ((keep.to(torch.float32) @ over) < 0.5)
    converged = (keep == prev).all()
    out = torch.zeros_like(keep)
    out[order] = keep
    return out, converged


def decode_sync_free(head: HeadOutputs, image_sizes: Sequence[Tuple[int, int]], s: DecodeSettings) -> List[Proposals]:
    """Fixed-shape decode. Each Proposals has POST_NMS_TOPK + TIE_SLACK rows (fewer if fewer
    candidates exist at all), `valid` marking the real detections, ordered by decreasing score."""
    n_img = head.logits[0].shape[0]
    per_level = []
    for level, stride in enumerate(s.strides):
        boxes, scores, classes, valid, loc_idx = _level_candidates(
            head.logits[level], head.box_reg[level], head.ctrness[level], stride, s)
        per_level.append((boxes, scores, classes, valid, loc_idx, torch.full_like(classes, level)))
    boxes = torch.cat([p[0] for p in per_level], 1)
    scores = torch.cat([p[1] for p in per_level], 1)
    classes = torch.cat([p[2] for p in per_level], 1)
    valid = torch.cat([p[3] for p in per_level], 1)
    loc_idx = torch.cat([p[4] for p in per_level], 1)
    levels = torch.cat([p[5] for p in per_level], 1)
    out: List[Proposals] = []
    for i in range(n_img):
        s_all = torch.where(valid[i], scores[i], torch.full_like(scores[i], -1.0))
        m = min(NMS_CANDIDATES, s_all.shape[0])
        ranked, order = s_all.sort(descending=True, stable=True)
        cand = order[:m]
        next_score = ranked[m] if s_all.shape[0] > m else ranked.new_tensor(-1.0)
        keep, converged = greedy_nms_fixed(boxes[i][cand], scores[i][cand], classes[i][cand], valid[i][cand],
                                           s.nms_thresh)
        kept_scores = torch.where(keep, scores[i][cand], torch.full_like(scores[i][cand], -1.0))
        rows = min(s.post_nms_topk + TIE_SLACK, m) if s.post_nms_topk > 0 else m
        top_vals, top_pos = kept_scores.topk(rows)
        row_valid = top_vals > -0.5
        if s.post_nms_topk > 0 and m > s.post_nms_topk:
            kth = top_vals[s.post_nms_topk - 1]
            row_valid = row_valid & (top_vals >= kth)
            # a tie run longer than the slack would lose rows
            converged = converged & ~((top_vals[-1] >= kth) & (top_vals[-1] > -0.5))
            filled = kth > -0.5
            # candidates left out of the NMS could still enter the result unless the result filled
            # up above their best score
            converged = converged & ((next_score < -0.5) | (filled & (kth > next_score)))
        else:
            converged = converged & (next_score < -0.5)
        top_idx = cand[top_pos]
        lv = levels[i][top_idx]
        li = loc_idx[i][top_idx]
        feats = _gather_top_feats(head.top_feats, i, lv, li)
        out.append(Proposals(boxes[i][top_idx], scores[i][top_idx], classes[i][top_idx], feats, lv,
                             tuple(image_sizes[i]), row_valid, cells=li, converged=converged))
    return out


def _gather_top_feats(top_feats: List[torch.Tensor], image: int, levels: torch.Tensor,
                      loc_idx: torch.Tensor) -> torch.Tensor:
    """Attention vectors (K, D) at (level, location) pairs, without data-dependent shapes."""
    if not top_feats:
        return levels.new_zeros((levels.shape[0], 0), dtype=torch.float32)
    flat = [t[image].flatten(1).t() for t in top_feats]  # (HW_l, D) per level
    offsets = torch.tensor([0] + [f.shape[0] for f in flat[:-1]]).to(levels.device).cumsum(0)
    return torch.cat(flat, 0)[offsets[levels] + loc_idx]
