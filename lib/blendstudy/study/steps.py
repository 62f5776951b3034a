"""The study's measuring steps: what runs INSIDE a worker process (blendstudy.measure.worker).

Each step takes the :class:`~blendstudy.study.context.StudySpec` and rebuilds (once per process)
the study's context from it; each returns a typed record of blendstudy.results that states the
process it ran in. The notebook kernel never calls these directly: blendstudy.study.protocol starts
the worker with the stage's runtime environment and calls them there. Durations in ms.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from blendstudy import device as devices
from blendstudy import doctor, optimize
from blendstudy.checkpoint import LoadReport
from blendstudy.jsonable import to_jsonable
from blendstudy.measure.clock import timed_call
from blendstudy.measure.deform_cost import fallback_cost, r101_deform_shapes
from blendstudy.measure.latency import LatencyRun, measure_latency, median_input, paired_compare, tail_breakdown
from blendstudy.measure.pixels import resize_difference
from blendstudy.measure.profile import count_flops, efficiency, matmul_peak_flops, profile_stages
from blendstudy.measure.worker import process_info
from blendstudy.model.layers import DeformConvNorm
from blendstudy.ops.deform_conv import deform_kernel_info
from blendstudy.pipeline import Pipeline
from blendstudy.results import BaselineResult, EnvCheckResult, LatencyResult, WeightsCheckResult
from blendstudy.runtime import RuntimeConfig
from blendstudy.stage_results import (
    STAGE_RECORDS,
    CompileStageResult,
    DecodeStageResult,
    ExtrasResult,
    PaddedShapes,
    PaddingStageResult,
    ResizeStageResult,
    ShapeCompile,
    StageResult,
)
from blendstudy.study.context import Context, StudySpec, context, study_device
from blendstudy.study.params import profile_images
from blendstudy.study.roofline import recipe_roofline

__all__ = ["SEED_ENVIRONMENT", "Prepared", "check_environment", "check_weights", "measure_baseline", "measure_extras",
           "measure_latency_of", "measure_stage", "prepare", "time_one"]

#: The seed study's machine (docs/reference_study.md), shown beside this run's.
SEED_ENVIRONMENT = {"python": "3.9.25", "torch": "2.8.0", "torch_npu": "2.8.0.post2", "cann": "8.5.0",
                    "device_name": "Ascend 910B3", "cpu_model": "Kunpeng 920", "cpu_cores": 192}


# ---------------------------------------------------------------------------- building blocks
def _latency(ctx: Context, recipe: str, pipe: Pipeline, images: Optional[Dict[str, Any]] = None,
             runtime: Optional[RuntimeConfig] = None) -> LatencyResult:
    """The recipe's latency run on ``images`` (default: all benchmark images); on all of them it is
    measured once per process and read back by a later step of the same worker."""
    t = ctx.params.timing

    def run() -> LatencyResult:
        r = measure_latency(pipe, images or ctx.images, ctx.device, warmup=t.warmup, repeats=t.repeats,
                            progress=False, desc=recipe)
        return LatencyResult.of(recipe, r, process_info())
    return run() if images is not None else ctx.once(("latency", recipe, _name(runtime)), run)


def _paired(ctx: Context, a: str, b: str, pipes: Dict[str, Pipeline], runtime: Optional[RuntimeConfig] = None):
    """Paired A/B of recipes ``a`` and ``b`` on the benchmark images, once per process."""
    t = ctx.params.timing
    return ctx.once(("paired", a, b, _name(runtime)), lambda: paired_compare(
        pipes[a], pipes[b], ctx.images, ctx.device, rounds=t.rounds, warmup=t.warmup, n_boot=t.n_boot,
        confidence=t.confidence, progress=False, name_a=a, name_b=b))


def _name(runtime: Optional[RuntimeConfig]) -> Optional[str]:
    return runtime.name if runtime is not None else None


def distinct_shapes(ctx: Context, pipe: Pipeline) -> Dict[Tuple[int, int], str]:
    """Each distinct padded input shape of the benchmark images -> the first image giving it."""
    return {shape: names[0] for shape, names in images_by_shape(ctx, pipe).items()}


def images_by_shape(ctx: Context, pipe: Pipeline) -> Dict[Tuple[int, int], List[str]]:
    """Each distinct padded input shape of the benchmark images -> its images, in first-seen order."""
    out: Dict[Tuple[int, int], List[str]] = {}
    for name, image in ctx.images.items():
        out.setdefault(tuple(int(v) for v in pipe.prepare(image)[0].shape[-2:]), []).append(name)
    return out


def _graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process, whatever the backend (inductor, npu, eager)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def warm_shapes(ctx: Context, recipe: str, pipe: Pipeline) -> List[ShapeCompile]:
    """Compile every input shape of a compiled recipe BEFORE anything is measured: one call per
    distinct shape, timed and reported apart, so no compile stall lands inside a measured sample.
    Each compiled part runs under the recipe's own recompile limit (optimize.CompileInfo: dynamo's
    default for P3, 32 with pad64 as the seed's P4; set per call by the compiled part itself, the
    process's setting untouched). A shape past the limit gets no graph and runs eager from then on
    (dynamo's behaviour, what the seed's P3 had): its row says "eager", with the number of
    benchmark images of that shape. Each compiled pipeline has its own code object
    (optimize.own_forward), so a call that compiled no new graph ran eager. Returns a ShapeCompile
    per shape (the same rows again for a pipeline already warmed); [] for a recipe that compiles nothing."""
    info = pipe.recipe_info.get("compile")
    if info is None:
        return []
    if "warm" in pipe.recipe_info:
        return pipe.recipe_info["warm"]
    limit = int(getattr(info, "recompile_limit", None) or optimize.default_recompile_limit())
    pipe.recipe_info["recompile_limit"] = limit
    rows: List[ShapeCompile] = []
    for shape, names in images_by_shape(ctx, pipe).items():
        graphs = _graphs_compiled()
        ms = timed_call(pipe, ctx.images[names[0]], ctx.device)
        rows.append(ShapeCompile(recipe, shape, pipe.pad_multiple, names[0], len(names), ms, limit,
                                 "compiled" if _graphs_compiled() > graphs else "eager", str(info.backend)))
    pipe.recipe_info["warm"] = rows
    return rows


def _recipe_table(pipes: Dict[str, Pipeline]) -> List[Dict[str, Any]]:
    return optimize.describe_recipes(list(pipes), {r: p.recipe_info.get("skipped", {}) for r, p in pipes.items()})


def _stage_record(ctx: Context, stage: str, previous: str, pipes: Dict[str, Pipeline]) -> StageResult:
    """The stage's own record (STAGE_RECORDS; the common StageResult for any other stage), empty."""
    kind = STAGE_RECORDS.get(stage, StageResult)
    return kind(stage=stage, previous=previous, recipes=_recipe_table(pipes), **ctx.model_info())


