"""blendstudy.optimize: recipes as data, and every cheap switch against the reference pipeline on
the AdelaiDet fixture model in tests/fixtures (small inputs: min_size 256, max_size 400; compile recipes are
only built, never run)."""

from __future__ import annotations

import copy
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blendstudy.data.images import read_image
from blendstudy.loading import load_pipeline
from blendstudy.measure.agreement import compare_runs
from blendstudy.measure.pixels import resize_difference
from blendstudy.model.layers import ConvNorm
from blendstudy.optimize import (
    BLEND_CHUNK,
    PAD_MULTIPLE,
    RECIPES,
    RECOMPILE_LIMIT,
    STAGE_RECIPES,
    SWITCHES,
    HalfIO,
    build_pipeline,
    describe_recipes,
    fold_frozen_bn,
    half_dtype,
    recipe_switches,
)
from blendstudy.pipeline import Pipeline, PipelineOptions
from conftest import fixture

MIN_SIZE, MAX_SIZE = 256, 400
IMAGES = ["img0.png", "img1.png", "img2.png"]


# ---- recipes as data ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def avx512_cpu(monkeypatch):
    """The switches' mechanics are tested as on a CPU with AVX-512 (bf16 switches applied); that a
    CPU without it skips them with a reason is test_bf16_switches_skip_without_avx512."""
    from blendstudy import device as devmod

    monkeypatch.setattr(devmod, "cpu_capability", lambda: "AVX512")


def test_bf16_switches_skip_without_avx512(monkeypatch):
    from blendstudy import device as devmod
    from blendstudy.loading import load_pipeline

    monkeypatch.setattr(devmod, "cpu_capability", lambda: "AVX2")
    loaded = load_pipeline("BlendMask/Tiny_synthetic", "tiny_synthetic", "cpu")
    pipe = build_pipeline(loaded.pipeline, "p4+mixed_half")
    assert "no AVX-512" in pipe.recipe_info["skipped"]["mixed_half"]
    assert not any(isinstance(m, HalfIO) for m in pipe.model.modules())
    assert devmod.unsupported_switch(torch.device("cpu"), "fold_bn") is None


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_switches_of_every_recipe(recipe):
    names = recipe_switches(recipe)
    assert names == RECIPES[recipe]
    assert all(n in SWITCHES for n in names)
    assert len(set(names)) == len(names)
    names.append("x")  # a copy: the table itself is not handed out
    assert "x" not in RECIPES[recipe]


def test_recipe_switches_compound_and_list():
    assert recipe_switches("p4+half") == RECIPES["p4"] + ["half"]
    assert recipe_switches("p1+fold_bn+raw_masks") == RECIPES["p1"] + ["fold_bn", "raw_masks"]
    assert recipe_switches(["half", "pad64"]) == ["half", "pad64"]
    assert recipe_switches([]) == []


@pytest.mark.parametrize("bad, named", [("p9", "p9"), ("nope+half", "nope+half"), ("p4+warp", "warp"),
                                        (["half", "turbo"], "turbo")])
def test_unknown_recipe_or_switch_names_it(bad, named):
    with pytest.raises(ValueError, match=named.replace("+", r"\+")):
        recipe_switches(bad)


def test_stage_recipes_are_cumulative():
    assert STAGE_RECIPES == ["baseline", "p0", "p1", "p2", "p3", "p4"]
    for prev, cur in zip(STAGE_RECIPES, STAGE_RECIPES[1:]):
        p, c = recipe_switches(prev), recipe_switches(cur)
        assert c[: len(p)] == p, (prev, cur)
        assert len(c) == len(p) + 1, (prev, cur)
        assert SWITCHES[c[-1]].stage == cur.upper()


