"""The optimizations as named, composable switches, and the study's stage recipes as data.

`build_pipeline(loaded, "p4")` returns a new Pipeline on a copy of the model with the recipe's
switches applied; the baseline pipeline is untouched, so both can be measured side by side.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from blendstudy import device as devmod
from blendstudy.model.blendmask import BlendMask
from blendstudy.model.layers import ConvNorm, FrozenBatchNorm2d
from blendstudy.pipeline import Pipeline
from blendstudy.runtime import apply_in_process


@dataclass(frozen=True)
class Switch:
    name: str
    stage: str          # the seed's stage it belongs to ("P0".."P4") or "extra"
    description: str


BLEND_CHUNK = 16  # detections per blender chunk (blend_chunks): 16 x 4 bases x 56 x 56 floats = 800 KB

SWITCHES: Dict[str, Switch] = {s.name: s for s in [
    Switch("device_resize", "P0", "shortest-edge resize as bilinear F.interpolate on the device instead of PIL "
                                  "on the CPU (the seed: 34.8 ms of CPU resize removed); on a CPU device in "
                                  "uint8, as PIL"),
    Switch("sync_free_decode", "P1", "FCOS decode + NMS with fixed shapes: no .cpu()/.item()/nonzero until the "
                                     "results are extracted"),
    Switch("runtime", "P2", "the best runtime setting of the P2 sweep (npu: TASK_QUEUE_ENABLE, core binding, "
                            "OMP threads; cuda: cudnn.benchmark, TF32; cpu: threads, affinity)"),
    Switch("compile_backbone", "P3", "torch.compile(backbone, dynamic=False): backend 'npu' (torchair) on Ascend, "
                                     "inductor elsewhere; dynamo's default recompile limit (8): shapes past "
                                     "it run eager"),
    Switch("pad64", "P4", "pad inputs to a multiple of 64 so fewer distinct shapes reach the compiled graph; "
                          "dynamo recompile limit raised to 32"),
    Switch("fold_bn", "extra", "fold FrozenBN into the preceding conv's weight and bias (004's Conv-BN fusion; "
                               "exact in fp32 up to rounding)"),
    Switch("half", "extra", "network in half precision: fp16 on npu/cuda, bf16 on cpu (decode, ROIAlign and "
                            "paste stay fp32)"),
    Switch("mixed_half", "extra", "backbone, FPN and basis module in half precision (bf16 on cpu, fp16 on npu/cuda); "
                                  "the FCOS head, whose box regression needs the mantissa, and all after it fp32"),
    Switch("half_towers", "extra", "the FCOS head's tower convolutions in half precision (bf16 on cpu, fp16 on "
                                   "npu/cuda); their GroupNorm, the predictors and all after them stay fp32"),
    Switch("channels_last", "extra", "NHWC memory format for the convolutions"),
    Switch("lazy_attention", "extra", "BlendMask's top layer (the attention conv) evaluated only at the detections "
                                      "left after NMS instead of at every FPN location"),
    Switch("blend_matmul", "extra", "the blender's bilinear upsampling of the attention (A x A -> 56 x 56) as two "
                                    "small matmuls with the fixed weights instead of F.interpolate"),
    Switch("blend_chunks", "extra", f"the blender takes the detections {BLEND_CHUNK} at a time into one output: "
                                    "cache-sized temporaries instead of 5 MB ones that a CPU's allocator returns "
                                    "to the OS and page-faults back in on every image"),
    Switch("raw_masks", "extra", "return the 56x56 mask probabilities with their boxes; paste full-image masks "
                                 "only on demand (001's raw-mask head)"),
    Switch("compile_model", "extra", "torch.compile of backbone, head and basis module together"),
]}

_P = ["device_resize", "sync_free_decode", "runtime", "compile_backbone", "pad64"]
RECIPES: Dict[str, List[str]] = {
    "baseline": [],
    "p0": _P[:1],
    "p1": _P[:2],
    "p2": _P[:3],
    "p3": _P[:4],
    "p4": _P[:5],
    "p4+fold_bn": _P + ["fold_bn"],
    "p4+half": _P + ["half"],
    "p4+channels_last": _P + ["channels_last"],
    "p4+raw_masks": _P + ["raw_masks"],
    "p4+lazy_attention": _P + ["lazy_attention"],
    "p4+mixed_half": _P + ["mixed_half"],
    "p4+blend_chunks": _P + ["blend_chunks"],
    "p4+half_towers": _P + ["half_towers"],
    "best": _P + ["fold_bn", "raw_masks", "lazy_attention", "blend_matmul"],
    # on a CPU there is no host-device sync to remove and the fixed-shape NMS costs O(K^2), so the
    # CPU's best chain leaves P1 out; less work (lazy attention, blend_chunks) and bf16 where the CPU
    # computes it natively (the half switches; skipped without AVX-512) are what is left to gain
    # (the measurements behind each choice: README, "What we found")
    "best_cpu": ["device_resize", "runtime", "compile_backbone", "pad64", "fold_bn", "raw_masks", "channels_last",
                 "lazy_attention", "blend_matmul", "blend_chunks", "mixed_half", "half_towers"],
}
STAGE_RECIPES = ["baseline", "p0", "p1", "p2", "p3", "p4"]

#: Switches that act on the host side only (pre-processing, decode, blender, paste, padding): what
#: still applies when an offline runtime runs the network (P6). The network's own switches
#: (compile, fold_bn, half precision, channels_last, lazy_attention) are the offline model's business.
HOST_SWITCHES = ("device_resize", "sync_free_decode", "runtime", "pad64", "raw_masks", "blend_matmul", "blend_chunks")


def host_switches(recipe: Union[str, Sequence[str]]) -> List[str]:
    """The recipe's host-side switches (HOST_SWITCHES), in its order."""
    return [n for n in recipe_switches(recipe) if n in HOST_SWITCHES]

