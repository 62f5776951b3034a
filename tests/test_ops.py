"""blendstudy.ops against independent naive references of torchvision's CPU kernels (nms,
roi_align) and detectron2's paste_masks_in_image.

The references below are straight scalar loops written from the kernels' definitions; they share
no code with the library.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blendstudy import ops

# ------------------------------------------------------------------------------------------------
# Naive references
# ------------------------------------------------------------------------------------------------


def naive_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list:
    """Greedy NMS as torchvision's CPU kernel: visit boxes by decreasing score (ties in input
    order), keep a box unless a kept one overlaps it with IoU > thr. float32 arithmetic."""
    b = boxes.to(torch.float32).numpy()
    s = scores.to(torch.float32).numpy()
    n = b.shape[0]
    order = sorted(range(n), key=lambda i: (-float(s[i]), i))
    area = [np.float32((b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])) for i in range(n)]
    suppressed = [False] * n
    keep = []
    for oi, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[oi + 1:]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = np.float32(w * h)
            iou = inter / np.float32(area[i] + area[j] - inter)
            if float(iou) > thr:
                suppressed[j] = True
    return keep


def naive_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, thr: float) -> set:
    keep = set()
    for c in sorted(set(idxs.tolist())):
        members = [i for i in range(len(idxs)) if int(idxs[i]) == c]
        sub = naive_nms(boxes[members], scores[members], thr)
        keep.update(members[k] for k in sub)
    return keep


def naive_roi_align(feat: torch.Tensor, rois: torch.Tensor, out_hw, scale: float, sampling_ratio: int,
                    aligned: bool) -> torch.Tensor:
    """torchvision's roi_align_forward_kernel: per roi, per output bin, per sample point, bilinear
    interpolation with the kernel's boundary rules, averaged over max(grid_h * grid_w, 1)."""
    f = feat.double().numpy()
    _, c, height, width = f.shape
    ph_n, pw_n = out_hw
    out = np.zeros((rois.shape[0], c, ph_n, pw_n))
    for n, roi in enumerate(rois.double().tolist()):
        bi = int(roi[0])
        off = 0.5 if aligned else 0.0
        start_w, start_h = roi[1] * scale - off, roi[2] * scale - off
        end_w, end_h = roi[3] * scale - off, roi[4] * scale - off
        roi_w, roi_h = end_w - start_w, end_h - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / ph_n, roi_w / pw_n
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / ph_n))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / pw_n))
        count = max(grid_h * grid_w, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = np.zeros(c)
                for iy in range(grid_h):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        if not (-1.0 <= y <= height and -1.0 <= x <= width):
                            continue
                        yy, xx = max(y, 0.0), max(x, 0.0)
                        y_lo, x_lo = int(yy), int(xx)
                        if y_lo >= height - 1:
                            y_lo = y_hi = height - 1
                            yy = float(y_lo)
                        else:
                            y_hi = y_lo + 1
                        if x_lo >= width - 1:
                            x_lo = x_hi = width - 1
                            xx = float(x_lo)
                        else:
                            x_hi = x_lo + 1
                        ly, lx = yy - y_lo, xx - x_lo
                        hy, hx = 1.0 - ly, 1.0 - lx
                        acc += (hy * hx * f[bi, :, y_lo, x_lo] + hy * lx * f[bi, :, y_lo, x_hi]
                                + ly * hx * f[bi, :, y_hi, x_lo] + ly * lx * f[bi, :, y_hi, x_hi])
                out[n, :, ph, pw] = acc / count
    return torch.from_numpy(out)


def whole_image_paste(masks: torch.Tensor, boxes: torch.Tensor, image_size, threshold: float) -> torch.Tensor:
    """detectron2's GPU formulation: grid_sample every mask over the FULL image (pixel centres,
    align_corners=False, zero padding), then >= threshold. One mask at a time."""
    h, w = image_size
    out = torch.zeros((masks.shape[0], h, w), dtype=torch.bool)
    for i in range(masks.shape[0]):
        x0, y0, x1, y1 = (boxes[i, k:k + 1].float() for k in range(4))
        gx = (torch.arange(w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([gx[None, :].expand(h, w), gy[:, None].expand(h, w)], dim=2)[None]
        sampled = F.grid_sample(masks[i][None, None].float(), grid, align_corners=False)[0, 0]
        out[i] = sampled >= threshold
    return out


def scalar_paste_soft(mask: torch.Tensor, box, image_size) -> np.ndarray:
    """Per-pixel scalar version of the same sampling (soft values), for a semantic cross-check."""
    m = mask.double().numpy()
    mh, mw = m.shape
    h, w = image_size
    x0, y0, x1, y1 = (float(v) for v in box)
    out = np.zeros((h, w))

    def at(yy: int, xx: int) -> float:
        return m[yy, xx] if 0 <= yy < mh and 0 <= xx < mw else 0.0

    for py in range(h):
        gy = ((py + 0.5) - y0) / (y1 - y0) * 2 - 1
        v = ((gy + 1) * mh - 1) / 2  # align_corners=False unnormalisation
        for px in range(w):
            gx = ((px + 0.5) - x0) / (x1 - x0) * 2 - 1
            u = ((gx + 1) * mw - 1) / 2
            u0, v0 = math.floor(u), math.floor(v)
            fu, fv = u - u0, v - v0
            out[py, px] = ((1 - fu) * (1 - fv) * at(v0, u0) + fu * (1 - fv) * at(v0, u0 + 1)
                           + (1 - fu) * fv * at(v0 + 1, u0) + fu * fv * at(v0 + 1, u0 + 1))
    return out


# ------------------------------------------------------------------------------------------------
# Data helpers
# ------------------------------------------------------------------------------------------------


def random_boxes(gen: torch.Generator, n: int, size: float = 100.0, integer: bool = False) -> torch.Tensor:
    xy = torch.rand((n, 2), generator=gen) * size
    wh = torch.rand((n, 2), generator=gen) * size * 0.4 + 1.0
    boxes = torch.cat([xy, xy + wh], dim=1)
    return boxes.round() if integer else boxes


def tied_scores(gen: torch.Generator, n: int) -> torch.Tensor:
    """Scores on a coarse grid so that many are exactly equal."""
    return (torch.rand(n, generator=gen) * 10).floor() / 10


# ------------------------------------------------------------------------------------------------
# NMS
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nms_matches_naive_greedy(seed, thr):
    gen = torch.Generator().manual_seed(seed)
    n = 60
    boxes = random_boxes(gen, n, integer=seed % 2 == 0)  # integer coords make exact IoU ties
    scores = tied_scores(gen, n) if seed < 3 else torch.rand(n, generator=gen)
    keep = ops.nms(boxes, scores, thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == naive_nms(boxes, scores, thr)
    kept_scores = scores[keep]
    assert torch.all(kept_scores[:-1] >= kept_scores[1:])


def test_nms_iou_equal_to_threshold_is_not_suppressed():
    # IoU exactly 0.5 (inter 50, union 100): suppression needs IoU > threshold.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 7.5], [0.0, 2.5, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    assert ops.box_iou(boxes[:1], boxes[1:]).item() == pytest.approx(0.5)
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert ops.nms(boxes, scores, 0.49).tolist() == [0]


def test_nms_ties_keep_input_order():
    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10.5], [20, 20, 30, 30]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1, 3]


def test_nms_empty():
    keep = ops.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    keep = ops.batched_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


# ------------------------------------------------------------------------------------------------
# batched NMS
# ------------------------------------------------------------------------------------------------


def test_batched_nms_classes_never_suppress_each_other():
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    boxes = box.repeat(5, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    idxs = torch.tensor([0, 1, 2, 3, 4])
    assert ops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1, 2, 3, 4]
    idxs = torch.tensor([0, 1, 0, 1, 2])
    assert ops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1, 4]


def _check_batched(boxes, scores, idxs, thr):
    keep = ops.batched_nms(boxes, scores, idxs, thr)
    assert keep.dtype == torch.int64
    assert len(set(keep.tolist())) == keep.numel()
    assert set(keep.tolist()) == naive_batched_nms(boxes, scores, idxs, thr)
    ks = scores[keep]
    assert torch.all(ks[:-1] >= ks[1:]), "kept indices must be ordered by decreasing score"
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_nms_offset_path_matches_per_class_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 150  # < 1000 boxes: coordinate-offset trick
    boxes = random_boxes(gen, n, size=60.0, integer=seed == 0)
    scores = tied_scores(gen, n)
    idxs = torch.randint(0, 5, (n,), generator=gen)
    keep = _check_batched(boxes, scores, idxs, 0.5)
    # the offset path is one stable NMS: exact sequence, ties in input order
    ref = sorted(naive_batched_nms(boxes, scores, idxs, 0.5), key=lambda i: (-float(scores[i]), i))
    assert keep.tolist() == ref


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_nms_loop_path_matches_per_class_reference(seed):
    gen = torch.Generator().manual_seed(10 + seed)
    n = 1100  # > 1000 boxes (> 4000 coordinates) on cpu: the per-class loop
    boxes = random_boxes(gen, n, size=200.0)
    scores = tied_scores(gen, n) if seed == 0 else torch.rand(n, generator=gen)
    idxs = torch.randint(0, 8, (n,), generator=gen)
    keep = _check_batched(boxes, scores, idxs, 0.6)
    # same keep set as the offset trick on the same data (run on a subset-free copy of the path)
    offset_keep = ops.nms(boxes + (idxs.float() * (boxes.max() + 1))[:, None], scores, 0.6)
    assert set(offset_keep.tolist()) == set(keep.tolist())


def _top_k_with_ties(keep: torch.Tensor, scores: torch.Tensor, k: int) -> list:
    """What AdelaiDet keeps after NMS: the k best kept and every one tied with the k-th."""
    if keep.numel() <= k:
        return keep.tolist()
    kth = scores[keep][k - 1]
    return keep[scores[keep] >= kth].tolist()


@pytest.mark.parametrize("chunk", [7, 64, 512])
@pytest.mark.parametrize("k", [1, 5, 30, 100, 1000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_max_keep_gives_the_post_nms_top_k(monkeypatch, seed, k, chunk):
    monkeypatch.setattr(ops.boxes, "NMS_CHUNK", chunk)
    gen = torch.Generator().manual_seed(20 + seed)
    n = 400
    boxes = random_boxes(gen, n, size=120.0, integer=seed == 0)
    scores = tied_scores(gen, n) if seed < 2 else torch.rand(n, generator=gen)
    full = ops.nms(boxes, scores, 0.5)
    early = ops.nms(boxes, scores, 0.5, max_keep=k)
    assert early.tolist() == full.tolist()[: early.numel()], "a prefix of the full pass"
    assert _top_k_with_ties(early, scores, k) == _top_k_with_ties(full, scores, k)
    idxs = torch.randint(0, 4, (n,), generator=gen)
    for m in (n, 1100):  # offset path and per-class loop path
        b = boxes.repeat(m // n + 1, 1)[:m] + torch.rand(m, 1, generator=gen)
        sc = scores.repeat(m // n + 1)[:m]
        ix = idxs.repeat(m // n + 1)[:m]
        # (the per-class path orders tied scores arbitrarily, as torchvision's: compare as sets)
        assert (sorted(_top_k_with_ties(ops.batched_nms(b, sc, ix, 0.6, max_keep=k), sc, k))
                == sorted(_top_k_with_ties(ops.batched_nms(b, sc, ix, 0.6), sc, k)))


def test_nms_max_keep_stops_early_on_ties_only_after_the_run():
    # four identical scores: with max_keep=2 the tie with the 2nd kept box must still be decided
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70], [80, 80, 90, 90]])
    scores = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.4])
    assert ops.nms(boxes, scores, 0.5, max_keep=2).tolist() == [0, 1, 2, 3]
    assert ops.nms(boxes, scores, 0.5, max_keep=5).tolist() == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------
# Sync-free NMS (P1's fixed-shape NMS; its `converged` flag guards exactness)
# ------------------------------------------------------------------------------------------------


def _fixed_nms(boxes, scores, idxs, valid, thr, steps=None):
    from blendstudy.model.decode_sync_free import NMS_STEPS, greedy_nms_fixed

    keep, converged = greedy_nms_fixed(boxes, scores, idxs, valid, thr, steps or NMS_STEPS)
    assert bool(converged)
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nms_matrix_fixed_matches_batched_nms(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    n = 120
    boxes = random_boxes(gen, n, size=50.0, integer=seed % 2 == 1)
    scores = tied_scores(gen, n) if seed < 2 else torch.rand(n, generator=gen)
    idxs = torch.randint(0, 3, (n,), generator=gen)
    valid = torch.rand(n, generator=gen) > 0.25
    mask = _fixed_nms(boxes, scores, idxs, valid, 0.5)
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert not bool((mask & ~valid).any()), "invalid entries must never be kept"
    sel = torch.where(valid)[0]
    ref = sel[ops.batched_nms(boxes[sel], scores[sel], idxs[sel], 0.5)]
    assert set(torch.where(mask)[0].tolist()) == set(ref.tolist())
    assert set(ref.tolist()) == {int(sel[i]) for i in naive_batched_nms(boxes[sel], scores[sel], idxs[sel], 0.5)}


def test_nms_matrix_fixed_empty_and_all_invalid():
    empty = _fixed_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                                 torch.zeros(0, dtype=torch.bool), 0.5)
    assert empty.shape == (0,)
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])
    none = _fixed_nms(boxes, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64),
                                torch.zeros(2, dtype=torch.bool), 0.5)
    assert none.tolist() == [False, False]