def test_describe_recipes_rows():
    rows = describe_recipes()
    assert [r["recipe"] for r in rows] == STAGE_RECIPES
    assert rows[0] == {"recipe": "baseline", "adds": "-", "stage": "-", "change": "reference", "skipped": "-"}
    for row, recipe in zip(rows[1:], STAGE_RECIPES[1:]):
        added = recipe_switches(recipe)[-1]
        assert row["adds"] == added
        assert row["stage"] == recipe.upper()
        assert row["change"] == SWITCHES[added].description
    extra = describe_recipes(["p4", "p4+half"])[1]
    assert extra["adds"] == "half" and extra["stage"] == "extra"
    # a switch the device cannot run is named with its reason, not a crash
    why = {"best_cpu": {"channels_last": "npu tensors must be contiguous"}}
    assert describe_recipes(["best_cpu"], why)[0]["skipped"] == "channels_last: npu tensors must be contiguous"


def test_a_switch_the_device_cannot_run_is_skipped_with_its_reason(monkeypatch):
    from blendstudy import device as devmod
    from blendstudy.loading import load_pipeline

    loaded = load_pipeline("BlendMask/Tiny_synthetic", "tiny_synthetic", "cpu")
    monkeypatch.setattr(devmod, "unsupported_switch",
                        lambda dev, name: "not on this device" if name == "channels_last" else None)
    pipe = build_pipeline(loaded.pipeline, "p4+channels_last")
    assert pipe.recipe_info["skipped"] == {"channels_last": "not on this device"}
    assert pipe.options.channels_last is False


def test_half_dtype():
    assert half_dtype(torch.device("cpu")) == "bfloat16"
    assert half_dtype(torch.device("cuda")) == "float16"


# ---- the fixture model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base() -> Pipeline:
    root = fixture("adelaidet_blendmask_small")
    torch.manual_seed(0)
    loaded = load_pipeline(root / "config.yaml", str(root / "model.pth"), "cpu", warn_random=False)
    return Pipeline(loaded.pipeline.model, MIN_SIZE, MAX_SIZE)


@pytest.fixture(scope="module")
def images():
    root = fixture("adelaidet_blendmask_small", "images")
    return {name: read_image(root / name) for name in IMAGES}


@pytest.fixture(scope="module")
def reference(base, images):
    """The baseline's detections on the three fixture images (computed once)."""
    torch.manual_seed(0)
    return {name: base(im) for name, im in images.items()}


def test_reference_detects_something(reference):
    assert all(len(d) > 0 for d in reference.values())


def _bn_after_conv(model):
    """BatchNorms directly after a plain conv inside nn.Sequential blocks (the basis module)."""
    return [(m, i) for m in model.modules() if isinstance(m, torch.nn.Sequential)
            for i in range(1, len(m)) if type(m[i - 1]) is torch.nn.Conv2d and isinstance(m[i], torch.nn.BatchNorm2d)]


def test_fold_frozen_bn_counts_and_removes_norms(base):
    model = copy.deepcopy(base.model)
    with_norm = sum(1 for m in model.modules() if isinstance(m, ConvNorm) and m.norm is not None)
    in_sequential = len(_bn_after_conv(model))
    assert with_norm > 0 and in_sequential > 0
    assert fold_frozen_bn(model) == with_norm + in_sequential
    assert all(m.norm is None for m in model.modules() if isinstance(m, ConvNorm))
    assert _bn_after_conv(model) == []
    assert fold_frozen_bn(model) == 0  # nothing left to fold


def test_fold_bn_of_a_sequential_block_is_exact():
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(5),
                                torch.nn.ReLU(), torch.nn.Conv2d(5, 4, 1), torch.nn.BatchNorm2d(4, affine=False))
    for bn in (block[1], block[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    block[1].weight.data.uniform_(0.5, 2)
    block[1].bias.data.uniform_(-1, 1)
    block.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = block(x)
        assert fold_frozen_bn(block) == 2
        assert isinstance(block[1], torch.nn.Identity) and isinstance(block[4], torch.nn.Identity)
        torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)
    train_bn = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5))  # training mode
    assert fold_frozen_bn(train_bn) == 0


