"""Deformable convolution (DCNv1) and modulated deformable convolution (DCNv2) in plain PyTorch,
with detectron2's semantics (its CUDA kernel and torchvision.ops.deform_conv2d agree on them):

    out[n, o, p] = bias[o] + sum_{c, k} weight[o, c, k] * mask[n, g, k, p] * x[n, c](p0 + p_k + d_k)

for output position p, p0 = p * stride - padding, kernel point k = (i, j) in row-major order with
p_k = (i * dilation_h, j * dilation_w), and g the deformable group of input channel c.

* offset: (N, 2 * G * K, Ho, Wo) with K = kh * kw; for deformable group g and kernel point k the
  channel 2 * (g * K + k) is dy and 2 * (g * K + k) + 1 is dx (y before x).
* mask (DCNv2 only): (N, G * K, Ho, Wo), channel g * K + k, already through a sigmoid (detectron2's
  DeformBottleneckBlock does ``offset, mask = ...; mask = mask.sigmoid()`` before the op).
* x(position) is bilinear at sub-pixel positions with zeros outside the image: a corner pixel
  outside contributes 0 (detectron2's ``h_im > -1 && h_im < H`` test plus per-corner checks is
  exactly grid_sample's ``padding_mode="zeros"``).
* groups come from weight (C_in // weight.shape[1]), deformable groups from the offset's channels,
  as in torchvision.

`deform_conv2d` dispatches to the fastest implementation present (see `deform_kernel_info`):
torchvision's kernel where torchvision imports and runs, torch_npu's on an Ascend NPU once a
self-check against the plain op agrees, else `deform_conv2d_plain` (one grid_sample for all
kernel points, then one matmul).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "IMPLEMENTATIONS",
    "deform_conv2d",
    "deform_conv2d_npu",
    "deform_conv2d_plain",
    "deform_conv2d_torchvision",
    "deform_kernel_info",
    "deform_output_size",
    "get_deform_impl",
    "set_deform_impl",
]

IntPair = Union[int, Sequence[int]]
#: what set_deform_impl accepts; "auto" picks the first available of torchvision, npu, plain
IMPLEMENTATIONS = ("auto", "plain", "torchvision", "npu")

_REQUESTED = "auto"
_PROBES: Dict[str, Tuple[bool, str]] = {}   # "torchvision" / "npu:<device>" -> (works, why)


def _pair(v: IntPair) -> Tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def deform_output_size(height: int, width: int, kernel: IntPair, stride: IntPair = 1, padding: IntPair = 0,
                       dilation: IntPair = 1) -> Tuple[int, int]:
    """(Ho, Wo) of a (deformable) convolution, as for nn.Conv2d."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    return (height + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1, (width + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1