def _sliding_chain(n: int):
    # box i overlaps box i+1 (IoU 7/13 > 0.5) but not i+2 (IoU 4/16): greedy keeps every other box,
    # and each box's fate depends on the whole chain before it.
    x = torch.arange(n, dtype=torch.float32) * 3
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)
    scores = torch.linspace(1.0, 0.01, n)
    return boxes, scores, torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.bool)


def test_nms_matrix_fixed_short_suppression_chain():
    boxes, scores, idxs, valid = _sliding_chain(20)
    mask = _fixed_nms(boxes, scores, idxs, valid, 0.5)
    assert torch.where(mask)[0].tolist() == list(range(0, 20, 2))


def test_nms_fixed_long_chain_is_flagged_and_exact_with_enough_steps():
    from blendstudy.model.decode_sync_free import NMS_STEPS, greedy_nms_fixed

    boxes, scores, idxs, valid = _sliding_chain(100)
    _, converged = greedy_nms_fixed(boxes, scores, idxs, valid, 0.5, NMS_STEPS)
    assert not bool(converged), "a chain longer than the step budget must be flagged (the pipeline then falls back)"
    mask = _fixed_nms(boxes, scores, idxs, valid, 0.5, steps=101)
    assert sorted(ops.batched_nms(boxes, scores, idxs, 0.5).tolist()) == list(range(0, 100, 2))
    assert torch.where(mask)[0].tolist() == list(range(0, 100, 2))


