"""Box ops: area, pairwise IoU, greedy NMS (plain and per class), the k-th largest score."""

from __future__ import annotations

import numpy as np
import torch

from blendstudy.ops.kernels import kernels_for


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (len(a), len(b)) of xyxy boxes (no +1 on widths, as torchvision/detectron2)."""
    area_a = box_area(a)
    area_b = box_area(b)
    # one coordinate at a time: contiguous (len(a), len(b)) operands instead of (.., .., 2) ones
    # whose last dimension defeats vectorisation (the same float operations, about 2x faster)
    w = (torch.min(a[:, 2, None], b[None, :, 2]) - torch.max(a[:, 0, None], b[None, :, 0])).clamp_(min=0)
    h = (torch.min(a[:, 3, None], b[None, :, 3]) - torch.max(a[:, 1, None], b[None, :, 1])).clamp_(min=0)
    inter = w * h
    return inter / (area_a[:, None] + area_b[None, :] - inter)


NMS_CHUNK = 512


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int = 0,
        impl: str = "native") -> torch.Tensor:
    """Greedy NMS. Returns int64 indices of kept boxes, by decreasing score (ties keep input order,
    as torchvision's stable sort). A box is suppressed when its IoU with a kept one is > threshold.

    max_keep > 0: the caller keeps only the max_keep best kept boxes and every box tied with the
    last of them (AdelaiDet's post-NMS top-k). Greedy NMS decides boxes in score order, so once
    max_keep boxes are kept, the first surviving box scored below the last of them ends the pass
    without changing what the caller keeps. Candidates are then taken in chunks (2 * max_keep
    first, doubling up to NMS_CHUNK): the IoU matrix is computed only as far as the pass goes.

    impl: "native" (this code) or "torchvision" (torchvision.ops.nms, which does the whole pass;
    see blendstudy.ops.kernels)."""
    tv = kernels_for(impl)
    if tv is not None:
        return tv.nms(boxes, scores, iou_threshold)  # type: ignore[attr-defined]
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    s_np = scores[order].detach().float().cpu().numpy()
    n = b.shape[0]
    chunk = min(max(2 * max_keep, 64), NMS_CHUNK) if max_keep > 0 else n
    keep: list = []
    start = 0
    while start < n:
        end = min(n, start + chunk)
        chunk = min(2 * chunk, max(NMS_CHUNK, chunk))
        cb = b[start:end]
        # one device sync per chunk: IoU within the chunk and against the boxes kept so far
        over = (box_iou(cb, cb) > iou_threshold).cpu().numpy()
        if keep:
            # index lists are made on the host and moved: under a TorchDispatchMode (the FLOP count) the
            # emulated Ascend stack cannot build torch.tensor(list, device=npu) directly
            kept = b[torch.as_tensor(keep, dtype=torch.int64).to(b.device)]
            removed = (box_iou(cb, kept) > iou_threshold).any(dim=1).cpu().numpy()
        else:
            removed = np.zeros(end - start, dtype=bool)
        for i in range(end - start):
            if removed[i]:
                continue
            if 0 < max_keep <= len(keep) and s_np[start + i] < s_np[keep[max_keep - 1]]:
                return order[torch.as_tensor(keep, dtype=torch.int64).to(boxes.device)]
            keep.append(start + i)
            removed |= over[i]
        start = end
    return order[torch.as_tensor(keep, dtype=torch.int64).to(boxes.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float, max_keep: int = 0, impl: str = "native") -> torch.Tensor:
    """Per-class NMS, torchvision's strategy: the coordinate-offset trick for small inputs, a loop
    over classes for large ones (4,000 coordinates on cpu, 20,000 elsewhere). Returns kept indices
    sorted by decreasing score. Boxes are cast to float32 (fp16 lacks the range for the offsets).
    max_keep: as in `nms` (the caller keeps the max_keep best and their ties); impl: the kernel of
    each `nms` call."""
    boxes = boxes.float()
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    limit = 4000 if boxes.device.type == "cpu" else 20000
    if boxes.numel() > limit:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            curr = torch.where(idxs == class_id)[0]
            curr_keep = nms(boxes[curr], scores[curr], iou_threshold, max_keep, impl)
            keep_mask[curr[curr_keep]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True).indices]
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold, max_keep, impl)



def kth_largest_threshold(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest score (0-dim tensor), computed as AdelaiDet does (kthvalue of the
    (n - k + 1)-th smallest), so every score >= it is kept: ties at the k-th value all stay."""
    n = scores.shape[0]
    return torch.kthvalue(scores.cpu(), n - k + 1).values