# ---------------------------------------------------------------------------- steps
def check_environment(spec: StudySpec) -> EnvCheckResult:
    """env_check: where this process runs (device, versions, CANN, cards), the npu status, the
    doctor's named checks and the deformable-convolution kernel in use."""
    params = spec.load_params()
    device = devices.resolve_device(params.device)
    info = devices.environment_info(device)
    npu = {"torch_npu": info.get("torch_npu"), "import error": info.get("torch_npu_error"), "CANN": info.get("cann"),
           "npu usable": devices.npu_available(), "cuda usable": devices.cuda_available(), "chosen": str(device)}
    checks = doctor.run_checks(params.device)
    return EnvCheckResult(device=str(device), npu=npu, environment={**info, "process": process_info()},
                          seed_environment=SEED_ENVIRONMENT, checks=[vars(c) for c in checks.checks],
                          kernels={"deform_conv": deform_kernel_info(device)})


def check_weights(spec: StudySpec) -> WeightsCheckResult:
    """weights_check: the checkpoint against the model (size, tensors, parameters, coverage)."""
    ctx = context(spec)
    model, check = ctx.loaded.pipeline.model, ctx.loaded.load_report
    summary = {"config": str(ctx.params.model.config), "weights": ctx.weights,
               "file MiB": check.file_bytes / 2**20 if check else None,
               "checkpoint tensors": check.tensors if check else None,
               "model tensors": len(model.state_dict()), "model parameters": sum(p.numel() for p in model.parameters()),
               "coverage": f"{check.coverage:.1%}" if check else "n/a (random init)",
               "strict match": check.ok if check else None}
    return WeightsCheckResult(weights=ctx.weights, random_weights=ctx.loaded.random_weights,
                              check=_load_report(check), summary=summary, model=ctx.loaded.describe())


