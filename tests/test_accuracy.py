"""Accuracy instruments: run-vs-run agreement (the gate), COCO conversion and evaluation, resumable COCO
runs, AP over resampled images and the gate's interval verdict (blendstudy.measure.agreement,
blendstudy.measure.bootstrap_ap, blendstudy.coco)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from blendstudy.coco.convert import coco_from_dict, detections_to_coco
from blendstudy.coco.evaluate import compare_ap, evaluate_coco
from blendstudy.coco.rle import decode_rle
from blendstudy.coco.run import RunMismatchError, run_coco_evaluation
from blendstudy.measure.agreement import (
    AccuracyReport,
    GateThresholds,
    ap_verdict,
    box_iou_matrix,
    compare_runs,
    match_instances,
)
from blendstudy.measure.bootstrap_ap import paired_ap_change, resample_weights, resampled_ap
from blendstudy.measure.pixels import resize_difference
from blendstudy.structures import Detections


def make_det(boxes, scores, classes, size=(40, 40), masks=None) -> Detections:
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        scores=torch.tensor(scores, dtype=torch.float32).reshape(-1),
        classes=torch.tensor(classes, dtype=torch.int64).reshape(-1),
        image_size=size,
        masks=None if masks is None else torch.as_tensor(masks, dtype=torch.bool),
    )


def box_masks(boxes, size=(40, 40)) -> np.ndarray:
    m = np.zeros((len(boxes), *size), dtype=bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        m[k, int(y0):int(y1), int(x0):int(x1)] = True
    return m


# ----------------------------------------------------------------------------- compare_runs


def test_box_iou_matrix_hand_values():
    iou = box_iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[2, 0, 12, 10], [20, 20, 30, 30]]))
    assert iou[0, 0] == pytest.approx(80 / 120)
    assert iou[0, 1] == 0.0
    assert box_iou_matrix(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)


def test_identical_runs():
    boxes = [[0, 0, 10, 10], [15, 15, 30, 35]]
    run = {"img1": make_det(boxes, [0.9, 0.6], [1, 2], masks=box_masks(boxes)),
           "img2": make_det([[5, 5, 20, 20]], [0.4], [0], masks=box_masks([[5, 5, 20, 20]]))}
    rep = compare_runs(run, run)
    assert rep.images == 2 and rep.matched == 3 == rep.ref_instances == rep.test_instances
    assert rep.mean_box_iou == pytest.approx(1.0) and rep.min_box_iou == pytest.approx(1.0)
    assert rep.mean_score_diff == 0.0 and rep.max_score_diff == 0.0
    assert rep.class_agreement == 1.0
    assert rep.mean_mask_iou == pytest.approx(1.0)
    assert rep.unmatched_ref == rep.unmatched_test == rep.lost_above == 0
    assert rep.passes_gate()
    assert len(rep.per_image) == 2 and list(rep.per_image_frame()["image"]) == ["img1", "img2"]
    json.dumps(rep.to_dict())


def test_shifted_box_lowers_iou_by_hand_computed_amount():
    ref = {"a": make_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 1])}
    # second box shifted 2 px right: intersection 8*10, union 12*10 -> IoU 2/3; scores +0.05
    test = {"a": make_det([[0, 0, 10, 10], [22, 20, 32, 30]], [0.9, 0.85], [0, 3])}
    rep = compare_runs(ref, test)
    assert rep.matched == 2
    assert rep.min_box_iou == pytest.approx(2 / 3)
    assert rep.mean_box_iou == pytest.approx((1 + 2 / 3) / 2)
    assert rep.max_score_diff == pytest.approx(0.05, abs=1e-6)
    assert rep.mean_score_diff == pytest.approx(0.025, abs=1e-6)
    assert rep.class_agreement == 0.5
    assert rep.mean_mask_iou is None  # no masks on either side
    assert not rep.passes_gate()  # mean IoU 0.83 < 0.99
    assert rep.passes_gate(min_mean_iou=0.8)


def test_dropped_high_score_instance_is_lost():
    ref = {"a": make_det([[0, 0, 10, 10], [20, 20, 30, 30], [0, 20, 5, 30]], [0.9, 0.8, 0.1], [0, 0, 0]),
           "only_ref": make_det([[0, 0, 1, 1]], [0.5], [0])}
    test = {"a": make_det([[0, 0, 10, 10]], [0.9], [0]),
            "only_test": make_det([[0, 0, 1, 1]], [0.5], [0])}
    rep = compare_runs(ref, test, gate_score=0.3)
    assert rep.images == 1
    assert rep.unmatched_ref == 2 and rep.unmatched_test == 0
    assert rep.lost_above == 1  # the 0.8 one; the 0.1 one is below the gate
    assert rep.only_in_ref == ["only_ref"] and rep.only_in_test == ["only_test"]
    assert not rep.passes_gate()
    assert not rep.passes_gate(max_lost=1)  # images missing on one side
    assert rep.passes_gate(max_lost=1, allow_missing_images=True)


def test_match_instances_greedy_by_reference_score():
    # both reference boxes overlap test box 0; the higher-scoring reference (index 1) gets it
    ref = make_det([[0, 0, 10, 10], [0, 0, 10, 11]], [0.3, 0.9], [0, 0])
    test = make_det([[0, 0, 10, 11], [50, 50, 60, 60]], [0.5, 0.5], [0, 0])
    matches = match_instances(ref, test, iou_thresh=0.5)
    assert [(m.ref_index, m.test_index) for m in matches] == [(1, 0)]
    assert matches[0].box_iou == pytest.approx(1.0)
    assert match_instances(ref, make_det([], [], []), 0.5) == []


# ----------------------------------------------------------------------------- COCO evaluation

CATS = [{"id": 1, "name": "one"}, {"id": 3, "name": "three"}]
CONTIG = [1, 3]  # contiguous 0 -> category 1, 1 -> category 3


def _ann(ann_id, image_id, cat, x, y, w, h):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
            "area": float(w * h), "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _gt_dict():
    # 40x40 boxes: COCO "medium" area (32^2 .. 96^2)
    return {
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "1.png"},
                   {"id": 2, "width": 100, "height": 100, "file_name": "2.png"}],
        "categories": CATS,
        "annotations": [_ann(1, 1, 1, 10, 10, 40, 40), _ann(2, 1, 3, 55, 55, 40, 40),
                        _ann(3, 2, 1, 20, 30, 40, 40)],
    }


@pytest.fixture(scope="module")
def gt():
    return coco_from_dict(_gt_dict())


def _gt_detections(gt, image_id, shift=0) -> Detections:
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
    boxes = [[a["bbox"][0] + shift, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift,
              a["bbox"][1] + a["bbox"][3]] for a in anns]
    img = gt.imgs[image_id]
    size = (img["height"], img["width"])
    masks = np.stack([np.roll(decode_rle([gt.annToRLE(a)], size)[0], shift, axis=1) for a in anns])
    classes = [CONTIG.index(a["category_id"]) for a in anns]
    scores = [1.0 - 0.1 * k for k in range(len(anns))]
    return make_det(boxes, scores, classes, size=size, masks=masks)


def test_detections_to_coco_layout(gt):
    recs = detections_to_coco(_gt_detections(gt, 1), 1, CONTIG)
    assert [r["category_id"] for r in recs] == [1, 3]
    assert recs[0]["bbox"] == [10.0, 10.0, 40.0, 40.0]
    assert recs[0]["score"] == 1.0 and recs[0]["image_id"] == 1
    assert isinstance(recs[0]["segmentation"]["counts"], str)
    json.dumps(recs)
    # a dict mapping works too, and no masks -> no segmentation
    d = make_det([[0, 0, 4, 4]], [0.5], [1])
    assert detections_to_coco(d, 7, {0: 1, 1: 3}) == [
        {"image_id": 7, "category_id": 3, "bbox": [0.0, 0.0, 4.0, 4.0], "score": 0.5}]


def test_coco_ap_perfect_predictions(gt):
    preds = [r for i in (1, 2) for r in detections_to_coco(_gt_detections(gt, i), i, CONTIG)]
    m = evaluate_coco(gt, preds, score_thresh=0.05)
    for t in ("bbox", "segm"):
        assert m[t].AP == pytest.approx(100.0)
        assert m[t].AP50 == pytest.approx(100.0) and m[t].APm == pytest.approx(100.0)
        assert math.isnan(m[t].APs) and math.isnan(m[t].APl)  # no small / large ground truth
        assert m[t].num_images == 2 and m[t].num_detections == 3
        assert m[t].detections_per_image == pytest.approx(1.5)
        assert m[t].score_thresh == 0.05 and m[t].max_dets == 100
        assert "Average Precision" in m[t].summary
    assert "image_id" in preds[0] and "area" not in preds[0]  # caller's list not modified
    json.dumps(m["bbox"].to_dict())


def test_coco_ap_shifted_predictions(gt):
    # a 4 px shift of a 40 px box: IoU = 36/44 = 0.818 -> matched at IoU thresholds
    # 0.50, 0.55, ..., 0.80 (7 of 10), missed at 0.85..0.95 -> AP = 70, AP50 = 100, AP75 = 100
    preds = [r for i in (1, 2) for r in detections_to_coco(_gt_detections(gt, i, shift=4), i, CONTIG)]
    m = evaluate_coco(gt, preds)
    for t in ("bbox", "segm"):
        assert m[t].AP == pytest.approx(70.0)
        assert m[t].AP50 == pytest.approx(100.0)
        assert m[t].AP75 == pytest.approx(100.0)


def test_coco_eval_restricted_to_predicted_images(gt):
    preds = detections_to_coco(_gt_detections(gt, 1), 1, CONTIG)
    only1 = evaluate_coco(gt, preds, iou_types=("bbox",))["bbox"]
    assert only1.num_images == 1 and only1.num_gt_images == 2
    assert only1.AP == pytest.approx(100.0)
    # image 2 processed but nothing found: its ground truth counts as missed.
    # category 1: recall 0.5 at precision 1 -> 51 of 101 recall points; category 3: 1.0
    both = evaluate_coco(gt, preds, iou_types=("bbox",), image_ids=[1, 2])["bbox"]
    assert both.num_images == 2
    assert both.AP == pytest.approx(100 * (51 / 101 + 1) / 2)
    empty = evaluate_coco(gt, [], iou_types=("bbox",), image_ids=[1])["bbox"]
    assert empty.AP == 0.0 and empty.num_detections == 0


# ---- the AP part of the accuracy gate (compare_runs with ground truth)
@pytest.fixture
def gt_dataset(gt, tmp_path):
    from blendstudy.data.coco import CocoDataset

    (tmp_path / "images").mkdir()
    ann = tmp_path / "bench.json"
    ann.write_text(json.dumps(_gt_dict()))
    return CocoDataset(ann, tmp_path / "images")


def test_gate_with_ground_truth_identical_runs(gt, gt_dataset):
    run = {f"{i}.png": _gt_detections(gt, i) for i in (1, 2)}
    rep = compare_runs(run, dict(run), ap=compare_ap(run, dict(run), gt_dataset))
    assert rep.ap is not None and rep.ap.images == 2
    assert rep.ap.ref == rep.ap.test == {"bbox": pytest.approx(100.0), "segm": pytest.approx(100.0)}
    assert rep.ap.change == {"bbox": 0.0, "segm": 0.0}
    assert rep.passes_gate()


def test_gate_fails_on_an_ap_change_the_instance_check_lets_through(gt, gt_dataset):
    ref = {f"{i}.png": _gt_detections(gt, i) for i in (1, 2)}
    # a 4 px shift: box IoU 0.818 per instance, AP 100 -> 70 (see test_coco_ap_shifted_predictions)
    test = {f"{i}.png": _gt_detections(gt, i, shift=4) for i in (1, 2)}
    rep = compare_runs(ref, test, ap=compare_ap(ref, test, gt_dataset))
    assert rep.ap.change["bbox"] == pytest.approx(-30.0) and rep.ap.change["segm"] == pytest.approx(-30.0)
    assert rep.passes_gate(min_mean_iou=0.8, max_ap_change=None)  # the instances alone pass at 0.8
    assert not rep.passes_gate(min_mean_iou=0.8)  # the default AP bound is the 0.3 points
    assert not rep.passes_gate(min_mean_iou=0.8, max_ap_change=0.3)
    assert rep.passes_gate(min_mean_iou=0.8, max_ap_change=30.5)
    # without ground truth there is no AP and no AP check
    assert compare_runs(ref, test).ap is None


def test_gate_ap_without_masks_is_bbox_only_and_unknown_images_are_named(gt, gt_dataset):
    plain = {f"{i}.png": make_det(_gt_detections(gt, i).boxes.tolist(), [0.9] * len(_gt_detections(gt, i)),
                                  _gt_detections(gt, i).classes.tolist(), size=(100, 100)) for i in (1, 2)}
    rep = compare_runs(plain, plain, ap=compare_ap(plain, plain, gt_dataset))
    assert set(rep.ap.ref) == {"bbox"}
    with pytest.raises(ValueError, match="bench.json.*9.png"):
        compare_ap({"9.png": plain["1.png"]}, {"9.png": plain["1.png"]}, gt_dataset)


def test_accuracy_report_round_trips_through_json(gt, gt_dataset):
    ref = {f"{i}.png": _gt_detections(gt, i) for i in (1, 2)}
    test = {f"{i}.png": _gt_detections(gt, i, shift=4) for i in (1, 2)}
    rep = compare_runs(ref, test, ap=compare_ap(ref, test, gt_dataset))
    back = AccuracyReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert back.ap.change == pytest.approx(rep.ap.change)
    assert back.mean_box_iou == pytest.approx(rep.mean_box_iou)
    assert [r.image for r in back.per_image] == ["1.png", "2.png"]
    assert back.passes_gate(0.8) == rep.passes_gate(0.8) is False


def test_coco_eval_caps_detections_per_image(gt):
    preds = detections_to_coco(_gt_detections(gt, 1), 1, CONTIG)
    junk = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 2.0, 2.0], "score": 0.01}] * 12
    m = evaluate_coco(gt, preds + junk, iou_types=("bbox",), max_dets=10)["bbox"]
    assert m.num_detections == 10 and m.dropped_by_max_dets == 4
    assert m.AP == pytest.approx(100.0)


# ----------------------------------------------------------------------------- resumable run

IDS = [11, 12, 13, 14, 15, 16]
BAD = 14


class FakeReadError(ValueError):
    pass


@pytest.fixture(scope="module")
def small_gt():
    return coco_from_dict({
        "images": [{"id": i, "width": 32, "height": 32, "file_name": f"img_{i}.png"} for i in IDS],
        "categories": CATS,
        "annotations": [_ann(i, i, CATS[i % 2]["id"], 2 + (i % 5), 3, 12 + (i % 4), 10) for i in IDS],
    })


def _read(path):
    image_id = int(Path(path).stem.split("_")[1])
    if image_id == BAD:
        raise FakeReadError(f"{path}: cannot decode image")
    return np.full((32, 32, 3), image_id, dtype=np.uint8)


def _make_predict(gt, calls, interrupt_at=None):
    def predict(image):
        image_id = int(image[0, 0, 0])
        calls.append(image_id)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        det = _gt_detections(gt, image_id)
        # one extra low-score instance below the threshold, which must be filtered out
        return make_det(det.boxes.tolist() + [[0, 0, 3, 3]], det.scores.tolist() + [0.01],
                        det.classes.tolist() + [0], size=det.image_size,
                        masks=np.concatenate([det.masks.numpy(), box_masks([[0, 0, 3, 3]], (32, 32))]))
    return predict


def _run(gt, out_dir, predict, **kw):
    return run_coco_evaluation(IDS, lambda i: f"/nonexistent/img_{i}.png", predict, gt, CONTIG, out_dir,
                               score_thresh=0.05, read=_read, progress=False, **kw)


def _jsonl_ids(path):
    return [json.loads(line)["image_id"] for line in Path(path).read_text().splitlines()]


def _chop_last_line(path, nbytes=7):
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[:-nbytes])


def test_run_coco_evaluation_resume_is_identical(small_gt, tmp_path):
    calls_a = []
    with pytest.warns(UserWarning, match="cannot decode"):
        full = _run(small_gt, tmp_path / "a", _make_predict(small_gt, calls_a))
    assert calls_a == [11, 12, 13, 15, 16]
    assert [s.image_id for s in full.skipped] == [BAD] and "cannot decode" in full.skipped[0].reason
    assert full.num_images == 5 and full.num_detections == 5 and full.resumed_from == 0
    assert full.metrics["bbox"].AP == pytest.approx(100.0)
    assert full.metrics["segm"].AP == pytest.approx(100.0)
    assert full.metrics["bbox"].num_images == 5
    assert len(full.first_call_ms) == 1 and full.timing is not None and full.timing.n == 4
    assert _jsonl_ids(full.paths.predictions_jsonl) == [11, 12, 13, 15, 16]
    assert _jsonl_ids(full.paths.skipped_jsonl) == [BAD]

    b = tmp_path / "b"
    calls_b = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            _run(small_gt, b, _make_predict(small_gt, calls_b, interrupt_at=4))
    assert calls_b == [11, 12, 13, 15]
    assert _jsonl_ids(b / "predictions.jsonl") == [11, 12, 13]
    # an interrupted write: the last lines of both files are cut short
    _chop_last_line(b / "predictions.jsonl")
    _chop_last_line(b / "per_image_timing.jsonl")

    calls_c = []
    with pytest.warns(UserWarning, match="truncated"):
        resumed = _run(small_gt, b, _make_predict(small_gt, calls_c))
    assert calls_c == [13, 15, 16]  # nothing done twice, nothing lost, the bad image not retried
    assert resumed.resumed_from == 3 and resumed.processed == 3
    assert (b / "coco_predictions.json").read_bytes() == (tmp_path / "a" / "coco_predictions.json").read_bytes()
    assert _jsonl_ids(b / "predictions.jsonl") == [11, 12, 13, 15, 16]
    assert _jsonl_ids(b / "per_image_timing.jsonl") == [11, 12, 13, 15, 16]
    assert _jsonl_ids(b / "skipped.jsonl") == [BAD]
    assert resumed.metrics["segm"].AP == pytest.approx(100.0)
    assert len(resumed.first_call_ms) == 2  # one per session
    timing = [json.loads(x) for x in (b / "per_image_timing.jsonl").read_text().splitlines()]
    assert set(timing[0]) >= {"image_id", "file", "ms", "num_detections"}
    assert all(t["num_detections"] == 1 for t in timing)
    json.dumps(resumed.to_dict())

    # a finished run resumes to a no-op; other settings in the same folder are refused
    again = _run(small_gt, b, _make_predict(small_gt, []))
    assert again.processed == 0 and again.resumed_from == 6
    with pytest.raises(ValueError, match="existing run"):
        run_coco_evaluation(IDS, lambda i: f"img_{i}.png", _make_predict(small_gt, []), small_gt,
                            CONTIG, b, score_thresh=0.5, read=_read, progress=False)
    with pytest.warns(UserWarning):
        fresh = _run(small_gt, b, _make_predict(small_gt, []), resume=False)
    assert fresh.processed == 5 and fresh.resumed_from == 0


def test_corrupt_middle_line_is_an_error(small_gt, tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"image_id": 11, "results": []}\n{broken\n'
                                           '{"image_id": 12, "results": []}\n')
    with pytest.raises(ValueError, match="corrupt line"):
        _run(small_gt, out, _make_predict(small_gt, []))


def test_run_coco_evaluation_resumes_only_the_same_pipeline(small_gt, tmp_path):
    out = tmp_path / "r"
    info = {"recipe": "p4", "weights_sha256": "aa", "code": "c1"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            _run(small_gt, out, _make_predict(small_gt, [], interrupt_at=3), run_info=info)
    assert json.loads((out / "run_config.json").read_text())["run_info"] == info
    assert _jsonl_ids(out / "predictions.jsonl") == [11, 12]
    # the same pipeline resumes
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same = _run(small_gt, out, _make_predict(small_gt, calls), run_info=dict(info))
    assert calls == [13, 15, 16] and same.resumed_from == 2 and same.discarded is None
    # other code: refused by default, nothing touched
    other = {**info, "code": "c2"}
    before = (out / "predictions.jsonl").read_bytes()
    with pytest.raises(RunMismatchError, match="existing run"):
        _run(small_gt, out, _make_predict(small_gt, []), run_info=other)
    assert (out / "predictions.jsonl").read_bytes() == before
    # ... or discarded with a warning and redone
    calls = []
    with pytest.warns(UserWarning, match="discarded"):
        fresh = _run(small_gt, out, _make_predict(small_gt, calls), run_info=other, on_mismatch="restart")
    assert calls == [11, 12, 13, 15, 16] and fresh.resumed_from == 0 and fresh.processed == 5
    assert fresh.discarded["run_info"] == info
    assert json.loads((out / "run_config.json").read_text())["run_info"] == other
    assert fresh.metrics["bbox"].AP == pytest.approx(100.0)
    with pytest.raises(ValueError, match="on_mismatch"):
        _run(small_gt, out, _make_predict(small_gt, []), on_mismatch="ignore")


class _Resizer:
    def __init__(self, fn):
        self.resize = fn


def test_resize_difference_in_grey_levels():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    ref = _Resizer(lambda im: torch.zeros((3, 2, 2), dtype=torch.uint8))
    # one value off by 2, one by 1 (of 12): mean 0.25, max 2, 2/12 differ
    got = torch.zeros((3, 2, 2))
    got[0, 0, 0], got[2, 1, 1] = 2.0, -1.0
    cand = _Resizer(lambda im: got)
    (row,) = resize_difference(ref, cand, {"x.png": image})
    assert row.image == "x.png" and row.size == "2x2"
    assert row.mean == pytest.approx(0.25) and row.max == 2.0
    assert row.differs == pytest.approx(2 / 12)
    assert row.p99 == pytest.approx(np.percentile([0] * 10 + [1, 2], 99))
    other = _Resizer(lambda im: torch.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match="x.png"):
        resize_difference(ref, other, {"x.png": image})


# ----------------------------------------------------------------------------- AP over resampled images
def _noisy_predictions(gt, seed=0):
    """COCO results near the ground truth of ``gt``: some instances missed, boxes jittered, scores
    on a coarse grid (ties across images), false positives and duplicates; box-shaped masks."""
    from blendstudy.coco.rle import encode_rle

    rng = np.random.default_rng(seed)
    cats = sorted(gt.getCatIds())
    preds = []
    for image_id in gt.getImgIds():
        info = gt.imgs[image_id]
        h, w = info["height"], info["width"]
        boxes = [(a["bbox"], a["category_id"]) for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
                 if rng.random() > 0.2]
        boxes += [(list(b), c) for b, c in boxes[:1]]  # a duplicate: a false positive at high IoU
        boxes += [([rng.uniform(0, w / 2), rng.uniform(0, h / 2), rng.uniform(4, w / 2), rng.uniform(4, h / 2)],
                   int(rng.choice(cats))) for _ in range(int(rng.integers(0, 3)))]
        for (x, y, bw, bh), cat in boxes:
            x, y = x + rng.normal(0, 2), y + rng.normal(0, 2)
            x0, y0 = int(np.clip(x, 0, w - 2)), int(np.clip(y, 0, h - 2))
            x1, y1 = int(np.clip(x + bw, x0 + 1, w)), int(np.clip(y + bh, y0 + 1, h))
            mask = np.zeros((1, h, w), dtype=bool)
            mask[0, y0:y1, x0:x1] = True
            preds.append({"image_id": image_id, "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0],
                          "score": float(np.round(rng.uniform(0.05, 1.0), 1)), "segmentation": encode_rle(mask)[0]})
    return preds


@pytest.fixture(scope="module")
def synthetic_gt(tmp_path_factory):
    from pycocotools.coco import COCO

    from blendstudy.data.synthetic import synthetic_split

    ann, _ = synthetic_split(tmp_path_factory.mktemp("synthetic"), "ap", 16, seed=5, image_size=(96, 128),
                             objects_per_image=(1, 8))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann))


@pytest.mark.parametrize("max_dets", [100, 3])
def test_resampled_ap_of_every_image_once_is_cocoevals_ap(synthetic_gt, gt, max_dets):
    for truth, preds in ((synthetic_gt, _noisy_predictions(synthetic_gt)),
                         (gt, detections_to_coco(_gt_detections(gt, 1, shift=4), 1, CONTIG)
                          + detections_to_coco(_gt_detections(gt, 2), 2, CONTIG))):
        records = {}
        metrics = evaluate_coco(truth, preds, max_dets=max_dets, image_ids=truth.getImgIds(), per_image=records)
        for t in ("bbox", "segm"):
            ones = np.ones((1, len(records[t].image_ids)), dtype=int)
            assert resampled_ap(records[t], ones)[0] == metrics[t].AP  # exactly: the same pooling
            assert 0 < metrics[t].AP < 100


def test_an_image_drawn_twice_counts_twice(gt):
    """Weights (2, 1) over images (1, 2) give COCOeval's AP on a dataset where image 1 is there twice."""
    doubled = _gt_dict()
    doubled["images"].append({**doubled["images"][0], "id": 3, "file_name": "3.png"})
    doubled["annotations"] += [{**a, "id": 10 + a["id"], "image_id": 3} for a in doubled["annotations"]
                               if a["image_id"] == 1]
    truth3 = coco_from_dict(doubled)
    first, second = _gt_detections(gt, 1, shift=4), _gt_detections(gt, 2)
    junk = make_det([[60, 60, 90, 90]], [0.95], [0], size=(100, 100), masks=box_masks([[60, 60, 90, 90]], (100, 100)))
    # scores differ between images: detections of different images with equal scores are pooled in
    # evaluation order (COCOeval: in the doubled dataset's order), the resample draws aside
    second = Detections(torch.cat([second.boxes, junk.boxes]), torch.cat([second.scores - 0.03, junk.scores]),
                        torch.cat([second.classes, junk.classes]), (100, 100), torch.cat([second.masks, junk.masks]))
    preds = detections_to_coco(first, 1, CONTIG) + detections_to_coco(second, 2, CONTIG)
    records = {}
    evaluate_coco(gt, preds, per_image=records)
    expected = evaluate_coco(truth3, preds + detections_to_coco(first, 3, CONTIG))
    for t in ("bbox", "segm"):
        assert resampled_ap(records[t], np.array([[2, 1]]))[0] == pytest.approx(expected[t].AP, rel=1e-12)
        # image 2 alone has no category-3 ground truth: AP over category 1 only
        alone = evaluate_coco(gt, detections_to_coco(second, 2, CONTIG), image_ids=[2])[t].AP
        assert resampled_ap(records[t], np.array([[0, 3]]))[0] == pytest.approx(alone, rel=1e-12)


