"""What InferenceOptions do to a model whose weights are in: Conv-BN folding, the precision of each
part, the memory format and compilation (`prepare_model`). The options read at construction
(lazy attention, the blender's) are the model's own (blendstudy.model); the pipeline's are
blendstudy.pipeline's.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from blendstudy import device as devmod
from blendstudy.model.blendmask import BlendMask
from blendstudy.model.layers import ConvNorm, FrozenBatchNorm2d
from blendstudy.options import InferenceOptions


def _bn_scale_shift(norm: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_and_shift()
    if isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats:
        weight = norm.weight if norm.affine else torch.ones_like(norm.running_var)
        bias = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
        scale = weight * (norm.running_var + norm.eps).rsqrt()
        return scale, bias - norm.running_mean * scale
    return None


def _fold_into(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    with torch.no_grad():
        w = conv.weight * scale.reshape(-1, 1, 1, 1)
        b = shift if conv.bias is None else conv.bias * scale + shift
        conv.weight = nn.Parameter(w.detach())
        conv.bias = nn.Parameter(b.detach())


def fold_frozen_bn(model: nn.Module) -> int:
    """Fold every FrozenBN / eval BatchNorm that directly follows a conv into that conv: the
    backbone's ConvNorm layers and the (conv, BN) pairs of nn.Sequential blocks (the basis module).
    Returns the number of folded layers. w' = w * s, b' = b * s + (beta - mean * s),
    s = gamma / sqrt(var + eps). Folded BN layers become nn.Identity, so the copy's state dict
    no longer matches a checkpoint (build_pipeline folds a copy)."""
    count = 0
    for m in list(model.modules()):
        if isinstance(m, ConvNorm) and m.norm is not None:
            ss = _bn_scale_shift(m.norm)
            if ss is None:
                continue
            _fold_into(m, *ss)
            m.norm = None
            count += 1
        elif isinstance(m, nn.Sequential):
            for i in range(1, len(m)):
                prev, cur = m[i - 1], m[i]
                if type(prev) is nn.Conv2d and prev.groups == 1:
                    ss = _bn_scale_shift(cur)
                    if ss is not None:
                        _fold_into(prev, *ss)
                        m[i] = nn.Identity()
                        count += 1
    return count


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _cast(v, dtype) for k, v in x.items()}
    return x


class HalfIO(nn.Module):
    """Runs `inner` in `dtype` between float32 neighbours: inputs (a tensor or a dict of tensors)
    are cast to dtype on the way in, outputs back to float32 on the way out. Attributes the model
    reads from the wrapped part (size_divisibility, out_features, ...) are the inner module's."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, x: Any) -> Any:
        return _cast(self.inner(_cast(x, self.dtype)), torch.float32)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def half_tower_convs(model: BlendMask, dtype: torch.dtype) -> int:
    """Wrap every convolution of the FCOS head's towers in HalfIO (half precision inside, float32
    between them): the convolutions are nearly all of the head's FLOPs, while GroupNorm in bf16 is
    slow on CPUs and the box regression needs float32. Returns how many were wrapped."""
    head = model.proposal_generator.fcos_head
    n = 0
    for tower in (head.share_tower, head.cls_tower, head.bbox_tower):
        for i, layer in enumerate(tower):
            if isinstance(layer, nn.Conv2d):
                tower[i] = HalfIO(layer, dtype)
                n += 1
    return n


def set_precision(model: BlendMask, options: InferenceOptions) -> Tuple[BlendMask, Dict[str, Any]]:
    """The precision policy: the whole network in ``options.dtype`` (the pixel statistics stay
    float32: normalisation happens before the cast), or the ``half_parts`` in ``half_dtype``
    between float32 neighbours."""
    info: Dict[str, Any] = {}
    half = getattr(torch, options.half_dtype)
    for part in ("backbone", "basis_module"):
        if part in options.half_parts:
            setattr(model, part, HalfIO(getattr(model, part), half))
    if "tower_convs" in options.half_parts:
        info["half_tower_convs"] = half_tower_convs(model, half)
    if options.dtype != "float32":
        model = model.to(getattr(torch, options.dtype))
        model.pixel_mean, model.pixel_std = model.pixel_mean.float(), model.pixel_std.float()
    return model, info


@dataclass
class CompileInfo:
    backend: str
    targets: List[str]
    #: dynamo's recompile limit while these parts run (each compiled part calls under its own:
    #: device.under_recompile_limit): RECOMPILE_LIMIT with pad64 (the seed's P4), dynamo's own
    #: default without (the seed's P3)
    recompile_limit: Optional[int] = None


def default_recompile_limit() -> int:
    """Dynamo's default recompile limit (8), whatever the knob is set to now."""
    import torch._dynamo.config as dcfg

    entries = getattr(dcfg, "_config", {})
    for name in ("recompile_limit", "cache_size_limit"):
        default = getattr(entries.get(name), "default", None)
        if isinstance(default, int):
            return default
    return 8


def own_forward(module: nn.Module) -> nn.Module:
    """Give ``module`` a forward of its own: its class's forward on a new code object. Dynamo keeps
    its compiled graphs, its recompile count and its verdict once the limit is hit (from then on:
    the graphs it has, every other shape eager) per code object, so without this all compiled
    instances of a class in a process share them: P3's backbone hitting its limit would leave P4's
    (and every extra's) new shapes eager, and a shape one recipe compiled would count as another's.
    (torch.compile(isolate_recompiles=True) of newer torch does the same; this works on any.)"""
    f = type(module).forward
    own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    own.__kwdefaults__, own.__qualname__ = f.__kwdefaults__, f.__qualname__
    module.forward = types.MethodType(own, module)
    return module


def compile_module(module: nn.Module, backend: str, recompile_limit: int) -> nn.Module:
    """torch.compile(module, dynamic=False) with a code object of its own (own_forward), each call
    under ``recompile_limit`` (device.under_recompile_limit): the process's dynamo settings stay as
    they are."""
    if backend == "npu":
        import torch_npu  # noqa: F401  (registers the npu backend: docs/npu.md "Graph mode")
    compiled = torch.compile(own_forward(module), backend=backend, dynamic=False)
    compiled.forward = devmod.under_recompile_limit(compiled.forward, recompile_limit)
    return compiled


def compile_parts(model: BlendMask, options: InferenceOptions, device: torch.device,
                  default_limit: int) -> Optional[CompileInfo]:
    """Compile ``options.compile_targets`` with the device's backend, under ``options.recompile_limit``
    (``default_limit``, dynamo's own, when None). None when nothing is compiled."""
    if not options.compile_targets:
        return None
    backend = devmod.default_compile_backend(device)
    limit = options.recompile_limit or default_limit
    for part in options.compile_targets:
        setattr(model, part, compile_module(getattr(model, part), backend, limit))
    return CompileInfo(backend, list(options.compile_targets), limit)


def prepare_model(base: BlendMask, options: InferenceOptions, device: torch.device,
                  default_limit: int) -> Tuple[BlendMask, Dict[str, Any]]:
    """A new model on ``device`` built from ``base`` (left as it is) for ``options``: constructed with
    them (BlendMask.with_options), then Conv-BN folding, precision, memory format and compilation, in
    that order. Returns it and what was done (folded_bn, half_tower_convs, compile)."""
    model = base.with_options(options).to(device).eval()
    info: Dict[str, Any] = {}
    if options.fold_bn:
        info["folded_bn"] = fold_frozen_bn(model)
    model, precision = set_precision(model, options)
    info.update(precision)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compiled = compile_parts(model, options, device, default_limit)
    if compiled is not None:
        info["compile"] = compiled
    return model, info