def _load_report(check: Optional[LoadReport]) -> Optional[Dict[str, Any]]:
    if check is None:
        return None
    return {**to_jsonable(check), "text": check.summary(limit=10)}


def measure_baseline(spec: StudySpec) -> BaselineResult:
    """baseline: its latency, the stage profile at the profile sizes (profiler overhead apart), the
    FLOP efficiency against the device's measured matmul peak."""
    ctx = context(spec)
    pipe = ctx.pipeline("baseline")
    run = _latency(ctx, "baseline", pipe)
    p = ctx.params.profile
    profiles = {}
    for h, w in p.image_sizes:
        images = profile_images(ctx.params, (h, w), p.images)
        profiles[f"{w}x{h}"] = profile_stages(pipe, images, warmup=p.warmup, repeats=p.repeats, progress=False)
    first = next(iter(ctx.images.values()))
    flops = count_flops(pipe, first)
    eff = efficiency(flops, run.stats.mean, matmul_peak_flops(ctx.device))
    deform = deform_costs(ctx, pipe, first) if any(isinstance(m, DeformConvNorm) for m in pipe.model.modules()) else []
    return BaselineResult(recipes=_recipe_table({"baseline": pipe}), runs={"baseline": run}, profiles=profiles,
                          efficiency=eff, deform_cost=deform, processes={"baseline": run.process}, **ctx.model_info())


def deform_costs(ctx: Context, pipe: Pipeline, image: Any) -> List[Dict[str, Any]]:
    """What the deformable stages cost (seed 003's question): the deformable 3x3 convolution of each
    res3-res5 shape at this network input size against an ordinary 3x3 convolution of the same
    shape, with the kernel the device selects, and the extra ms per image over the stage's
    deformable blocks (offset conv included)."""
    h, w = (int(v) for v in pipe.prepare(image)[0].shape[-2:])
    p = ctx.params.profile
    rows = []
    for c in fallback_cost(r101_deform_shapes(h, w), device=ctx.device, repeats=max(3, p.repeats), warmup=p.warmup,
                           impl=deform_kernel_info(ctx.device)["selected"]):
        rows.append({"stage": c.shape.stage, "channels": c.shape.channels,
                     "map (h, w)": [c.shape.height, c.shape.width],
                     "deformable blocks": c.shape.blocks, "kernel": c.impl, "deform ms": c.deform_ms,
                     "offset conv ms": c.offset_ms, "3x3 conv ms": c.conv_ms, "ratio": c.ratio,
                     "extra ms per image": c.shape.blocks * (c.deform_ms + c.offset_ms - c.conv_ms)})
    return rows