def test_resample_weights_are_seeded_draws_with_replacement():
    w = resample_weights(7, 50, seed=3)
    assert w.shape == (50, 7) and (w.sum(axis=1) == 7).all() and (w >= 0).all()
    assert (w == resample_weights(7, 50, seed=3)).all() and not (w == resample_weights(7, 50, seed=4)).all()


def test_paired_ap_change_interval(synthetic_gt):
    preds = _noisy_predictions(synthetic_gt)
    worse = [{**p, "score": p["score"] * 0.5} if p["image_id"] % 2 else p for p in preds]  # reorders the pool
    ids = synthetic_gt.getImgIds()
    recs = [{}, {}]
    aps = [evaluate_coco(synthetic_gt, run, ("bbox",), image_ids=ids, per_image=r)["bbox"].AP
           for run, r in zip((preds, worse), recs)]
    assert paired_ap_change(recs[0]["bbox"], recs[0]["bbox"], n_boot=200) == (0.0, 0.0)
    low, high = paired_ap_change(recs[0]["bbox"], recs[1]["bbox"], n_boot=500, seed=1)
    assert low < aps[1] - aps[0] < high and low < high
    assert paired_ap_change(recs[0]["bbox"], recs[1]["bbox"], n_boot=500, seed=1) == (low, high)  # seeded
    ones = np.ones((1, len(ids)), dtype=int)
    assert resampled_ap(recs[1]["bbox"], ones)[0] - resampled_ap(recs[0]["bbox"], ones)[0] == aps[1] - aps[0]