RECOMPILE_LIMIT = 32
PAD_MULTIPLE = 64


def recipe_switches(recipe: Union[str, Sequence[str]]) -> List[str]:
    """Names of the switches of a recipe name ("p3", "p4+half") or an explicit list."""
    if isinstance(recipe, str):
        if recipe in RECIPES:
            return list(RECIPES[recipe])
        parts = recipe.split("+")
        if parts[0] in RECIPES:
            names = list(RECIPES[parts[0]]) + parts[1:]
        else:
            raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    else:
        names = list(recipe)
    unknown = [n for n in names if n not in SWITCHES]
    if unknown:
        raise ValueError(f"unknown switch(es) {unknown}; known: {', '.join(SWITCHES)}")
    return names


def half_dtype(device: torch.device) -> str:
    """fp16 on accelerators; bf16 on the CPU (fp16 convolutions are slow or missing there)."""
    return "bfloat16" if device.type == "cpu" else "float16"


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


@dataclass
class CompileInfo:
    backend: str
    targets: List[str]
    #: dynamo's recompile limit while this recipe's shapes compile (study.steps.warm_shapes sets it):
    #: RECOMPILE_LIMIT with pad64 (the seed's P4), dynamo's own default without (the seed's P3)
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


def _compile(module: nn.Module, backend: str) -> nn.Module:
    if backend == "npu":
        import torch_npu  # noqa: F401  (registers the npu backend: docs/npu.md "Graph mode")
    return torch.compile(own_forward(module), backend=backend, dynamic=False)