def measure_stage(spec: StudySpec, stage: str, previous: str, runtime: Optional[RuntimeConfig] = None) -> StageResult:
    """A stage against its previous stage and the baseline, in this process, as the stage's own
    record (STAGE_RECORDS): compile every shape first (reported apart), latency of each, paired A/B,
    the accuracy gate (decided once here), and what the stage itself is about (P0: the resize's
    pixels, P1: decode profiled, P3: compiles, P4: compiles, shapes and dynamo's counters)."""
    ctx = context(spec)
    recipes = list(dict.fromkeys(["baseline", previous, stage]))
    pipes = {r: ctx.pipeline(r, runtime) for r in recipes}
    out = _stage_record(ctx, stage, previous, pipes)
    for r, pipe in pipes.items():
        rows = warm_shapes(ctx, r, pipe)
        if isinstance(out, CompileStageResult):
            out.compile.extend(rows)
    for r, pipe in pipes.items():
        out.add_latency(_latency(ctx, r, pipe, runtime=runtime))
    out.comparisons = {f"{stage} vs {a}": _paired(ctx, a, stage, pipes, runtime)
                       for a in dict.fromkeys([previous, "baseline"])}
    outputs = {r: ctx.outputs(r, runtime) for r in recipes}
    pairs = [(r, stage) for r in dict.fromkeys(["baseline", previous])]
    out.accuracy, out.gate, out.ap_note = ctx.gates(outputs, pairs)
    _stage_part(ctx, out, pipes)
    out.processes = {"stage": process_info()}
    return out


def _stage_part(ctx: Context, out: StageResult, pipes: Dict[str, Pipeline]) -> None:
    """Fill in the stage's own part of its record: P0 the resized pixels against the baseline's,
    P1 the stage profile of the previous stage and this one, P4 the distinct shapes at each
    padding and dynamo's counters (P3's compile rows are filled as the shapes are warmed)."""
    stage, previous = out.stage, out.previous
    if isinstance(out, ResizeStageResult):
        out.resize_difference = resize_difference(pipes["baseline"], pipes[stage], ctx.images)
    if isinstance(out, DecodeStageResult):
        p = ctx.params.profile
        images = list(ctx.images.values())[: p.images]
        out.decode_profiles = {r: profile_stages(pipes[r], images, warmup=p.warmup, repeats=p.repeats, progress=False)
                               for r in (previous, stage)}
    if isinstance(out, PaddingStageResult):
        out.shapes = [PaddedShapes(r, pipes[r].pad_multiple, sorted(distinct_shapes(ctx, pipes[r])))
                      for r in (previous, stage)]
        out.dynamo_counters = {k: dict(v) for k, v in torch._dynamo.utils.counters.items()
                               if k in ("stats", "frames", "recompiles")}


def measure_extras(spec: StudySpec, stage: str, recipes: Sequence[str], runtime: Optional[RuntimeConfig] = None
                   ) -> ExtrasResult:
    """P4's recipes beyond the seed, in this process: latency, the gate against the baseline,
    paired speedup against the baseline, the fastest recipe's tail split into the images' part
    and a same-image control run, and stage profiles at the profile sizes of the stage and the
    fastest recipe. A recipe that this device runs as the same pipeline as one measured before
    (its own switches all skipped, e.g. bf16 on a CPU without AVX-512) is listed in ``same_as``,
    not measured twice; the stage's own latency and its pair with the baseline, measured by
    measure_stage in this same worker, are read back (Context.once), not measured again."""
    ctx = context(spec)
    pipes: Dict[str, Pipeline] = {}
    out = ExtrasResult()
    effective: Dict[Tuple[str, ...], str] = {}
    for r in dict.fromkeys([stage, *recipes]):
        pipe = ctx.pipeline(r, runtime)
        key = tuple(n for n in pipe.recipe_info["switches"] if n not in pipe.recipe_info.get("skipped", {}))
        if key in effective:
            out.same_as[r] = effective[key]
            continue
        effective[key] = r
        pipes[r] = pipe
    for r, pipe in pipes.items():
        warm_shapes(ctx, r, pipe)
    for r, pipe in pipes.items():
        out.add_latency(_latency(ctx, r, pipe, runtime=runtime))
    extra = [r for r in pipes if r != stage]
    outputs = {r: ctx.outputs(r, runtime) for r in ["baseline", *extra]}
    out.accuracy, out.gate, _ = ctx.gates(outputs, [("baseline", r) for r in extra])
    with_base = {**pipes, "baseline": ctx.pipeline("baseline", runtime)}
    out.paired_vs_baseline = {r: _paired(ctx, "baseline", r, with_base, runtime) for r in pipes}
    out.roofline = [row for r, pipe in with_base.items() for row in recipe_roofline(ctx, r, pipe)]
    t = ctx.params.timing
    fastest = min(out.runs, key=lambda r: out.runs[r].stats.p50)
    run = out.runs[fastest]
    as_run = LatencyRun(run.samples_ms, run.labels, run.first_call_ms, run.warmup_ms, run.stats)
    control_name = median_input(as_run)
    control = measure_latency(pipes[fastest], {control_name: ctx.images[control_name]}, ctx.device,
                              warmup=t.warmup, repeats=run.stats.n, progress=False)
    out.tail_recipe, out.tail = fastest, tail_breakdown(as_run, control)
    p = ctx.params.profile
    for h, w in p.image_sizes:
        images = profile_images(ctx.params, (h, w), p.images)
        for r in dict.fromkeys([stage, fastest]):
            pipe = pipes[r]
            out.profiles[f"{r} {w}x{h}"] = profile_stages(pipe, images, warmup=p.warmup, repeats=p.repeats,
                                                          progress=False)
    return out


