"""The optimizations as named, composable switches, and the study's recipes as data.

A switch is a name and the InferenceOptions fields it sets (``Switch.sets``); a recipe is a list of
switch names. `recipe_options` turns a recipe into one InferenceOptions for a device, checking it in
one place (unknown switches, switches the device cannot run: blendstudy.device.unsupported_switch,
switches that exclude each other), and `build_pipeline(loaded, "p4")` returns a new Pipeline on a
model built for those options; the baseline pipeline is untouched, so both can be measured side by
side. Adding a switch: docs/adding_a_switch.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from blendstudy import device as devmod
from blendstudy.options import HOST_FIELDS, InferenceOptions
from blendstudy.pipeline import Pipeline
from blendstudy.runtime import apply_in_process
from blendstudy.transforms import (  # noqa: F401  (the switches' tools, importable from here as before)
    CompileInfo,
    HalfIO,
    default_recompile_limit,
    fold_frozen_bn,
    half_tower_convs,
    own_forward,
    prepare_model,
)

#: a value of Switch.sets: the device's half dtype (half_dtype)
HALF = "<half dtype of the device>"

BLEND_CHUNK = 16  # detections per blender chunk (blend_chunks): small enough to stay in the heap and the cache
RECOMPILE_LIMIT = 32
PAD_MULTIPLE = 64


@dataclass(frozen=True)
class Switch:
    name: str
    stage: str          # the seed's stage it belongs to ("P0".."P4") or "extra"
    description: str
    #: the InferenceOptions fields it sets (tuple fields: added to what earlier switches set)
    sets: Mapping[str, Any] = field(default_factory=dict)
    #: switches it cannot be combined with
    excludes: Tuple[str, ...] = ()


_WHOLE_MODEL = ("backbone", "proposal_generator", "basis_module")

SWITCHES: Dict[str, Switch] = {s.name: s for s in [
    Switch("device_resize", "P0", "shortest-edge resize as bilinear F.interpolate on the device instead of PIL "
                                  "on the CPU (the seed's largest single step); on a CPU device in uint8, as PIL",
           {"resize": "device"}),
    Switch("sync_free_decode", "P1", "FCOS decode + NMS with fixed shapes: no .cpu()/.item()/nonzero until the "
                                     "results are extracted", {"decode": "sync_free"}),
    Switch("runtime", "P2", "the best runtime setting of the P2 sweep (npu: TASK_QUEUE_ENABLE, core binding, "
                            "OMP threads; cuda: cudnn.benchmark, TF32; cpu: threads, affinity)", {"runtime": True}),
    Switch("compile_backbone", "P3", "torch.compile(backbone, dynamic=False): backend 'npu' (torchair) on Ascend, "
                                     "inductor elsewhere; dynamo's default recompile limit (8): shapes past "
                                     "it run eager", {"compile_targets": ("backbone",)}),
    Switch("pad64", "P4", "pad inputs to a multiple of 64 so fewer distinct shapes reach the compiled graph; "
                          f"dynamo recompile limit raised to {RECOMPILE_LIMIT}",
           {"pad_multiple": PAD_MULTIPLE, "recompile_limit": RECOMPILE_LIMIT}),
    Switch("fold_bn", "extra", "fold FrozenBN into the preceding conv's weight and bias (004's Conv-BN fusion; "
                               "exact in fp32 up to rounding)", {"fold_bn": True}),
    Switch("half", "extra", "network in half precision: fp16 on npu/cuda, bf16 on cpu (decode, ROIAlign and "
                            "paste stay fp32)", {"dtype": HALF}, excludes=("mixed_half", "half_towers")),
    Switch("mixed_half", "extra", "backbone, FPN and basis module in half precision (bf16 on cpu, fp16 on npu/cuda); "
                                  "the FCOS head, whose box regression needs the mantissa, and all after it fp32",
           {"half_parts": ("backbone", "basis_module"), "half_dtype": HALF}),
    Switch("half_towers", "extra", "the FCOS head's tower convolutions in half precision (bf16 on cpu, fp16 on "
                                   "npu/cuda); their GroupNorm, the predictors and all after them stay fp32",
           {"half_parts": ("tower_convs",), "half_dtype": HALF}),
    Switch("channels_last", "extra", "NHWC memory format for the convolutions", {"channels_last": True}),
    Switch("lazy_attention", "extra", "BlendMask's top layer (the attention conv) evaluated only at the detections "
                                      "left after NMS instead of at every FPN location", {"lazy_attention": True}),
    Switch("blend_matmul", "extra", "the blender's bilinear upsampling of the attention (A x A -> 56 x 56) as two "
                                    "small matmuls with the fixed weights instead of F.interpolate",
           {"blend_upsample": "matmul"}),
    Switch("blend_chunks", "extra", f"the blender takes the detections {BLEND_CHUNK} at a time into one output: "
                                    "cache-sized temporaries instead of multi-megabyte ones that a CPU's allocator "
                                    "returns to the OS and page-faults back in on every image",
           {"blend_chunk": BLEND_CHUNK}),
    Switch("raw_masks", "extra", "return the 56x56 mask probabilities with their boxes; paste full-image masks "
                                 "only on demand (001's raw-mask head)", {"raw_masks": True}),
    Switch("compile_model", "extra", "torch.compile of backbone, head and basis module together",
           {"compile_targets": _WHOLE_MODEL}),
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
    # P6's host side on a CPU: best_cpu's host switches and its lazy attention WITHOUT pad64, which is
    # P4's remedy for dynamo's recompile limit -- an offline engine has none, its static models are one
    # per padded size either way, and on the embedded default pad 64 moves the detections past the gate
    # (README, "What we found"); on an accelerator P6 keeps best's (ATC compiles one model per shape)
    "offline_cpu": ["device_resize", "runtime", "raw_masks", "lazy_attention", "blend_matmul", "blend_chunks"],
}
STAGE_RECIPES = ["baseline", "p0", "p1", "p2", "p3", "p4"]

#: The recipes measured beyond the seed's chain (P4's extras), named once; a params file's ``extras``
#: is one of these names or an explicit list of recipes (extra_recipes).
EXTRA_RECIPES: Dict[str, List[str]] = {
    # the embedded default study: seed 001's half-precision and raw-mask steps, lazy attention and
    # the two best chains; the single switches measured inside best / best_cpu (fold_bn, blend_chunks,
    # mixed_half, half_towers) are left out to keep `make reproduce` within 30 minutes on 2 cores
    # where bf16 is native and every half recipe is a pipeline of its own (params may list them)
    "default": ["p4+half", "p4+lazy_attention", "p4+raw_masks", "best", "best_cpu"],
    # the R_101_3x studies (the seed's network, meant for an accelerator): Conv-BN folding alone too,
    # no CPU chain
    "r101": ["p4+fold_bn", "p4+half", "p4+mixed_half", "p4+half_towers", "p4+lazy_attention", "p4+raw_masks",
             "best"],
    # the few-minute check of every code path (params/ci.yaml)
    "ci": ["p4+raw_masks", "best_cpu"],
}


def extra_recipes(extras: Union[None, str, Sequence[str]]) -> List[str]:
    """A params file's ``extras``: the name of a list of EXTRA_RECIPES, or a list of recipes; every
    recipe checked (recipe_switches)."""
    if isinstance(extras, str):
        if extras not in EXTRA_RECIPES:
            raise ValueError(f"unknown extras {extras!r}; named lists: {', '.join(EXTRA_RECIPES)} "
                             "(or a list of recipes)")
        recipes = list(EXTRA_RECIPES[extras])
    else:
        recipes = list(extras or [])
    for r in recipes:
        recipe_switches(r)
    return recipes


def _is_host(switch: Switch) -> bool:
    return any(name in HOST_FIELDS for name in switch.sets)


#: Switches that act on the host side only (pre-processing, decode, blender, paste, padding): what
#: still applies when an offline engine runs the network (P6). The network's own switches
#: (compile, fold_bn, half precision, channels_last, lazy_attention) are the offline model's business.
#: Derived from what each switch sets (options.HOST_FIELDS).
HOST_SWITCHES = tuple(name for name, s in SWITCHES.items() if _is_host(s))


def host_switches(recipe: Union[str, Sequence[str]]) -> List[str]:
    """The recipe's host-side switches (HOST_SWITCHES), in its order."""
    return [n for n in recipe_switches(recipe) if n in HOST_SWITCHES]