def _check_shapes(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: Optional[torch.Tensor],
                  ho: int, wo: int) -> Tuple[int, int]:
    """(groups, deformable groups) after checking the shapes; ValueError with the shapes otherwise."""
    n, c = x.shape[:2]
    out_ch, cg, kh, kw = weight.shape
    k = kh * kw
    if x.dim() != 4 or c % cg or out_ch % (c // cg):
        raise ValueError(f"deform_conv2d: input {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    groups = c // cg
    if offset.dim() != 4 or offset.shape[1] % (2 * k) or offset.shape[0] != n or tuple(offset.shape[2:]) != (ho, wo):
        raise ValueError(f"deform_conv2d: offset {tuple(offset.shape)} must be (N, 2*G*{k}, {ho}, {wo})")
    dgroups = offset.shape[1] // (2 * k)
    if c % dgroups:
        raise ValueError(f"deform_conv2d: {c} input channels not divisible by {dgroups} deformable groups")
    if mask is not None and tuple(mask.shape) != (n, dgroups * k, ho, wo):
        raise ValueError(f"deform_conv2d: mask {tuple(mask.shape)} must be {(n, dgroups * k, ho, wo)}")
    return groups, dgroups


def deform_conv2d_plain(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor] = None, stride: IntPair = 1, padding: IntPair = 0,
                        dilation: IntPair = 1, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Deformable convolution in plain PyTorch (torchvision.ops.deform_conv2d's signature; mask
    None is DCNv1). One grid_sample gathers the bilinear samples of every kernel point of every
    deformable group at once (an im2col of the deformed grid), one batched matmul applies the weight.

    Sampling positions are always computed and sampled in float32: in bf16 (8-bit mantissa) a
    normalised coordinate is off by up to ~0.3 pixel at W = 168, in fp16 by ~0.04 pixel; and CPU
    grid_sample lacks half types in older torch. So half inputs are sampled in float32 and the
    columns cast back to the input dtype for the matmul, which is where the time goes."""
    n, c, h, w = x.shape
    out_ch, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = deform_output_size(h, w, (kh, kw), stride, padding, dilation)
    groups, dg = _check_shapes(x, offset, weight, mask, ho, wo)
    k = kh * kw
    dtype = x.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    dev = x.device
    # grid_sample's normalised coordinate of pixel p is (2p + 1) / size - 1 (align_corners=False,
    # exact for any size); the sampling position of kernel point k = (ki, kj) at output (i, j) is
    # (i*sh - ph + ki*dh + dy, j*sw - pw + kj*dw + dx), so grid = base + offset * 2 / size
    ky = (torch.arange(kh, device=dev, dtype=work) * dh).repeat_interleave(kw)            # (K,)
    kx = (torch.arange(kw, device=dev, dtype=work) * dw).repeat(kh)                       # (K,)
    oy = torch.arange(ho, device=dev, dtype=work) * sh - ph                              # (Ho,)
    ox = torch.arange(wo, device=dev, dtype=work) * sw - pw                              # (Wo,)
    base_y = (2.0 * (ky[:, None, None] + oy[None, :, None]) + 1.0) / h - 1.0             # (K, Ho, 1)
    base_x = (2.0 * (kx[:, None, None] + ox[None, None, :]) + 1.0) / w - 1.0             # (K, 1, Wo)
    off = offset.to(work).reshape(n, dg, k, 2, ho, wo)
    grid = torch.stack((torch.add(base_x, off[:, :, :, 1], alpha=2.0 / w),
                        torch.add(base_y, off[:, :, :, 0], alpha=2.0 / h)), dim=-1)     # (N, G, K, Ho, Wo, 2)
    grid = grid.view(n * dg, k * ho, wo, 2)
    inp = x.to(work).reshape(n * dg, c // dg, h, w)
    if inp.device.type == "cpu":
        # CPU grid_sample gathers all channels of a sample point at once from an NHWC input: about
        # 4x faster at res3's shape than from NCHW, for one copy of the (9x smaller) input
        inp = inp.contiguous(memory_format=torch.channels_last)
    cols = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.reshape(n, dg, c // dg, k, ho * wo)                                        # (N, G, C/G, K, L)
    if mask is not None:
        m = mask.to(work).reshape(n, dg, 1, k, ho * wo)
        cols = cols * m if torch.is_grad_enabled() and (cols.requires_grad or m.requires_grad) else cols.mul_(m)
    cols = cols.to(dtype)
    wmat = weight.reshape(groups, out_ch // groups, cg * k)
    if groups == 1 and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        # (N, L, C*K) @ (C*K, O): the result is NHWC, i.e. a channels_last output at no extra cost
        out = torch.matmul(cols.reshape(n, c * k, ho * wo).transpose(1, 2), wmat[0].t())
        out = out.reshape(n, ho, wo, out_ch).permute(0, 3, 1, 2)
    else:
        out = torch.matmul(wmat, cols.reshape(n, groups, cg * k, ho * wo)).reshape(n, out_ch, ho, wo)
    if bias is not None:
        out = out + bias.to(dtype).reshape(1, -1, 1, 1)
    return out


# --------------------------------------------------------------------------------------------
# Other kernels
# --------------------------------------------------------------------------------------------


def deform_conv2d_torchvision(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                              bias: Optional[torch.Tensor] = None, stride: IntPair = 1, padding: IntPair = 0,
                              dilation: IntPair = 1, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """torchvision.ops.deform_conv2d (the same layout and semantics; detectron2 calls it on CPU).
    Half inputs on the CPU run in float32 and are cast back."""
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    dtype = x.dtype
    if x.device.type == "cpu" and dtype not in (torch.float32, torch.float64):
        cast = [None if t is None else t.float() for t in (x, offset, weight, bias, mask)]
        out = tv_deform_conv2d(cast[0], cast[1], cast[2], cast[3], stride=_pair(stride), padding=_pair(padding),
                               dilation=_pair(dilation), mask=cast[4])
        return out.to(dtype)
    return tv_deform_conv2d(x, offset, weight, bias, stride=_pair(stride), padding=_pair(padding),
                            dilation=_pair(dilation), mask=mask)


def _npu_unsupported(x: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor, stride: IntPair,
                     padding: IntPair, dilation: IntPair) -> Optional[str]:
    kh, kw = weight.shape[2:]
    if kh != kw or len(set(_pair(stride))) != 1 or len(set(_pair(padding))) != 1 or len(set(_pair(dilation))) != 1:
        return "torch_npu kernel wired for square kernels and equal stride/padding/dilation only"
    if offset.shape[1] != 2 * kh * kw:
        return "torch_npu kernel wired for one deformable group only (its offset order for G > 1 is unconfirmed)"
    return None


def deform_conv2d_npu(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor] = None, stride: IntPair = 1, padding: IntPair = 0,
                      dilation: IntPair = 1, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """torch_npu.npu_deformable_conv2d, UNVERIFIED on hardware by this project.

    Documented API (Ascend torch_npu / op-plugin docs, "(beta) torch_npu.npu_deformable_conv2d"):
    ``npu_deformable_conv2d(self, weight, offset, bias, kernel_size, stride, padding,
    dilation=[1,1,1,1], groups=1, deformable_groups=1, modulated=True) -> (Tensor, Tensor)`` with
    4-element stride/dilation (N, C set to 1), padding (top, bottom, left, right), only v2
    (modulated) supported, float32. Its offset channels are all x offsets, then all y offsets, then
    the mask. The call below follows how torch_npu's own torch_npu.contrib.module.ModulatedDeformConv
    drives it (NCHW tensors, offset reordered from the interleaved (dy, dx) layout to (dx..., dy...),
    mask appended, bias always given): read, not run here. DCNv1 runs as v2 with a mask of ones.
    `deform_conv2d` in "auto" only selects it after `_npu_self_check` found it equal to the plain op
    on the device; otherwise it is only reachable via set_deform_impl("npu")."""
    import torch_npu  # noqa: F401

    why = _npu_unsupported(x, weight, offset, stride, padding, dilation)
    if why is not None:
        raise ValueError(why)
    kh, kw = weight.shape[2:]
    k = kh * kw
    s, p, d = _pair(stride)[0], _pair(padding)[0], _pair(dilation)[0]
    dtype = x.dtype
    ho, wo = offset.shape[2:]
    if mask is None:
        mask = offset.new_ones((offset.shape[0], k, ho, wo))
    order = torch.cat((torch.arange(1, 2 * k, 2), torch.arange(0, 2 * k, 2))).to(offset.device)
    offset_all = torch.cat((offset.float().index_select(1, order), mask.float()), dim=1)
    b = bias.float() if bias is not None else x.new_zeros(weight.shape[0], dtype=torch.float32)
    out, _ = torch_npu.npu_deformable_conv2d(
        x.float(), weight.float(), offset_all, b, kernel_size=[kw, kh], stride=[1, 1, s, s],
        padding=[p, p, p, p], dilation=[1, 1, d, d], groups=x.shape[1] // weight.shape[1],
        deformable_groups=1, modulated=True)
    return out.to(dtype)


# --------------------------------------------------------------------------------------------
# Kernel choice
# --------------------------------------------------------------------------------------------


def _probe_torchvision() -> Tuple[bool, str]:
    if "torchvision" not in _PROBES:
        try:
            from torchvision.ops import deform_conv2d as tv_deform_conv2d

            # the import can succeed while the compiled op is missing (a CUDA build next to CPU torch)
            tv_deform_conv2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 18, 3, 3), torch.zeros(1, 1, 3, 3), padding=(1, 1))
            _PROBES["torchvision"] = (True, "torchvision.ops.deform_conv2d runs")
        except Exception as exc:
            _PROBES["torchvision"] = (False, f"torchvision does not import or run: {type(exc).__name__}: {exc}")
    return _PROBES["torchvision"]


def _npu_self_check(device: torch.device) -> Tuple[bool, str]:
    """Run torch_npu's kernel once against the plain op on `device` (DCNv2, stride 2, dilation 2,
    offsets that leave the image) and cache whether they agree."""
    key = f"npu:{device}"
    if key in _PROBES:
        return _PROBES[key]
    try:
        import torch_npu

        if not hasattr(torch_npu, "npu_deformable_conv2d"):
            raise AttributeError("torch_npu has no npu_deformable_conv2d")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 8, 9, 11, generator=gen)
        w = torch.randn(6, 8, 3, 3, generator=gen)
        off = torch.randn(1, 18, 5, 6, generator=gen) * 3  # the output of 9 x 11 at stride 2, dilation 2
        m = torch.rand(1, 9, 5, 6, generator=gen)
        b = torch.randn(6, generator=gen)
        args = dict(stride=2, padding=2, dilation=2)
        ref = deform_conv2d_plain(x, off, w, b, mask=m, **args)
        got = deform_conv2d_npu(x.to(device), off.to(device), w.to(device), b.to(device), mask=m.to(device),
                                **args).cpu()
        err = float((got - ref).abs().max())
        ok = err <= 1e-3 * max(1.0, float(ref.abs().max()))
        why = (f"torch_npu.npu_deformable_conv2d agreed with the plain op on a self-check (max abs diff {err:.2e})"
               if ok else f"torch_npu.npu_deformable_conv2d DISAGREED with the plain op (max abs diff {err:.2e})")
        _PROBES[key] = (ok, why)
    except Exception as exc:
        _PROBES[key] = (False, f"torch_npu deformable conv unusable: {type(exc).__name__}: {exc}")
    return _PROBES[key]


def _candidates(device: torch.device) -> List[Tuple[str, bool, str]]:
    """(name, usable, why) in order of preference for `device`."""
    rows = []
    if device.type in ("cpu", "cuda"):
        ok, why = _probe_torchvision()
        rows.append(("torchvision", ok, why))
    else:
        rows.append(("torchvision", False, f"torchvision has no deform_conv2d kernel for {device.type}"))
    if device.type == "npu":
        ok, why = _npu_self_check(device)
        rows.append(("npu", ok, why))
    rows.append(("plain", True, "plain PyTorch (grid_sample + matmul)"))
    return rows


def set_deform_impl(name: str) -> str:
    """Force the kernel: "auto" (default: the fastest available), "plain", "torchvision" or "npu"
    (the last two raise at call time where they are unavailable). Returns the previous setting."""
    global _REQUESTED
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown deformable conv implementation {name!r}; known: {', '.join(IMPLEMENTATIONS)}")
    prev, _REQUESTED = _REQUESTED, name
    return prev


def get_deform_impl() -> str:
    return _REQUESTED


def deform_kernel_info(device: Union[torch.device, str, None] = None) -> Dict[str, Any]:
    """Which kernel `deform_conv2d` uses on `device` and why, for the results JSON:
    {"requested", "selected", "available", "reason", "device"}."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    rows = _candidates(dev)
    available = [name for name, ok, _ in rows if ok]
    notes = "; ".join(why for name, ok, why in rows if name != "plain")
    if _REQUESTED == "auto":
        selected = available[0]
        reason = f"auto: {selected} is the first available of torchvision, npu, plain ({notes})"
    else:
        selected = _REQUESTED
        reason = f"forced by set_deform_impl({_REQUESTED!r})" + ("" if _REQUESTED in available else
                                                                 f" but it is unavailable ({notes})")
    return {"requested": _REQUESTED, "selected": selected, "available": available, "reason": reason,
            "device": str(dev)}


_IMPLS = {"plain": deform_conv2d_plain, "torchvision": deform_conv2d_torchvision, "npu": deform_conv2d_npu}


def _select(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, stride: IntPair, padding: IntPair,
            dilation: IntPair) -> str:
    if _REQUESTED != "auto":
        return _REQUESTED
    if x.device.type in ("cpu", "cuda") and _probe_torchvision()[0]:
        return "torchvision"
    if x.device.type == "npu" and _npu_self_check(x.device)[0] \
            and _npu_unsupported(x, weight, offset, stride, padding, dilation) is None:
        return "npu"
    return "plain"


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Deformable convolution (mask None: DCNv1; mask given: DCNv2, mask already sigmoid-ed) on
    the kernel chosen by set_deform_impl / deform_kernel_info. Arguments as torchvision's."""
    return _IMPLS[_select(x, offset, weight, stride, padding, dilation)](
        x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