def measure_latency_of(spec: StudySpec, recipe: str, runtime: Optional[RuntimeConfig] = None,
                       images: Optional[int] = None) -> LatencyResult:
    """One recipe's latency on the first ``images`` benchmark images, in this process (P2's sweep)."""
    ctx = context(spec)
    names = list(ctx.images)[: images or None]
    pipe = ctx.pipeline(recipe, runtime)
    warm_shapes(ctx, recipe, pipe)
    return _latency(ctx, recipe, pipe, {n: ctx.images[n] for n in names})


@dataclass
class Prepared:
    """A worker made ready for time_one (:func:`prepare`): its effective runtime (process), the
    benchmark image names in the order time_one indexes them, and the study's device there."""

    process: Dict[str, Any]
    images: List[str]
    device: str


def prepare(spec: StudySpec, recipes: Sequence[str], runtime: Optional[RuntimeConfig] = None) -> Prepared:
    """Build (and compile every shape of) these recipes in this process, ready for time_one;
    returns the process's effective runtime and the image names in order."""
    ctx = context(spec)
    for r in recipes:
        warm_shapes(ctx, r, ctx.pipeline(r, runtime))
    return Prepared(process_info(), list(ctx.images), str(ctx.device))


def time_one(spec: StudySpec, recipe: str, index: int, runtime: Optional[RuntimeConfig] = None) -> float:
    """One synchronised call (ms) of the recipe on benchmark image ``index``, in this process: one
    side of a paired A/B whose other side runs in another worker."""
    ctx = context(spec)
    image = list(ctx.images.values())[index]
    return timed_call(ctx.pipeline(recipe, runtime), image, ctx.device)


def gate(spec: StudySpec, pairs: Sequence[Tuple[str, str]], runtime: Optional[RuntimeConfig] = None):
    """The accuracy gate of (reference, test) recipe pairs computed in this process."""
    ctx = context(spec)
    outputs = {r: ctx.outputs(r, runtime) for pair in pairs for r in pair}
    return ctx.gates(outputs, pairs)


def environment(spec: StudySpec) -> Dict[str, Any]:
    """device.environment_info of the study's device as this process sees it, with the
    deformable-convolution kernel it selects (recorded in every results JSON)."""
    dev = study_device(spec)
    return {**devices.environment_info(dev), "deform_conv": deform_kernel_info(dev)}


def python_summary() -> Dict[str, str]:
    """Python and platform of this process (for a quick check that a worker runs)."""
    return {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__}
