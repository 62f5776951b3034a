"""blendstudy.model: every shipped config builds and runs; head/backbone variants build and run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blendstudy.config import ConfigError, list_shipped_configs, load_config
from blendstudy.model import build_model
from blendstudy.model.fcos import FCOSHead
from blendstudy.pipeline import Pipeline
from blendstudy.structures import Detections
from conftest import fixture

IMAGE_HW = (96, 128)
#: cheap decode for random weights: fewer candidates and instances than the defaults
CHEAP = {"MODEL.FCOS.PRE_NMS_TOPK_TEST": 200, "MODEL.FCOS.POST_NMS_TOPK_TEST": 10}
UNSUPPORTED = {"BlendMask/R_101_dcni3_5x"}   # deformable convolutions are not implemented
NOT_RUN = {"BlendMask/R_101_3x"}             # built and counted only (55M parameters)


@pytest.fixture(autouse=True)
def seeded():
    """Random weights come from torch's global generator: the same model in every run."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, IMAGE_HW + (3,), dtype=np.uint8)


def fixture_config(overrides=None):
    path = fixture("adelaidet_blendmask_small", "config.yaml")
    return load_config(path, overrides={**CHEAP, **(overrides or {})})


def run_and_check(model, image: np.ndarray) -> Detections:
    """One forward through the pipeline, and consistency checks on the result. Random weights
    are nudged so that instances come out: the classification prior is removed (scores ~0.25)
    and the box regression biased to 1 stride per side (boxes 2 strides wide, never empty)."""
    head = model.proposal_generator.fcos_head
    with torch.no_grad():
        head.cls_logits.bias.zero_()
        head.bbox_pred.bias.fill_(1.0)
    det = Pipeline(model, min_size=96, max_size=160)(image)
    h, w = image.shape[:2]
    n = len(det)
    assert n > 0, "no detections: nothing after the head was exercised"
    assert det.image_size == (h, w)
    assert det.boxes.shape == (n, 4) and det.boxes.dtype == torch.float32
    assert det.scores.shape == (n,) and det.scores.dtype == torch.float32
    assert det.classes.shape == (n,) and det.classes.dtype == torch.int64
    assert det.masks is not None
    assert det.masks.shape == (n, h, w) and det.masks.dtype == torch.bool
    assert torch.all((det.scores >= 0) & (det.scores <= 1))
    assert torch.all(det.scores[:-1] >= det.scores[1:])
    num_classes = model.proposal_generator.fcos_head.num_classes
    assert torch.all((det.classes >= 0) & (det.classes < num_classes))
    b = det.boxes
    assert torch.all((b[:, 0] >= 0) & (b[:, 2] <= w) & (b[:, 1] >= 0) & (b[:, 3] <= h))
    assert torch.all((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    # a pasted mask never reaches past its box (pixel centres outside get < 0.5 of the mask)
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    for i in range(n):
        x0, y0, x1, y1 = b[i].tolist()
        inside = (xs > x0 - 1) & (xs < x1 + 1) & (ys > y0 - 1) & (ys < y1 + 1)
        assert not bool((det.masks[i] & ~inside).any())
    return det


# ------------------------------------------------------------------------------------------------
# Shipped configs
# ------------------------------------------------------------------------------------------------

RUNNABLE = [name for name in list_shipped_configs() if name not in UNSUPPORTED | NOT_RUN]


@pytest.mark.parametrize("name", RUNNABLE)
def test_shipped_config_builds_and_runs(name, image):
    cfg = load_config(name, overrides=CHEAP)
    model = build_model(cfg)
    assert not model.training
    assert model.input_format == cfg.INPUT.FORMAT
    run_and_check(model, image)


def test_unsupported_config_value_is_refused():
    # deformable FCOS towers: no shipped BlendMask config uses them (R_101_dcni3_5x's deformable
    # ResNet stages are supported, tests/test_deform_conv.py)
    with pytest.raises(ConfigError, match="deformable FCOS towers"):
        load_config("BlendMask/R_50_1x", overrides={"MODEL.FCOS.USE_DEFORMABLE": True})


def test_r101_builds_with_the_official_layout():
    layout = {}
    for line in fixture("blendmask_R_101_3x_state_dict.tsv").read_text().splitlines():
        if line.strip():
            name, shape, _ = line.split("\t")
            layout[name] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    model = build_model(load_config("BlendMask/R_101_3x"))
    state = model.state_dict()
    assert len(state) == 634
    assert sum(v.numel() for v in state.values()) == 55_134_467
    assert {k: tuple(v.shape) for k, v in state.items()} == layout


# ------------------------------------------------------------------------------------------------
# The fixture model (narrow R-50) and variants of it
# ------------------------------------------------------------------------------------------------


def test_fixture_config_builds_and_runs(image):
    run_and_check(build_model(fixture_config()), image)


BN_HEADS = {
    # TOP_LEVELS: (IN_FEATURES, FPN_STRIDES, SIZES_OF_INTEREST)
    0: (["p3", "p4", "p5"], [8, 16, 32], [64, 128]),
    1: (["p3", "p4", "p5", "p6"], [8, 16, 32, 64], [64, 128, 256]),
    2: (["p3", "p4", "p5", "p6", "p7"], [8, 16, 32, 64, 128], [64, 128, 256, 512]),
}


@pytest.mark.parametrize("top_levels,share,cls_box", [(0, 2, 1), (1, 3, 0), (2, 0, 4)])
def test_bn_head_builds_and_runs(top_levels, share, cls_box, image):
    feats, strides, sizes = BN_HEADS[top_levels]
    cfg = fixture_config({
        "MODEL.FCOS.NORM": "BN", "MODEL.FCOS.NUM_SHARE_CONVS": share,
        "MODEL.FCOS.NUM_CLS_CONVS": cls_box, "MODEL.FCOS.NUM_BOX_CONVS": cls_box,
        "MODEL.FCOS.TOP_LEVELS": top_levels, "MODEL.FCOS.IN_FEATURES": feats,
        "MODEL.FCOS.FPN_STRIDES": strides, "MODEL.FCOS.SIZES_OF_INTEREST": sizes,
    })
    model = build_model(cfg)
    keys = set(model.state_dict())
    levels = len(feats)
    prefix = "proposal_generator.fcos_head."
    for tower, count in (("share_tower", share), ("cls_tower", cls_box), ("bbox_tower", cls_box)):
        for k in range(count):
            assert f"{prefix}{tower}.{3 * k}.weight" in keys
            for level in range(levels):
                for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    assert f"{prefix}{tower}.{3 * k + 1}.{level}.{p}" in keys
            assert f"{prefix}{tower}.{3 * k + 1}.{levels}.weight" not in keys
        assert not any(key.startswith(f"{prefix}{tower}.{3 * count}") for key in keys)
    assert not any("gn" in key or ".num_groups" in key for key in keys if key.startswith(prefix))
    assert ("backbone.top_block.p6.weight" in keys) == (top_levels >= 1)
    assert ("backbone.top_block.p7.weight" in keys) == (top_levels == 2)
    run_and_check(model, image)


def test_bn_head_uses_one_norm_per_level():
    torch.manual_seed(0)
    head = FCOSHead(32, num_classes=3, num_levels=2, num_cls_convs=1, num_box_convs=1,
                    num_share_convs=1, norm="BN").eval()
    with torch.no_grad():
        for tower in (head.share_tower, head.cls_tower, head.bbox_tower):
            tower[1][1].weight.zero_()   # level 1's BN outputs its bias (0): towers give zeros
            tower[1][1].bias.zero_()
        head.cls_logits.bias.fill_(0.25)
        out = head([torch.randn(1, 32, 6, 6), torch.randn(1, 32, 3, 3)], None)
    assert out.logits[0].std() > 0
    assert torch.all(out.logits[1] == 0.25)
    assert out.top_feats == []


@pytest.mark.parametrize("depth,last_blocks", [(18, {"res2": 2, "res5": 2}), (34, {"res4": 6, "res5": 3})])
def test_basic_block_resnets_build_and_run(depth, last_blocks, image):
    cfg = fixture_config({"MODEL.RESNETS.DEPTH": depth, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64})
    model = build_model(cfg)
    keys = set(model.state_dict())
    bu = "backbone.bottom_up."
    assert tuple(model.state_dict()[f"{bu}res2.0.conv1.weight"].shape) == (64, 64, 3, 3)
    assert f"{bu}res2.0.conv3.weight" not in keys            # basic blocks: two 3x3 convs
    assert f"{bu}res2.0.shortcut.weight" not in keys         # 64 -> 64: identity shortcut
    assert tuple(model.state_dict()[f"{bu}res3.0.shortcut.weight"].shape) == (128, 64, 1, 1)
    assert tuple(model.state_dict()[f"{bu}res5.0.conv2.weight"].shape) == (512, 512, 3, 3)
    for stage, blocks in last_blocks.items():
        assert f"{bu}{stage}.{blocks - 1}.conv1.weight" in keys
        assert f"{bu}{stage}.{blocks}.conv1.weight" not in keys
    assert tuple(model.state_dict()["backbone.fpn_lateral5.weight"].shape)[1] == 512
    run_and_check(model, image)


def test_basic_block_resnet_needs_64_res2_channels():
    cfg = fixture_config({"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 256})
    with pytest.raises((ValueError, ConfigError), match="RES2_OUT_CHANNELS"):
        build_model(cfg)


def _random_proposals(k: int, seed: int, num_bases: int = 4, attn: int = 14):
    from blendstudy.model.fcos import Proposals

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([150.0, 100.0]) - 10.0  # some boxes cross the border
    boxes = torch.cat([xy, xy + torch.rand(k, 2, generator=g) * 80 + 1], dim=1)
    if k >= 2:  # one box past the top-left corner, one past the bottom-right (the bases cover 160 x 120)
        boxes[0] = torch.tensor([-30.0, -25.0, 40.0, 30.0])
        boxes[-1] = torch.tensor([140.0, 100.0, 210.0, 170.0])
    return Proposals(boxes=boxes, scores=torch.rand(k, generator=g), classes=torch.zeros(k, dtype=torch.long),
                     top_feats=torch.randn(k, num_bases * attn * attn, generator=g),
                     levels=torch.zeros(k, dtype=torch.long), image_size=(120, 160))


@pytest.mark.parametrize("upsample", ["interpolate", "matmul"])
@pytest.mark.parametrize("counts", [[37], [0, 16, 5], [16], [3, 30]])
@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_blender_in_chunks_gives_the_same_masks(upsample, counts, sampling_ratio):
    from blendstudy.model.blender import Blender

    bases = torch.randn(len(counts), 4, 30, 40, generator=torch.Generator().manual_seed(3))
    props = [_random_proposals(k, i) for i, k in enumerate(counts)]
    # the boxes reach beyond the 160 x 120 pixels the bases cover: ROIAlign's outside mask matters
    assert any(bool((p.boxes[:, 2] > 170).any()) for p in props)
    whole = Blender(4, sampling_ratio=sampling_ratio)
    chunked = Blender(4, sampling_ratio=sampling_ratio)
    whole.upsample = chunked.upsample = upsample
    chunked.chunk = 16
    want, got = whole(bases, props), chunked(bases, props)
    assert [t.shape[0] for t in got] == counts
    for w, g in zip(want, got):
        assert g.shape[1:] == (56, 56)
        torch.testing.assert_close(g, w, atol=1e-6, rtol=0)