# ------------------------------------------------------------------------------------------------
# ROIAlign
# ------------------------------------------------------------------------------------------------


def _roi_case(seed: int):
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn((2, 3, 9, 11), generator=gen)
    # rois in input pixels (spatial_scale 0.5 -> 18 x 22 input)
    rois = [
        [0, 2.3, 1.7, 15.2, 12.9],     # inside
        [1, -6.0, -5.5, 8.4, 7.1],     # partially outside top-left
        [0, 14.0, 10.0, 30.5, 26.0],   # partially outside bottom-right
        [1, 5.2, 6.1, 5.9, 6.5],       # tiny (< 1 px)
        [1, 7.0, 3.0, 7.4, 3.2],       # tiny
        [0, -30.0, -30.0, -25.0, -26.0],  # fully outside
        [1, 0.0, 0.0, 22.0, 18.0],     # whole map
        [0, 3.0, 4.0, 3.0, 9.0],       # zero width
    ]
    for _ in range(6):
        xy = torch.rand(2, generator=gen) * 26 - 4
        wh = torch.rand(2, generator=gen) * 14 + 0.2
        b = float(torch.randint(0, 2, (1,), generator=gen))
        rois.append([b, float(xy[0]), float(xy[1]), float(xy[0] + wh[0]), float(xy[1] + wh[1])])
    return feat, torch.tensor(rois, dtype=torch.float32)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0])