def build_pipeline(base: Pipeline, recipe: Union[str, Sequence[str]], device: Optional[torch.device] = None,
                   runtime: Optional[Any] = None) -> Pipeline:
    """A new Pipeline for `recipe` on a deep copy of `base`'s model (base is left as it is).
    `runtime`: a blendstudy.runtime.RuntimeConfig applied in-process for the "runtime" switch
    (knobs that must be set before torch starts are the worker process's environment: runtime.worker_env)."""
    names = recipe_switches(recipe)
    dev = device or base.device
    model: BlendMask = copy.deepcopy(base.model).to(dev).eval()
    opts = replace(base.options)
    info: Dict[str, Any] = {"switches": names}
    if "device_resize" in names:
        opts.resize = "device"
    if "sync_free_decode" in names:
        opts.decode = "sync_free"
    skipped = {n: why for n in names if (why := devmod.unsupported_switch(dev, n))}
    if skipped:
        info["skipped"] = skipped
        names = [n for n in names if n not in skipped]
    if "runtime" in names and runtime is not None:
        info["runtime"] = apply_in_process(runtime, dev)
    if "fold_bn" in names:
        info["folded_bn"] = fold_frozen_bn(model)
    for part in ("mixed_half", "half_towers"):
        if "half" in names and part in names:
            raise ValueError(f"switches 'half' (the whole network) and {part!r} exclude each other")
    if "mixed_half" in names:
        half = getattr(torch, half_dtype(dev))
        model.backbone = HalfIO(model.backbone, half)
        model.basis_module = HalfIO(model.basis_module, half)
    if "half_towers" in names:
        info["half_tower_convs"] = half_tower_convs(model, getattr(torch, half_dtype(dev)))
    if "half" in names:
        opts.dtype = half_dtype(dev)
        model = model.to(getattr(torch, opts.dtype))
        # the pixel statistics stay fp32: normalisation happens before the cast
        model.pixel_mean, model.pixel_std = model.pixel_mean.float(), model.pixel_std.float()
    if "channels_last" in names:
        opts.channels_last = True
        model = model.to(memory_format=torch.channels_last)
    if "raw_masks" in names:
        opts.raw_masks = True
    if "lazy_attention" in names:
        model.lazy_attention = True
    if "blend_matmul" in names:
        model.blender.upsample = "matmul"
    if "blend_chunks" in names:
        model.blender.chunk = BLEND_CHUNK
    if "pad64" in names:
        opts.pad_multiple = PAD_MULTIPLE
        info["recompile_limit_knob"] = devmod.set_recompile_limit(RECOMPILE_LIMIT)
    backend = devmod.default_compile_backend(dev)
    limit = RECOMPILE_LIMIT if "pad64" in names else default_recompile_limit()
    if "compile_model" in names:
        model.backbone = _compile(model.backbone, backend)
        model.proposal_generator = _compile(model.proposal_generator, backend)
        model.basis_module = _compile(model.basis_module, backend)
        info["compile"] = CompileInfo(backend, ["backbone", "proposal_generator", "basis_module"], limit)
    elif "compile_backbone" in names:
        model.backbone = _compile(model.backbone, backend)
        info["compile"] = CompileInfo(backend, ["backbone"], limit)
    pipe = Pipeline(model, base.min_size, base.max_size, opts, dense=base.dense)
    pipe.recipe_info = info
    return pipe


def describe_recipes(recipes: Sequence[str] = STAGE_RECIPES, skipped: Optional[Mapping[str, Mapping[str, str]]] = None
                     ) -> List[Dict[str, str]]:
    """Rows (recipe, stage, added switch, description, skipped) for the notebooks' tables;
    ``skipped``: recipe -> {switch: why this device cannot run it} (Pipeline.recipe_info)."""
    rows, prev = [], []
    for r in recipes:
        names = recipe_switches(r)
        added = [n for n in names if n not in prev] or ["-"]
        rows.append({"recipe": r, "adds": ", ".join(added),
                     "stage": ", ".join(sorted({SWITCHES[n].stage for n in added if n in SWITCHES})) or "-",
                     "change": "; ".join(SWITCHES[n].description for n in added if n in SWITCHES) or "reference",
                     "skipped": "; ".join(f"{n}: {why}" for n, why in ((skipped or {}).get(r) or {}).items()) or "-"})
        prev = names
    return rows