def test_fold_bn_keeps_the_outputs(base, images, reference):
    torch.manual_seed(0)
    pipe = build_pipeline(base, ["fold_bn"])
    assert pipe.recipe_info["folded_bn"] > 0
    name = IMAGES[0]
    ref, got = reference[name], pipe(images[name])
    assert len(got) == len(ref)
    torch.testing.assert_close(got.boxes, ref.boxes, atol=1e-3, rtol=0)
    assert torch.equal(got.classes, ref.classes)
    rep = compare_runs({name: ref}, {name: got})
    assert rep.mean_box_iou > 0.999
    assert rep.unmatched_ref == rep.unmatched_test == 0


RECIPES_THAT_CHANGE_THE_MODEL = ["fold_bn", "half", "channels_last", "raw_masks", "pad64", "device_resize",
                                 "sync_free_decode"]


def test_build_pipeline_leaves_the_base_untouched(base, dynamo_limit):
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    norms = [m.norm for m in base.model.modules() if isinstance(m, ConvNorm)]
    options = asdict(base.options)
    built = build_pipeline(base, RECIPES_THAT_CHANGE_THE_MODEL)
    assert built.model is not base.model
    assert built.options is not base.options
    assert asdict(base.options) == options == asdict(PipelineOptions())
    after = base.model.state_dict()
    assert sorted(after) == sorted(state)
    for k, v in state.items():
        assert after[k].dtype == v.dtype, k
        assert torch.equal(after[k], v), k
    assert [m.norm for m in base.model.modules() if isinstance(m, ConvNorm)] == norms
    assert (base.min_size, base.max_size) == (built.min_size, built.max_size) == (MIN_SIZE, MAX_SIZE)
    # and the built one did change
    assert built.options.dtype == "bfloat16" and built.options.resize == "device"
    assert next(built.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("decode", [[], ["sync_free_decode"]])
def test_lazy_attention_gives_the_same_detections(base, images, reference, decode):
    pipe = build_pipeline(base, ["lazy_attention"] + decode)
    assert pipe.model.lazy_attention and not base.model.lazy_attention
    calls = []
    hook = pipe.model.top_layer.register_forward_hook(lambda *a: calls.append(1))
    try:
        got = {name: pipe(im) for name, im in images.items()}
    finally:
        hook.remove()
    assert calls == [], "the top layer must not run over the feature maps"
    rep = compare_runs(reference, got)
    assert rep.ref_instances == rep.test_instances == rep.matched > 0
    assert rep.mean_box_iou == 1.0 and rep.max_score_diff == 0.0  # boxes do not depend on the attention
    assert rep.mean_mask_iou > 0.999  # float rounding of the attention can flip a border pixel
    for name in IMAGES:
        torch.testing.assert_close(got[name].boxes, reference[name].boxes, atol=0, rtol=0)


def test_lazy_attention_head_keeps_the_towers_and_attends_only_kept_rows(base, images):
    pipe = build_pipeline(base, ["lazy_attention"])
    batch, size = pipe.prepare(images[IMAGES[0]])
    with torch.no_grad():
        feats = pipe.model.extract_features(batch)
        lazy = pipe.model.predict_head(feats)
        assert lazy.top_feats == [] and len(lazy.box_towers) == len(lazy.logits)
        props = pipe.decode(lazy, size)
        eager = base.model.predict_head(feats)
        assert eager.box_towers == [] and len(eager.top_feats) == len(eager.logits)
        ref = base.decode(eager, size)
    assert props.top_feats.shape == ref.top_feats.shape
    torch.testing.assert_close(props.top_feats, ref.top_feats, atol=1e-4, rtol=1e-4)


def test_blend_matmul_keeps_the_masks(base, images, reference):
    pipe = build_pipeline(base, ["blend_matmul"])
    assert pipe.model.blender.upsample == "matmul" and base.model.blender.upsample == "interpolate"
    got = {name: pipe(im) for name, im in images.items()}
    rep = compare_runs(reference, got)
    assert rep.ref_instances == rep.test_instances == rep.matched > 0
    assert rep.mean_box_iou == 1.0 and rep.max_score_diff == 0.0
    assert rep.mean_mask_iou > 0.999


def test_sync_free_decode_is_exact(base, images, reference):
    torch.manual_seed(0)
    pipe = build_pipeline(base, ["sync_free_decode"])
    assert pipe.options.decode == "sync_free"
    got = {name: pipe(im) for name, im in images.items()}
    for name, det in got.items():
        assert det.extras.get("decode_converged") is True, name
        assert "decode_fallback" not in det.extras, name
    rep = compare_runs(reference, got)
    assert rep.images == 3
    assert rep.ref_instances == rep.test_instances == rep.matched > 0
    assert rep.mean_box_iou == 1.0 and rep.min_box_iou == 1.0
    assert rep.max_score_diff == 0.0
    assert rep.class_agreement == 1.0
    assert rep.mean_mask_iou == 1.0
    assert rep.unmatched_ref == rep.unmatched_test == rep.lost_above == 0


def test_sync_free_decode_flags_a_too_small_candidate_set_and_falls_back(base, images, reference, monkeypatch):
    import blendstudy.model.decode_sync_free as dsf

    monkeypatch.setattr(dsf, "NMS_CANDIDATES", 20)  # fewer than the 100 detections to keep
    pipe = build_pipeline(base, ["sync_free_decode"])
    name = IMAGES[0]
    det = pipe(images[name])
    assert det.extras.get("decode_fallback") is True
    rep = compare_runs({name: reference[name]}, {name: det})
    assert rep.mean_box_iou == 1.0 and rep.max_score_diff == 0.0 and rep.unmatched_ref == rep.unmatched_test == 0


def test_device_resize_is_close_to_pil_when_enlarging(base, images):
    """The study's case (COCO's ~480x640 images enlarged to 800): bilinear either way."""
    from PIL import Image

    torch.manual_seed(0)
    pipe = build_pipeline(base, ["device_resize"])
    assert pipe.options.resize == "device"
    small = np.asarray(Image.fromarray(images[IMAGES[0]]).resize((240, 180), Image.BILINEAR))
    x = pipe.resize_device(pipe.to_device(pipe.resize_cpu(small)))
    assert x.dtype == (torch.uint8 if pipe.device.type == "cpu" else torch.float32)
    assert tuple(x.shape[-2:]) == base.target_size(180, 240) == (256, 341)
    ref, got = base(small), pipe(small)
    rep = compare_runs({"small": ref}, {"small": got})
    assert rep.matched > 0
    # bilinear on float pixels vs PIL's bilinear on uint8: close, not identical
    assert rep.mean_box_iou > 0.9


def _pil_vs_device_pixels(base, image):
    pipe = build_pipeline(base, ["device_resize"])
    pil = torch.from_numpy(base.resize_cpu(image).astype(np.float32)).permute(2, 0, 1)
    dev = pipe.resize_device(pipe.to_device(image))
    assert pil.shape == dev.shape
    return (pil - dev).abs().mean().item()


def test_device_resize_is_close_to_pil_when_shrinking(base, images):
    assert _pil_vs_device_pixels(base, images[IMAGES[0]]) < 1.0
    # what the P0 notebook shows: PIL's images against the device's, in grey levels
    rows = resize_difference(base, build_pipeline(base, ["device_resize"]), {n: images[n] for n in IMAGES})
    assert [r.image for r in rows] == IMAGES
    for r in rows:
        assert 0 < r.mean < 1.0 and r.max <= 2.0 and 0 < r.differs < 0.5


def test_cpu_device_resize_works_on_uint8_like_pil(base, images):
    """On a CPU the image is resized by the uint8 kernel: PIL's arithmetic, not float's."""
    pipe = build_pipeline(base, ["device_resize"])
    image = images[IMAGES[0]]
    pil = torch.from_numpy(base.resize_cpu(image).astype(np.float32)).permute(2, 0, 1)
    dev = pipe.resize_device(pipe.to_device(image))
    assert dev.dtype == torch.uint8  # whole grey levels, converted by normalize_pad
    diff = (pil - dev).abs()
    assert diff.max().item() <= 2.0 and diff.mean().item() < 0.2
    # the float path (what other devices run) is further from PIL
    x = pipe.to_device(image).float()[None]
    f = F.interpolate(x, size=tuple(dev.shape[-2:]), mode="bilinear", align_corners=False, antialias=True)[0]
    assert (pil - f).abs().mean().item() > diff.mean().item()


def test_cpu_device_resize_reads_the_image_in_place_and_normalises_uint8_exactly(base, images):
    """The CPU path: the HWC array is viewed, not copied; the uint8 resize output goes straight
    into normalize_pad, which gives the batch float(x) - mean would, bit for bit."""
    pipe = build_pipeline(base, ["device_resize", "channels_last"])
    image = np.ascontiguousarray(images[IMAGES[0]])
    t = pipe.to_device(image)
    if pipe.model.input_format == "BGR":
        assert t.data_ptr() == image.ctypes.data  # no copy
    assert tuple(t.shape) == (3,) + image.shape[:2]
    small = pipe.resize_device(t)
    batch, size = pipe.normalize_pad(small)
    ref, ref_size = pipe.normalize_pad(small.float().contiguous())
    assert size == ref_size and batch.dtype == ref.dtype == torch.float32
    assert torch.equal(batch, ref)
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_raw_masks_paste_on_demand(base, images, reference):
    torch.manual_seed(0)
    pipe = build_pipeline(base, ["raw_masks"])
    name = IMAGES[0]
    ref, got = reference[name], pipe(images[name])
    assert got.masks is None
    assert got.raw_masks is not None and got.raw_masks.dtype == torch.float32
    assert tuple(got.raw_masks.shape) == (len(ref), 56, 56)
    assert torch.equal(got.boxes, ref.boxes)
    full = got.full_masks()
    assert full.shape == ref.masks.shape and full.dtype == torch.bool
    for i in range(len(ref)):
        a, b = full[i], ref.masks[i]
        union = (a | b).sum().item()
        iou = (a & b).sum().item() / union if union else 1.0
        assert iou > 0.99, (i, iou)


def test_half_on_cpu_is_bfloat16_and_still_detects(base, images, reference):
    torch.manual_seed(0)
    pipe = build_pipeline(base, ["half"])
    assert pipe.options.dtype == "bfloat16" and pipe.dtype == torch.bfloat16
    assert next(pipe.model.parameters()).dtype == torch.bfloat16
    assert pipe.model.pixel_mean.dtype == pipe.model.pixel_std.dtype == torch.float32
    name = IMAGES[0]
    got = pipe(images[name])
    assert len(got) > 0
    assert got.boxes.dtype == got.scores.dtype == torch.float32
    rep = compare_runs({name: reference[name]}, {name: got})
    assert rep.matched > 0
    # the accuracy gate is reported, not required: bf16 has an 8-bit mantissa
    print(f"half (bf16) vs fp32 on {name}: mean box IoU {rep.mean_box_iou:.4f}, "
          f"max score diff {rep.max_score_diff:.4f}, lost above {rep.gate_score}: {rep.lost_above}, "
          f"gate {'passes' if rep.passes_gate() else 'fails'}")


def test_mixed_half_runs_the_feature_extractor_in_bf16_and_the_head_in_fp32(base, images, reference):
    pipe = build_pipeline(base, ["mixed_half", "fold_bn", "channels_last"])
    assert pipe.options.dtype == "float32"
    assert next(pipe.model.backbone.parameters()).dtype == torch.bfloat16
    assert next(pipe.model.basis_module.parameters()).dtype == torch.bfloat16
    assert next(pipe.model.proposal_generator.parameters()).dtype == torch.float32
    assert pipe.model.top_layer.weight.dtype == torch.float32
    assert pipe.model.size_divisibility == base.model.size_divisibility  # read through the wrapper
    batch, _ = pipe.prepare(images[IMAGES[0]])
    with torch.no_grad():
        feats = pipe.model.extract_features(batch)
        assert all(f.dtype == torch.float32 for f in feats.values())
        assert pipe.model.compute_bases(feats).dtype == torch.float32
    got = {name: pipe(im) for name, im in images.items()}
    rep = compare_runs(reference, got)
    assert rep.matched > 0 and rep.mean_box_iou > 0.95
    print(f"mixed_half (bf16 features) vs fp32: mean box IoU {rep.mean_box_iou:.4f}, lost {rep.lost_above}")
    with pytest.raises(ValueError, match="exclude each other"):
        build_pipeline(base, ["half", "mixed_half"])


def test_half_towers_runs_only_the_tower_convolutions_in_bf16(base, images, reference):
    pipe = build_pipeline(base, ["half_towers"])
    head = pipe.model.proposal_generator.fcos_head
    wrapped = [m for t in (head.share_tower, head.cls_tower, head.bbox_tower) for m in t if isinstance(m, HalfIO)]
    assert len(wrapped) == pipe.recipe_info["half_tower_convs"] > 0
    assert all(m.inner.weight.dtype == torch.bfloat16 for m in wrapped)
    assert not any(isinstance(m, torch.nn.Conv2d) for t in (head.cls_tower, head.bbox_tower) for m in t)
    norms = [m for t in (head.cls_tower, head.bbox_tower) for m in t if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    for pred in (head.cls_logits, head.bbox_pred, head.ctrness):
        assert pred.weight.dtype == torch.float32
    base_head = base.model.proposal_generator.fcos_head
    assert all(m.weight.dtype == torch.float32 for m in base_head.cls_tower if isinstance(m, torch.nn.Conv2d))
    batch, _ = pipe.prepare(images[IMAGES[0]])
    with torch.no_grad():
        out = pipe.model.predict_head(pipe.model.extract_features(batch))
    assert all(t.dtype == torch.float32 for t in out.logits + out.box_reg + out.ctrness)
    got = {name: pipe(im) for name, im in images.items()}
    rep = compare_runs(reference, got)
    assert rep.matched > 0 and rep.mean_box_iou > 0.95
    with pytest.raises(ValueError, match="exclude each other"):
        build_pipeline(base, ["half", "half_towers"])


def test_pad64_sets_pad_multiple_and_recompile_limit(base, dynamo_limit):
    from blendstudy.device import recompile_limit_knob

    knob = recompile_limit_knob()
    before = getattr(dynamo_limit, knob)
    pipe = build_pipeline(base, ["pad64"])
    assert pipe.options.pad_multiple == PAD_MULTIPLE == 64
    assert pipe.options.recompile_limit == RECOMPILE_LIMIT == 32  # for the compiled parts' calls
    assert pipe.pad_multiple == 64
    assert base.pad_multiple == base.model.size_divisibility
    assert getattr(dynamo_limit, knob) == before  # building a recipe sets nothing process-wide
    batch, (h, w) = pipe.normalize_pad(torch.zeros(3, 100, 130))
    assert tuple(batch.shape) == (1, 3, 128, 192) and (h, w) == (100, 130)


def test_channels_last(base):
    pipe = build_pipeline(base, ["channels_last"])
    assert pipe.options.channels_last
    batch, _ = pipe.normalize_pad(torch.zeros(3, 64, 64))
    assert batch.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_p3_compiles_the_backbone_without_running_it(base, dynamo_limit):
    from torch._dynamo.eval_frame import OptimizedModule

    pipe = build_pipeline(base, "p3")
    assert isinstance(pipe.model.backbone, OptimizedModule)
    assert not isinstance(base.model.backbone, OptimizedModule)
    info = pipe.recipe_info["compile"]
    assert info.backend == "inductor" and info.targets == ["backbone"]
    assert pipe.options.resize == "device" and pipe.options.decode == "sync_free"
    assert pipe.options.pad_multiple == 0  # pad64 is P4


def test_blend_chunks_keeps_the_masks(base, images, reference):
    pipe = build_pipeline(base, ["blend_chunks"])
    assert pipe.model.blender.chunk == BLEND_CHUNK and base.model.blender.chunk is None
    got = {name: pipe(im) for name, im in images.items()}
    rep = compare_runs(reference, got)
    assert rep.ref_instances == rep.test_instances == rep.matched > 0
    assert rep.mean_box_iou == 1.0 and rep.max_score_diff == 0.0
    assert rep.mean_mask_iou > 0.9999