def host_recipe(recipe: Union[str, Sequence[str]]) -> str:
    """The recipe that keeps only ``recipe``'s host switches on the baseline: the PyTorch pipeline an
    offline engine's dense part is put into (P6, ``compare``'s BACKEND:DIR@RECIPE, the int8 calibration)."""
    return "+".join(["baseline", *host_switches(recipe)])


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


_TUPLE_FIELDS = {f.name for f in fields(InferenceOptions) if f.default == ()}


def apply_switch(options: InferenceOptions, switch: Switch, device: torch.device) -> InferenceOptions:
    """``options`` with what ``switch`` sets (HALF: the device's half dtype; tuple fields added to)."""
    changes: Dict[str, Any] = {}
    for name, value in switch.sets.items():
        value = half_dtype(device) if value == HALF else value
        if name in _TUPLE_FIELDS:
            value = tuple(dict.fromkeys(tuple(getattr(options, name)) + tuple(value)))
        changes[name] = value
    return replace(options, **changes)


def recipe_options(recipe: Union[str, Sequence[str]], device: torch.device,
                   base: Optional[InferenceOptions] = None) -> Tuple[InferenceOptions, Dict[str, str]]:
    """The one check of a recipe for a device, and its options: unknown switches raise ValueError
    (recipe_switches), so do switches that exclude each other; those the device cannot run
    (device.unsupported_switch) are left out and returned with why. Returns (options, skipped)."""
    names = recipe_switches(recipe)
    skipped = {n: why for n in names if (why := devmod.unsupported_switch(device, n))}
    names = [n for n in names if n not in skipped]
    for n in names:
        for other in SWITCHES[n].excludes:
            if other in names:
                raise ValueError(f"switches {n!r} and {other!r} exclude each other")
    options = base or InferenceOptions()
    for n in names:
        options = apply_switch(options, SWITCHES[n], device)
    return options, skipped


def build_pipeline(base: Pipeline, recipe: Union[str, Sequence[str]], device: Optional[torch.device] = None,
                   runtime: Optional[Any] = None) -> Pipeline:
    """A new Pipeline for `recipe` on a model built for its options from `base`'s (base is left as it
    is). `runtime`: a blendstudy.runtime.RuntimeConfig applied in-process for the "runtime" switch
    (knobs that must be set before torch starts are the worker process's environment: runtime.worker_env).
    ``recipe_info``: the switches, those skipped with why, and what building did (folded_bn,
    half_tower_convs, compile, runtime)."""
    dev = device or base.device
    options, skipped = recipe_options(recipe, dev, base.options)
    info: Dict[str, Any] = {"switches": recipe_switches(recipe)}
    if skipped:
        info["skipped"] = skipped
    if options.runtime and runtime is not None:
        info["runtime"] = apply_in_process(runtime, dev)
    model, done = prepare_model(base.model, options, dev, default_recompile_limit())
    info.update(done)
    pipe = Pipeline(model, base.min_size, base.max_size, options, dense=base.dense)
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