def test_roi_align_matches_naive_kernel(aligned, sampling_ratio):
    feat, rois = _roi_case(7)
    if aligned and sampling_ratio == 0:
        rois = rois[rois[:, 3] > rois[:, 1]]  # zero-size rois: tested apart
    out = ops.roi_align(feat, rois, (4, 3), 0.5, sampling_ratio, aligned)
    ref = naive_roi_align(feat, rois, (4, 3), 0.5, sampling_ratio, aligned)
    assert out.shape == (rois.shape[0], 3, 4, 3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_single_image_scale_one_and_quarter(aligned):
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn((1, 2, 12, 10), generator=gen)
    rois = torch.tensor([[0, 1.0, 2.0, 30.0, 41.0], [0, -10.0, 20.0, 12.0, 60.0], [0, 39.0, 47.0, 44.0, 50.0]])
    for scale, sr in ((0.25, 0), (0.25, 2), (1.0, 1)):
        r = rois.clone()
        if scale == 1.0:
            r[:, 1:] = r[:, 1:] / 4
        out = ops.roi_align(feat, r, (5, 5), scale, sr, aligned)
        ref = naive_roi_align(feat, r, (5, 5), scale, sr, aligned)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_roi_align_empty_rois():
    out = ops.roi_align(torch.randn(1, 4, 8, 8), torch.zeros((0, 5)), (7, 7), 0.25, 2, True)
    assert out.shape == (0, 4, 7, 7)


def test_roi_align_aligned_adaptive_zero_size_roi_is_zero():
    feat = torch.randn((1, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    rois = torch.tensor([[0, 3.0, 3.0, 3.0, 3.0], [0, 2.0, 1.0, 2.0, 6.0]])
    ref = naive_roi_align(feat, rois, (2, 2), 1.0, 0, True)
    assert float(ref.abs().max()) == 0.0
    out = ops.roi_align(feat, rois, (2, 2), 1.0, 0, True)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_boxes_to_rois():
    rois = ops.boxes_to_rois([torch.tensor([[1.0, 2, 3, 4]]), torch.zeros((0, 4)), torch.tensor([[5.0, 6, 7, 8]] * 2)])
    assert rois.tolist() == [[0, 1, 2, 3, 4], [2, 5, 6, 7, 8], [2, 5, 6, 7, 8]]


# ------------------------------------------------------------------------------------------------
# paste_masks
# ------------------------------------------------------------------------------------------------


def _paste_case(seed: int):
    gen = torch.Generator().manual_seed(seed)
    h, w = 37, 45
    boxes = torch.tensor([
        [3.0, 4.0, 20.0, 30.0],          # integral
        [5.3, 2.71, 17.9, 11.05],        # fractional
        [-8.4, -3.2, 12.6, 15.5],        # partially outside top-left
        [30.2, 20.7, 58.9, 49.3],        # partially outside bottom-right
        [10.5, 10.5, 11.2, 11.4],        # under a pixel
        [0.0, 0.0, 45.0, 37.0],          # the whole image
        [-20.0, 5.0, 70.0, 9.5],         # wider than the image
    ])
    # every box overlaps the image or its 1-px margin (see test_paste_masks_box_outside_image_is_empty)
    xy = torch.rand((5, 2), generator=gen) * 40 - 5
    wh = torch.rand((5, 2), generator=gen) * 30 + 5.5
    boxes = torch.cat([boxes, torch.cat([xy, xy + wh], 1)])
    masks = torch.rand((boxes.shape[0], 14, 14), generator=gen)
    return masks, boxes, (h, w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paste_masks_equals_whole_image_grid_sample(seed):
    masks, boxes, size = _paste_case(seed)
    out = ops.paste_masks(masks, boxes, size, threshold=0.5)
    ref = whole_image_paste(masks, boxes, size, 0.5)
    assert out.dtype == torch.bool and out.shape == (masks.shape[0],) + size
    assert torch.equal(out, ref)
    assert bool(out.any())


def test_paste_masks_matches_scalar_sampling():
    masks, boxes, size = _paste_case(5)
    masks, boxes = masks[:6], boxes[:6]
    out = ops.paste_masks(masks, boxes, size, threshold=0.5)
    for i in range(masks.shape[0]):
        soft = scalar_paste_soft(masks[i], boxes[i].tolist(), size)
        clear = np.abs(soft - 0.5) > 1e-5
        np.testing.assert_array_equal(out[i].numpy()[clear], (soft >= 0.5)[clear])


def test_paste_masks_threshold_is_inclusive():
    # box (0, 0, 4, 4) and a 4x4 mask: each pixel centre lands exactly on a mask cell centre
    masks = torch.full((1, 4, 4), 0.5)
    masks[0, 0, 0] = 0.5 - 1e-6
    out = ops.paste_masks(masks, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), (6, 6), threshold=0.5)
    expected = torch.zeros((6, 6), dtype=torch.bool)
    expected[:4, :4] = True
    expected[0, 0] = False
    assert torch.equal(out[0], expected)
    assert torch.equal(out, whole_image_paste(masks, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), (6, 6), 0.5))


def test_paste_masks_empty():
    out = ops.paste_masks(torch.zeros((0, 14, 14)), torch.zeros((0, 4)), (10, 12))
    assert out.shape == (0, 10, 12) and out.dtype == torch.bool


def test_paste_masks_box_just_outside_is_empty():
    masks = torch.ones((2, 7, 7))
    boxes = torch.tensor([[30.5, 3.0, 40.0, 9.0], [-9.0, -8.0, -0.5, -0.5]])  # within the 1-px margin
    out = ops.paste_masks(masks, boxes, (20, 30))
    assert not bool(out.any())
    assert torch.equal(out, whole_image_paste(masks, boxes, (20, 30), 0.5))


@pytest.mark.parametrize("box", [[-10.0, 2.0, -5.0, 6.0], [2.0, -9.0, 6.0, -3.0],
                                 [50.0, 2.0, 70.0, 6.0], [2.0, 60.0, 6.0, 80.0]])
def test_paste_masks_box_outside_image_is_empty(box):
    masks = torch.ones((1, 7, 7))
    boxes = torch.tensor([box])
    ref = whole_image_paste(masks, boxes, (20, 30), 0.5)
    assert not bool(ref.any())
    assert torch.equal(ops.paste_masks(masks, boxes, (20, 30)), ref)


# ------------------------------------------------------------------------------------------------
# bilinear_matrix (the blend_matmul switch)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("src, dst", [(7, 56), (14, 56), (5, 13), (1, 4), (9, 3), (6, 6), (3, 100)])
def test_bilinear_matrix_equals_interpolate(src, dst):
    x = torch.randn(3, 4, src, src + 2, generator=torch.Generator().manual_seed(src * dst))
    want = F.interpolate(x, (dst, dst + 1), mode="bilinear", align_corners=False)
    got = ops.bilinear_matrix(src, dst) @ x @ ops.bilinear_matrix(src + 2, dst + 1).t()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    m = ops.bilinear_matrix(src, dst, torch.float64)
    torch.testing.assert_close(m.sum(1), torch.ones(dst, dtype=torch.float64))  # a convex mix per row


# ------------------------------------------------------------------------------------------------
# kth_largest_threshold
# ------------------------------------------------------------------------------------------------


def test_kth_largest_threshold_keeps_ties():
    scores = torch.tensor([0.9, 0.5, 0.7, 0.5, 0.5, 0.1])
    thr = ops.kth_largest_threshold(scores, 3)
    assert float(thr) == 0.5
    assert int((scores >= thr).sum()) == 5


# ------------------------------------------------------------------------------------------------
# conv_at (the top layer evaluated at the detections only)
# ------------------------------------------------------------------------------------------------
def _cells_with_borders(shapes, rows, gen):
    levels = torch.randint(0, len(shapes), (rows,), generator=gen)
    cells = torch.stack([torch.randint(0, shapes[int(lv)][0] * shapes[int(lv)][1], (1,), generator=gen)[0]
                         for lv in levels])
    # corners and edges of every level, where the zero padding matters
    for lv, (h, w) in enumerate(shapes):
        corner = torch.tensor([0, w - 1, (h - 1) * w, h * w - 1, w * (h // 2)])
        levels = torch.cat([levels, torch.full_like(corner, lv)])
        cells = torch.cat([cells, corner])
    return levels, cells


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_conv_at_equals_the_full_conv_at_those_cells(channels_last, kernel):
    gen = torch.Generator().manual_seed(kernel)
    conv = torch.nn.Conv2d(6, 10, kernel, 1, kernel // 2)
    shapes = [(7, 9), (4, 5), (1, 3)]
    maps = [torch.randn(2, 6, h, w, generator=gen) for h, w in shapes]
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    levels, cells = _cells_with_borders(shapes, 12, gen)
    image = torch.randint(0, 2, (levels.shape[0],), generator=gen)
    full = [conv(m) for m in maps]
    want = torch.stack([full[int(lv)][int(im), :, int(c) // shapes[int(lv)][1], int(c) % shapes[int(lv)][1]]
                        for lv, c, im in zip(levels, cells, image)])
    with torch.no_grad():
        got = ops.conv_at(conv, maps, levels, cells, image)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # one batch index for all rows
        got0 = ops.conv_at(conv, maps, levels, cells, 1)
    want1 = torch.stack([full[int(lv)][1, :, int(c) // shapes[int(lv)][1], int(c) % shapes[int(lv)][1]]
                         for lv, c in zip(levels, cells)])
    torch.testing.assert_close(got0, want1, atol=1e-5, rtol=1e-5)


def test_conv_at_no_rows_and_no_bias():
    conv = torch.nn.Conv2d(4, 3, 3, 1, 1, bias=False)
    maps = [torch.randn(1, 4, 5, 5)]
    with torch.no_grad():
        out = ops.conv_at(conv, maps, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        assert out.shape == (0, 3)
        one = ops.conv_at(conv, maps, torch.tensor([0]), torch.tensor([12]))
    torch.testing.assert_close(one[0], conv(maps[0])[0, :, 2, 2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", [torch.nn.Conv2d(4, 3, 3, 2, 1), torch.nn.Conv2d(4, 3, 3, 1, 0),
                                  torch.nn.Conv2d(4, 3, 2, 1, 1), torch.nn.Conv2d(4, 4, 3, 1, 1, groups=2),
                                  torch.nn.Conv2d(4, 3, 3, 1, 2, dilation=2)])
def test_conv_at_rejects_what_it_cannot_compute(conv):
    with pytest.raises(ValueError, match="stride-1 'same' conv"):
        ops.conv_at(conv, [torch.randn(1, 4, 5, 5)], torch.tensor([0]), torch.tensor([3]))


# ------------------------------------------------------------------------------------------------
# torchvision parity (only where a working torchvision is importable, e.g. GPU machines)
# ------------------------------------------------------------------------------------------------


def _torchvision_or_skip():
    tv = ops.torchvision_ops()
    if tv is None:
        pytest.skip("torchvision.ops is not importable/working here; parity with torchvision's "
                    "kernels is checked on machines that have it")
    return tv


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_nms_matches_torchvision():
    tv = _torchvision_or_skip()
    gen = torch.Generator().manual_seed(0)
    for dev in _devices():
        for seed_n in (50, 300):
            boxes = random_boxes(gen, seed_n).to(dev)
            scores = torch.rand(seed_n, generator=gen).to(dev)
            idxs = torch.randint(0, 4, (seed_n,), generator=gen).to(dev)
            for thr in (0.3, 0.5, 0.7):
                ours = ops.nms(boxes, scores, thr)
                assert ours.tolist() == tv.nms(boxes, scores, thr).tolist()
                assert ours.tolist() == ops.nms(boxes, scores, thr, impl="torchvision").tolist()
                ours = set(ops.batched_nms(boxes, scores, idxs, thr).tolist())
                assert ours == set(tv.batched_nms(boxes, scores, idxs, thr).tolist())
                assert ours == set(ops.batched_nms(boxes, scores, idxs, thr, impl="torchvision").tolist())


def test_roi_align_matches_torchvision():
    tv = _torchvision_or_skip()
    feat, rois = _roi_case(11)
    rois = rois[rois[:, 3] > rois[:, 1]]
    for dev in _devices():
        for aligned in (True, False):
            for sr in (0, 1, 2):
                ours = ops.roi_align(feat.to(dev), rois.to(dev), (4, 3), 0.5, sr, aligned)
                theirs = tv.roi_align(feat.to(dev), rois.to(dev), (4, 3), 0.5, sr, aligned)
                torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
                routed = ops.roi_align(feat.to(dev), rois.to(dev), (4, 3), 0.5, sr, aligned, impl="torchvision")
                assert torch.equal(routed, theirs)


def test_the_kernel_choice_is_an_argument():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10]])
    scores = torch.tensor([0.9, 0.8])
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.nms(boxes, scores, 0.5, impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.roi_align(torch.zeros(1, 1, 4, 4), torch.zeros((1, 5)), (2, 2), 1.0, 1, True, impl="")
    if ops.torchvision_ops() is None:  # an explicit choice that cannot be honoured is an error, not a fallback
        with pytest.raises(RuntimeError, match="torchvision"):
            ops.nms(boxes, scores, 0.5, impl="torchvision")
    assert ops.nms(boxes, scores, 0.5, impl="native").tolist() == [0]


def test_roi_sampler_slices_are_roi_align_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 3, 20, 24, generator=g)
    xy = torch.rand(30, 2, generator=g) * 120 - 20
    boxes = torch.cat([xy, xy + torch.rand(30, 2, generator=g) * 60 + 0.5], 1)
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=g).float(), boxes], 1)
    want = ops.roi_align(feats, rois, (7, 7), 0.25, 1, True)
    sampler = ops.RoiSampler(feats, rois, (7, 7), 0.25, True)
    inside = sampler.inside(0, 30)
    assert len(sampler) == 30 and tuple(inside.shape) == (30, 1, 7, 7)
    assert 0 < inside.sum() < inside.numel()  # some sample points fall outside
    got = torch.cat([sampler.sample(s, s + 8) * sampler.inside(s, s + 8) for s in range(0, 30, 8)])
    assert torch.equal(got, want)


def test_box_iou_matches_the_numpy_reference_and_hand_values():
    from blendstudy.measure.agreement import box_iou_matrix

    g = torch.Generator().manual_seed(9)
    xy = torch.rand(40, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 50], 1)
    boxes[3] = boxes[2]  # identical pair
    iou = ops.box_iou(boxes[:25], boxes)
    assert iou.shape == (25, 40)
    np.testing.assert_allclose(iou.numpy(), box_iou_matrix(boxes[:25].double().numpy(), boxes.double().numpy()),
                               rtol=1e-5, atol=1e-6)
    assert iou[2, 3] == 1.0 and torch.all(iou.diagonal() == 1.0)
    hand = ops.box_iou(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 0, 15, 10], [10.0, 10, 20, 20]]))
    assert hand.tolist() == [[pytest.approx(1 / 3), 0.0]]
