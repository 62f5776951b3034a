"""Deformable convolution (issue 15): the plain-PyTorch op against a definitional reference, the
kernel choice, the R_101_dcni3_5x model's checkpoint names, and the optimize switches on DCN blocks."""

from __future__ import annotations

import copy
import math
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blendstudy.checkpoint import compare_state_dict, load_weights, random_state_dict_from_layout
from blendstudy.config import load_config
from blendstudy.measure.deform_cost import DeformCost, DeformShape, fallback_cost, r101_deform_shapes
from blendstudy.model import build_model
from blendstudy.model.layers import DeformConvNorm, FrozenBatchNorm2d
from blendstudy.model.resnet import DeformBottleneckBlock, ResNet, deform_blocks
from blendstudy.ops import deform_conv as dc
from conftest import fixture

# ---- the definition, straight from the formula ----------------------------------------------------


def _bilinear(img: np.ndarray, y: float, x: float) -> float:
    """detectron2's dmcn_im2col_bilinear: zero unless -1 < y < H and -1 < x < W; each of the four
    corners contributes only when it lies inside the image."""
    h, w = img.shape
    if not (-1 < y < h and -1 < x < w):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    val = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                val += wy * wx * img[yy, xx]
    return val


def reference_deform_conv(x, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                          mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[n, o, i, j] = b[o] + sum_{c in o's group} sum_k w[o, c, k] * m * x[n, c](p0 + p_k + d_k),
    offset channel 2(gK + k) = dy, 2(gK + k) + 1 = dx; mask channel gK + k; float64 loops."""
    xn, on, wn = x.double().numpy(), offset.double().numpy(), weight.double().numpy()
    mn = None if mask is None else mask.double().numpy()
    n, c, h, w = xn.shape
    o, cg, kh, kw = wn.shape
    groups, k = c // cg, kh * kw
    dg = on.shape[1] // (2 * k)
    ho, wo = on.shape[2:]
    out = np.zeros((n, o, ho, wo))
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                cols = np.zeros((c, kh, kw))
                for ch in range(c):
                    g = ch // (c // dg)
                    for ki in range(kh):
                        for kj in range(kw):
                            kk = ki * kw + kj
                            y = i * stride[0] - padding[0] + ki * dilation[0] + on[b, 2 * (g * k + kk), i, j]
                            xx = j * stride[1] - padding[1] + kj * dilation[1] + on[b, 2 * (g * k + kk) + 1, i, j]
                            m = 1.0 if mn is None else mn[b, g * k + kk, i, j]
                            cols[ch, ki, kj] = m * _bilinear(xn[b, ch], y, xx)
                for oc in range(o):
                    grp = oc // (o // groups)
                    out[b, oc, i, j] = (wn[oc] * cols[grp * cg:(grp + 1) * cg]).sum()
                    if bias is not None:
                        out[b, oc, i, j] += float(bias[oc])
    return torch.from_numpy(out)


# (name, C, O, kernel, stride, padding, dilation, groups, deformable groups, modulated)
CASES = [
    ("v1", 4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False),
    ("v2", 4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True),
    ("v2_groups2", 4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, 1, True),
    ("v2_dgroups2", 4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True),
    ("v1_groups2_dgroups2", 4, 4, (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, False),
    ("v2_stride2", 4, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1, 1, True),
    ("v1_stride2", 4, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1, 1, False),
    ("v2_dilation2", 4, 6, (3, 3), (1, 1), (2, 2), (2, 2), 1, 1, True),
    ("v1_dilation2_stride2_dg2", 4, 6, (3, 3), (2, 2), (2, 2), (2, 2), 2, 2, False),
    ("v2_rect_kernel_stride21", 4, 6, (3, 2), (2, 1), (1, 0), (1, 2), 1, 2, True),
]


def _inputs(case, seed=0, n=2, h=7, w=9, scale=2.5):
    _, c, o, (kh, kw), stride, padding, dilation, groups, dg, modulated = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    weight = torch.randn(o, c // groups, kh, kw, generator=gen)
    bias = torch.randn(o, generator=gen)
    ho, wo = dc.deform_output_size(h, w, (kh, kw), stride, padding, dilation)
    # offsets of a few pixels: many samples land outside the image or straddle its border
    offset = torch.randn(n, 2 * dg * kh * kw, ho, wo, generator=gen) * scale
    offset[:, 0] = -3.0                     # an exact integer shift
    offset[:, 1, 0, 0] = -0.5               # a sample straddling the left border
    mask = torch.rand(n, dg * kh * kw, ho, wo, generator=gen) if modulated else None
    return x, offset, weight, bias, dict(stride=stride, padding=padding, dilation=dilation), mask


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_plain_op_equals_the_definition(case):
    x, offset, weight, bias, geo, mask = _inputs(case)
    ref = reference_deform_conv(x, offset, weight, bias, mask=mask, **geo)
    got64 = dc.deform_conv2d_plain(x.double(), offset.double(), weight.double(), bias.double(), mask=None
                                   if mask is None else mask.double(), **geo)
    assert got64.dtype == torch.float64 and got64.shape == ref.shape
    torch.testing.assert_close(got64, ref, rtol=1e-9, atol=1e-9)
    got = dc.deform_conv2d_plain(x, offset, weight, bias, mask=mask, **geo)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    # some samples really were outside the image (zero padding is exercised)
    _, _, h, w = x.shape
    assert (offset.abs() > max(h, w) / 2).any()


def test_zero_offsets_and_unit_mask_is_an_ordinary_convolution():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 11, 13, generator=gen)
    weight = torch.randn(8, 3, 3, 3, generator=gen)
    for stride, padding, dilation in [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)]:
        ho, wo = dc.deform_output_size(11, 13, 3, stride, padding, dilation)
        offset = torch.zeros(1, 18 * 2, ho, wo)
        mask = torch.ones(1, 9 * 2, ho, wo)
        want = F.conv2d(x, weight, None, stride, padding, dilation, groups=2)
        for m in (None, mask):
            got = dc.deform_conv2d_plain(x, offset, weight, stride=stride, padding=padding, dilation=dilation,
                                         mask=m)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_channels_last_input_and_bfloat16():
    case = CASES[1]
    x, offset, weight, bias, geo, mask = _inputs(case, n=1, h=10, w=12)
    want = dc.deform_conv2d_plain(x, offset, weight, bias, mask=mask, **geo)
    cl = dc.deform_conv2d_plain(x.to(memory_format=torch.channels_last), offset, weight, bias, mask=mask, **geo)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, want, rtol=1e-5, atol=1e-5)
    half = dc.deform_conv2d_plain(x.bfloat16(), offset.bfloat16(), weight.bfloat16(), bias.bfloat16(),
                                  mask=mask.bfloat16(), **geo)
    assert half.dtype == torch.bfloat16
    ref = reference_deform_conv(x.bfloat16().float(), offset.bfloat16().float(), weight.bfloat16().float(),
                                bias.bfloat16().float(), mask=mask.bfloat16().float(), **geo)
    assert float((half.double() - ref).norm() / ref.norm()) < 2e-2


def test_shape_errors_name_the_shapes():
    x = torch.zeros(1, 4, 5, 5)
    w = torch.zeros(4, 4, 3, 3)
    with pytest.raises(ValueError, match="offset"):
        dc.deform_conv2d_plain(x, torch.zeros(1, 17, 5, 5), w, padding=1)
    with pytest.raises(ValueError, match="mask"):
        dc.deform_conv2d_plain(x, torch.zeros(1, 18, 5, 5), w, padding=1, mask=torch.zeros(1, 8, 5, 5))
    with pytest.raises(ValueError, match="deformable groups"):
        dc.deform_conv2d_plain(x, torch.zeros(1, 18 * 3, 5, 5), w, padding=1)


# ---- the kernel choice ---------------------------------------------------------------------------


@pytest.fixture
def restore_impl():
    prev = dc.get_deform_impl()
    yield
    dc.set_deform_impl(prev)


def test_kernel_info_and_forcing(restore_impl):
    info = dc.deform_kernel_info("cpu")
    assert set(info) >= {"requested", "selected", "available", "reason"}
    assert info["requested"] == "auto" and "plain" in info["available"]
    assert info["selected"] == info["available"][0] and info["reason"]
    if "torchvision" not in info["available"]:
        assert "torchvision" in info["reason"]
    assert dc.set_deform_impl("plain") == "auto"
    info = dc.deform_kernel_info(torch.device("cpu"))
    assert info["requested"] == info["selected"] == "plain" and "set_deform_impl" in info["reason"]
    with pytest.raises(ValueError, match="unknown"):
        dc.set_deform_impl("fast")
    x, offset, weight, bias, geo, mask = _inputs(CASES[3])
    torch.testing.assert_close(dc.deform_conv2d(x, offset, weight, bias, mask=mask, **geo),
                               dc.deform_conv2d_plain(x, offset, weight, bias, mask=mask, **geo))


def _devices():
    devs = [torch.device("cpu")]
    if torch.cuda.is_available():
        devs.append(torch.device("cuda"))
    try:
        import torch_npu  # noqa: F401

        if torch.npu.is_available():
            devs.append(torch.device("npu:0"))
    except Exception:
        pass
    return devs


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[4], CASES[5], CASES[7]], ids=lambda c: c[0])
def test_available_kernels_agree(case):
    checked = 0
    for dev in _devices():
        others = [k for k in dc.deform_kernel_info(dev)["available"] if k != "plain"]
        x, offset, weight, bias, geo, mask = _inputs(case)
        ref = dc.deform_conv2d_plain(x, offset, weight, bias, mask=mask, **geo)
        for name in others:
            fn = {"torchvision": dc.deform_conv2d_torchvision, "npu": dc.deform_conv2d_npu}[name]
            if name == "npu" and dc._npu_unsupported(x, weight, offset, geo["stride"], geo["padding"],
                                                      geo["dilation"]):
                continue
            args = [t if t is None else t.to(dev) for t in (x, offset, weight, bias, mask)]
            got = fn(*args[:4], mask=args[4], **geo).cpu()
            torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
            checked += 1
    if not checked:
        pytest.skip("only the plain-PyTorch deformable conv is available here (no torchvision, CUDA or NPU kernel)")


# ---- the R_101_dcni3_5x model ----------------------------------------------------------------------

BLOCKS = {"res3": 4, "res4": 23, "res5": 3}
BOTTLENECK = {"res3": 128, "res4": 256, "res5": 512}


@pytest.fixture(scope="module")
def dcn_model():
    return build_model(load_config("BlendMask/R_101_dcni3_5x"))


def test_dcni3_config_values():
    cfg = load_config("BlendMask/R_101_dcni3_5x")
    r = cfg.MODEL.RESNETS
    assert r.DEFORM_ON_PER_STAGE == [False, True, True, True] and r.DEFORM_MODULATED is True
    assert r.DEFORM_INTERVAL == 3 and r.DEFORM_NUM_GROUPS == 1 and cfg.MODEL.FCOS.USE_DEFORMABLE is False


def test_deform_blocks_follow_adelaidet_interval():
    assert deform_blocks(4, True, 3) == [True, False, False, True]
    assert deform_blocks(23, True, 3) == [i % 3 == 0 for i in range(23)]
    assert deform_blocks(3, True, 1) == [True, True, True]   # interval 1: detectron2's every block
    assert deform_blocks(6, False, 1) == [False] * 6


def test_dcn_model_has_exactly_the_detectron2_deform_keys(dcn_model):
    layout = fixture("blendmask_R_101_3x_state_dict.tsv")
    base_keys = [ln.split("\t")[0] for ln in layout.read_text().splitlines() if ln.strip()]
    sd = dcn_model.state_dict()
    expected_offset = {}
    for stage, n in BLOCKS.items():
        for b in range(0, n, 3):
            prefix = f"backbone.bottom_up.{stage}.{b}.conv2_offset"
            expected_offset[prefix + ".weight"] = (27, BOTTLENECK[stage], 3, 3)
            expected_offset[prefix + ".bias"] = (27,)
    assert len(expected_offset) == 22
    assert set(sd) == set(base_keys) | set(expected_offset)
    for k, shape in expected_offset.items():
        assert tuple(sd[k].shape) == shape, k
    deform = {name for name, m in dcn_model.named_modules() if isinstance(m, DeformBottleneckBlock)}
    assert deform == {f"backbone.bottom_up.{s}.{b}" for s, n in BLOCKS.items() for b in range(0, n, 3)}
    conv2 = dcn_model.backbone.bottom_up.res4[3].conv2
    assert isinstance(conv2, DeformConvNorm) and conv2.modulated and conv2.bias is None
    assert isinstance(conv2.norm, FrozenBatchNorm2d) and tuple(conv2.weight.shape) == (256, 256, 3, 3)
    assert not isinstance(dcn_model.backbone.bottom_up.res4[4].conv2, DeformConvNorm)


def test_dcn_checkpoint_loads_strictly(dcn_model, tmp_path):
    layout = fixture("blendmask_R_101_3x_state_dict.tsv")
    # a DCN checkpoint = R_101_3x's layout plus the offset convs (detectron2's names)
    sd = random_state_dict_from_layout(layout, seed=3)
    gen = torch.Generator().manual_seed(4)
    for k, v in dcn_model.state_dict().items():
        if "conv2_offset" in k:
            sd[k] = torch.randn(v.shape, generator=gen) * 0.01
    path = tmp_path / "R_101_dcni3_5x.pth"
    torch.save({"model": sd}, path)
    model = copy.deepcopy(dcn_model)
    report = load_weights(model, path, strict=True)
    assert report.ok and report.coverage == 1.0, report.summary()
    got = model.state_dict()
    for k in ("backbone.bottom_up.res3.3.conv2_offset.bias", "backbone.bottom_up.res5.0.conv2.weight",
              "backbone.bottom_up.res4.21.conv2.norm.running_var"):
        assert torch.equal(got[k], sd[k])
    # the model's own state dict round-trips strictly as well
    own = tmp_path / "own.pth"
    torch.save(dcn_model.state_dict(), own)
    assert load_weights(copy.deepcopy(dcn_model), own, strict=True).ok
    # and the plain R_101_3x layout is missing exactly the offset convs
    rep = compare_state_dict(dcn_model, random_state_dict_from_layout(layout, seed=0))
    assert len(rep.missing) == 22 and all("conv2_offset" in k for k in rep.missing)


def test_dcn_model_runs_a_forward_on_cpu(dcn_model):
    model = copy.deepcopy(dcn_model)
    _randomize_offsets(model)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 160), [(128, 160)])
    assert len(out) == 1


@pytest.mark.parametrize("modulated, groups, channels", [(False, 1, 18), (True, 2, 54), (False, 2, 36)])
def test_offset_channels(modulated, groups, channels):
    net = ResNet(depth=50, out_features=("res3",), stem_out_channels=8, res2_out_channels=32, width_per_group=8,
                 deform_on_per_stage=(True, True, False, False), deform_modulated=modulated,
                 deform_num_groups=groups, deform_interval=2)
    sd = net.state_dict()
    assert tuple(sd["res2.0.conv2_offset.weight"].shape) == (channels, 8, 3, 3)
    assert "res2.1.conv2_offset.weight" not in sd and "res2.2.conv2_offset.weight" in sd
    assert tuple(sd["res3.2.conv2_offset.bias"].shape) == (channels,)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64))["res3"].shape == (1, 64, 8, 8)


def test_r18_with_deform_is_refused():
    with pytest.raises(ValueError, match="18/34"):
        ResNet(depth=18, res2_out_channels=64, deform_on_per_stage=(False, True, False, False))


# ---- optimize switches on deformable blocks ----------------------------------------------------------


def _randomize_offsets(model, scale=0.05):
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, DeformBottleneckBlock):
            with torch.no_grad():
                m.conv2_offset.weight.copy_(torch.randn(m.conv2_offset.weight.shape, generator=gen) * scale)
                m.conv2_offset.bias.copy_(torch.randn(m.conv2_offset.bias.shape, generator=gen))


def _randomize_frozen_bn(model):
    gen = torch.Generator().manual_seed(6)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)


@pytest.fixture(scope="module")
def small_dcn():
    """A narrow R-50 BlendMask (the Tiny_synthetic config) with FrozenBN and DCNv2 every second
    block of res3-res5, random offsets and norms."""
    cfg = load_config("BlendMask/Tiny_synthetic", {
        "MODEL.RESNETS.NORM": "FrozenBN", "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, True, True, True],
        "MODEL.RESNETS.DEFORM_MODULATED": True, "MODEL.RESNETS.DEFORM_INTERVAL": 2})
    torch.manual_seed(0)
    model = build_model(cfg)
    _randomize_offsets(model, scale=0.2)
    _randomize_frozen_bn(model)
    return model


def _features(model, x):
    with torch.no_grad():
        return model.extract_features(x)


def test_fold_bn_on_a_dcn_model_keeps_the_output(small_dcn):
    from blendstudy.optimize import fold_frozen_bn

    x = torch.randn(1, 3, 128, 160)
    want = _features(small_dcn, x)
    folded = copy.deepcopy(small_dcn)
    n_deform = sum(isinstance(m, DeformConvNorm) for m in folded.modules())
    assert n_deform == 7  # res3 blocks 0, 2; res4 0, 2, 4; res5 0, 2
    count = fold_frozen_bn(folded)
    assert count > 0
    assert all(m.norm is None and m.bias is not None for m in folded.modules() if isinstance(m, DeformConvNorm))
    got = _features(folded, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4)


def test_pipeline_switches_on_a_dcn_model(small_dcn, monkeypatch):
    from blendstudy import device as devmod
    from blendstudy.optimize import build_pipeline
    from blendstudy.pipeline import Pipeline

    monkeypatch.setattr(devmod, "cpu_capability", lambda: "AVX512")  # the bf16 switches applied, as with AVX-512
    base = Pipeline(small_dcn, 128, 160)
    x = torch.randn(1, 3, 128, 160)
    want = _features(small_dcn, x)
    pipe = build_pipeline(base, ["fold_bn", "channels_last"])
    assert pipe.recipe_info["folded_bn"] > 0
    got = _features(pipe.model, x.to(memory_format=torch.channels_last))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4)
    for switches in (["mixed_half"], ["half"]):
        pipe = build_pipeline(base, switches)
        dtype = next(pipe.model.backbone.parameters()).dtype
        assert dtype == torch.bfloat16
        got = _features(pipe.model, x if switches == ["mixed_half"] else x.bfloat16())
        for k in want:
            rel = float((got[k].float() - want[k]).norm() / want[k].norm())
            assert rel < 0.05, (switches, k, rel)


# ---- the cost benchmark ---------------------------------------------------------------------------


def test_r101_deform_shapes_for_800x1333():
    shapes = r101_deform_shapes()
    assert [(s.stage, s.channels, s.height, s.width, s.stride, s.blocks) for s in shapes] == [
        ("res3", 128, 100, 168, 1, 2), ("res4", 256, 50, 84, 1, 8), ("res5", 512, 25, 42, 1, 1)]
    no1x1 = r101_deform_shapes(stride_in_1x1=False)
    assert (no1x1[0].height, no1x1[0].width, no1x1[0].stride, no1x1[0].out_size) == (200, 336, 2, (100, 168))


def test_fallback_cost_structure():
    costs = fallback_cost([DeformShape("tiny", 8, 12, 16)], repeats=2, warmup=0)
    assert len(costs) == 1 and isinstance(costs[0], DeformCost)
    c = costs[0]
    assert c.impl == "plain" and c.shape.stage == "tiny"
    assert c.deform_ms > 0 and c.conv_ms > 0 and c.ratio > 0 and c.offset_ms > 0
    assert math.isclose(c.ratio, c.deform_ms / c.conv_ms)
    assert c.as_dict()["shape"]["channels"] == 8
    assert fallback_cost([DeformShape("s2", 8, 12, 16, stride=2)], repeats=1, warmup=0, impl=None)[0].impl
