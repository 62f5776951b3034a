"""The embedded default model (weights/tiny_synthetic.pth) and the training code that makes it."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

import blendstudy
from blendstudy import train as train_alias
from blendstudy.checkpoint import load_weights
from blendstudy.config import load_config
from blendstudy.data import generate_synthetic_coco, read_image
from blendstudy.data.coco import CocoDataset
from blendstudy.model import build_model
from blendstudy.model.fcos import compute_locations
from blendstudy.ops import box_iou
from blendstudy.pipeline import Pipeline
from blendstudy.training import cli
from blendstudy.training.losses import (
    centerness_targets,
    compute_losses,
    loss_settings,
    ltrb_giou,
    sigmoid_focal_loss,
)
from blendstudy.training.samples import TrainData, collate
from blendstudy.training.schedule import SCHEDULES, lr_at
from blendstudy.training.targets import INF, assign_targets, sizes_of_interest

PACKAGE = Path(blendstudy.__file__).resolve().parent
WEIGHTS = PACKAGE / "weights" / "tiny_synthetic.pth"
CONFIG = "BlendMask/Tiny_synthetic"
# images the shipped model is checked on: a seed used neither for training (0) nor validation (1)
CHECK_SEED = 2024
CHECK_IMAGES = 3


def test_config_loads_and_matches_dataset():
    cfg = load_config(CONFIG)
    assert cfg.MODEL.FCOS.NUM_CLASSES == 8 == cfg.MODEL.BASIS_MODULE.NUM_CLASSES
    assert cfg.MODEL.RESNETS.NORM == "BN"
    assert cfg.INPUT.MIN_SIZE_TEST <= 640 and cfg.INPUT.MAX_SIZE_TEST <= 640
    s = loss_settings(cfg)
    assert len(s.size_ranges) == len(cfg.MODEL.FCOS.IN_FEATURES)


def _two_levels():
    locs = [compute_locations(8, 8, 8, torch.device("cpu")), compute_locations(4, 4, 16, torch.device("cpu"))]
    ranges = sizes_of_interest([48], 2)
    return locs, ranges


def test_assign_targets_small_box_goes_to_p3_center_cells():
    locs, ranges = _two_levels()
    assert ranges == [(-1.0, 48.0), (48.0, INF)]
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0]])  # centre (24, 24)
    labels, reg, gt = assign_targets(locs, [8, 16], ranges, boxes, torch.tensor([3]), num_classes=8,
                                       radius=1.5)
    pos = torch.nonzero(labels != 8).squeeze(1)
    all_locs = torch.cat(locs)
    # centre region 24 +- 12 -> cells strictly inside (12, 36): x, y in {20, 28}, level 0 only
    assert sorted(map(tuple, all_locs[pos].tolist())) == [(20.0, 20.0), (20.0, 28.0), (28.0, 20.0), (28.0, 28.0)]
    assert (pos < 64).all()
    assert (labels[pos] == 3).all() and (gt[pos] == 0).all()
    assert (gt[labels == 8] == -1).all()
    k = int(pos[(all_locs[pos] == torch.tensor([20.0, 20.0])).all(1)][0])
    assert reg[k].tolist() == [1.5, 1.5, 2.5, 2.5]  # l, t, r, b in units of stride 8


def test_assign_targets_large_box_goes_to_p4_and_smaller_box_wins_overlaps():
    locs = [compute_locations(16, 16, 8, torch.device("cpu")), compute_locations(8, 8, 16, torch.device("cpu"))]
    ranges = sizes_of_interest([48], 2)
    boxes = torch.tensor([[4.0, 4.0, 124.0, 124.0], [50.0, 50.0, 78.0, 78.0]])
    labels, reg, gt = assign_targets(locs, [8, 16], ranges, boxes, torch.tensor([1, 5]), num_classes=8)
    all_locs = torch.cat(locs)
    big = torch.nonzero(gt == 0).squeeze(1)
    small = torch.nonzero(gt == 1).squeeze(1)
    # big box: max distance > 48 everywhere near its centre -> level 1 cells 56, 72 in x and y
    assert (big >= 256).all()
    assert sorted(map(tuple, all_locs[big].tolist())) == [(56.0, 56.0), (56.0, 72.0), (72.0, 56.0), (72.0, 72.0)]
    assert torch.allclose(reg[big[0]] * 16, torch.tensor([52.0, 52.0, 68.0, 68.0]))
    # the small box (centre 64) is on level 0 and labelled with its own class
    assert (small < 256).all() and len(small) == 4 and (labels[small] == 5).all()


def test_assign_targets_without_boxes_is_all_background():
    locs, ranges = _two_levels()
    labels, reg, gt = assign_targets(locs, [8, 16], ranges, torch.zeros((0, 4)),
                                       torch.zeros((0,), dtype=torch.int64), num_classes=8)
    assert (labels == 8).all() and (gt == -1).all() and reg.shape == (80, 4)


def test_losses_of_known_values():
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    ious, gious = ltrb_giou(t, t)
    assert torch.allclose(ious, torch.ones(1)) and torch.allclose(gious, torch.ones(1))
    assert torch.allclose(centerness_targets(torch.tensor([[1.0, 2.0, 1.0, 2.0]])), torch.ones(1))
    assert torch.allclose(centerness_targets(torch.tensor([[1.0, 1.0, 3.0, 1.0]])), torch.tensor([3 ** -0.5]))
    # focal loss of a confident right answer is ~0, of a confident wrong one large
    assert float(sigmoid_focal_loss(torch.tensor([10.0]), torch.tensor([1.0]))) < 1e-6
    assert float(sigmoid_focal_loss(torch.tensor([10.0]), torch.tensor([0.0]))) > 5


def test_one_training_step_is_finite(tmp_path):
    torch.manual_seed(0)
    ds = generate_synthetic_coco(tmp_path, 2, seed=3, image_size=(96, 128), objects_per_image=(2, 3),
                                 show_progress=False)
    coco = CocoDataset(ds.ann_file, ds.image_dir)
    cfg = load_config(CONFIG)
    data = TrainData(coco, [96], 128, cfg.MODEL.BLENDMASK.BOTTOM_RESOLUTION)
    samples = [data.load(i, np.random.default_rng(i)) for i in range(len(data))]
    assert samples[0].mask_targets.shape[1:] == (56, 56) and samples[0].mask_targets.max() == 1
    model = build_model(cfg).train()
    images, sizes = collate(samples, model)
    assert images.shape[-1] % 32 == 0 and sizes[0] == (96, 128)
    losses = compute_losses(model, images, samples, loss_settings(cfg))
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_basis_sem"}
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values())
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.top_layer.weight.grad is not None and model.top_layer.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# the shipped checkpoint


@pytest.fixture(scope="module")
def check_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_check")
    ds = generate_synthetic_coco(root, CHECK_IMAGES, seed=CHECK_SEED, split_name="check", show_progress=False)
    return CocoDataset(ds.ann_file, ds.image_dir)


def _failures(model, coco: CocoDataset) -> List[str]:
    """Every GT object of area >= 32^2 must be found: a detection of its class with box IoU >= 0.5,
    score >= 0.3 and mask IoU >= 0.5. Returns the objects that are not (empty = all found)."""
    cfg = load_config(CONFIG)
    pipe = Pipeline.from_config(cfg, model.eval())
    missed = []
    for image_id in coco.image_ids:
        det = pipe(read_image(coco.image_path(image_id), "BGR"))
        for ann in coco.annotations(image_id):
            if ann["area"] < 32 ** 2:
                continue
            x, y, w, h = ann["bbox"]
            gt_box = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
            gt_mask = torch.from_numpy(coco.coco.annToMask(ann).astype(bool))
            cls = coco.category_id_to_contiguous[ann["category_id"]]
            ok = False
            if len(det):
                ious = box_iou(det.boxes, gt_box)[:, 0]
                for k in torch.nonzero((det.classes == cls) & (det.scores >= 0.3) & (ious >= 0.5)).flatten():
                    m = det.masks[k]
                    miou = float((m & gt_mask).sum()) / max(float((m | gt_mask).sum()), 1.0)
                    if miou >= 0.5:
                        ok = True
                        break
            if not ok:
                missed.append(f"image {image_id} annotation {ann['id']} (class {cls}, area {ann['area']})")
    return missed


def _n_checked(coco: CocoDataset) -> int:
    return sum(a["area"] >= 32 ** 2 for i in coco.image_ids for a in coco.annotations(i))


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} not trained yet (make tiny-model)")
def test_shipped_checkpoint_loads_strictly_and_detects(check_set):
    cfg = load_config(CONFIG)
    model = build_model(cfg)
    report = load_weights(model, WEIGHTS, strict=True)
    assert report.ok and report.file_bytes <= 25 * 2 ** 20
    state = torch.load(str(WEIGHTS), map_location="cpu", weights_only=True)
    assert set(state) == {"model"}
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())
    assert _n_checked(check_set) >= 3
    missed = _failures(model, check_set)
    assert not missed, f"the shipped model misses {missed}"


def test_random_weights_fail_the_detection_check(check_set):
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG))
    assert len(_failures(model, check_set)) == _n_checked(check_set)


def test_training_metrics_record_is_consistent():
    meta = WEIGHTS.with_suffix(".json")
    if not (WEIGHTS.is_file() and meta.is_file()):
        pytest.skip(f"{WEIGHTS} / .json not trained yet (make tiny-model)")
    import json

    rec = json.loads(meta.read_text())
    assert rec["config"] == CONFIG and rec["val_split"]["num_images"] >= 200
    assert rec["val_split"]["seed"] != rec["train_split"]["seed"]
    for kind in ("bbox", "segm"):
        assert set(rec[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert 0 <= rec[kind]["AP"] <= 100


def test_cli_matches_the_makefile():
    mk = PACKAGE.parents[1] / "Makefile"
    if not mk.is_file():
        pytest.skip("no Makefile next to the package (installed elsewhere)")
    assert "-m blendstudy.training --schedule tiny --out lib/blendstudy/weights/tiny_synthetic.pth" in mk.read_text()
    with pytest.raises(SystemExit):
        cli.main(["--schedule", "nope"])


def test_old_command_and_flag_still_work():
    # `python -m blendstudy.train --recipe tiny` is the older spelling of the same command
    assert train_alias.main is cli.main
    for flag in ("--schedule", "--recipe"):
        assert cli.build_parser().parse_args([flag, "tiny"]).schedule == "tiny"
    with pytest.raises(SystemExit):
        train_alias.main(["--recipe", "nope"])


def test_lr_schedule_warms_up_and_decays():
    s = SCHEDULES["tiny"]
    assert lr_at(0, s) == pytest.approx(s.lr * 0.001)
    assert lr_at(s.warmup, s) == pytest.approx(s.lr)
    assert lr_at(s.iterations, s) == pytest.approx(s.lr * s.final_lr_frac)