def test_ap_verdict_by_the_interval():
    assert ap_verdict(-0.1, [-0.25, 0.05], 0.3) == "pass"
    assert ap_verdict(-0.33, [-0.6, -0.05], 0.3) == "inconclusive"  # straddles the bound
    assert ap_verdict(-0.1, [-0.31, 0.1], 0.3) == "inconclusive"
    assert ap_verdict(-0.8, [-1.1, -0.4], 0.3) == "fail" and ap_verdict(0.8, [0.4, 1.2], 0.3) == "fail"
    assert ap_verdict(-0.8, None, 0.3) == "fail" and ap_verdict(0.2, None, 0.3) == "pass"  # no interval
    assert ap_verdict(float("nan"), None, 0.3) == "pass"  # no ground truth: nothing to check


def test_gate_verdict_is_decided_by_the_interval_and_recorded(gt, gt_dataset):
    ref = {f"{i}.png": _gt_detections(gt, i) for i in (1, 2)}
    rep = compare_runs(ref, dict(ref), ap=compare_ap(ref, dict(ref), gt_dataset, n_boot=100))
    assert rep.ap.change_ci == {"bbox": [0.0, 0.0], "segm": [0.0, 0.0]}
    assert rep.decide(GateThresholds()) is True and rep.verdict == "pass"
    rep.ap.change_ci = {"bbox": [-0.6, 0.1], "segm": [0.0, 0.0]}
    assert rep.decide(GateThresholds()) is False and rep.verdict == "inconclusive"
    assert not rep.passes_gate()
    rep.ap.change_ci["segm"] = [-0.9, -0.4]
    assert rep.decide(GateThresholds()) is False and rep.verdict == "fail"
    rep.ap.change_ci = {"bbox": [-0.6, 0.1], "segm": [0.0, 0.0]}
    rep.lost_above = 1  # an instance criterion fails whatever the AP says
    assert rep.decide(GateThresholds()) is False and rep.verdict == "fail"
    rep.lost_above = 0
    rep.decide(GateThresholds())
    data = json.loads(json.dumps(rep.to_dict()))
    assert data["verdict"] == "inconclusive" and data["ap_change_ci"] == {"bbox": [-0.6, 0.1], "segm": [0.0, 0.0]}
    back = AccuracyReport.from_dict(data)
    assert back.verdict == "inconclusive" and back.gate is False and back.ap_change_ci == rep.ap_change_ci
    # a report written before verdicts had three values (no verdict, no interval) still loads
    for key in ("verdict", "ap_change_ci"):
        data.pop(key)
    for key in ("change_ci", "confidence", "n_boot", "seed"):
        data["ap"].pop(key)
    old = AccuracyReport.from_dict(data)
    assert old.verdict is None and old.ap_change_ci is None and old.gate is False
    assert old.judge() == "pass"  # without an interval the change itself decides: 0 points
