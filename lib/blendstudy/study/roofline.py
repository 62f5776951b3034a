"""The roofline of the study's pipelines, measured inside a worker (P4's recipes, P6's backends).

Per pipeline: the stage times of a profiled pass over the first ``profile.images`` benchmark images
(the pipeline as measured: compiled, offline model and all), the FLOPs of the same images counted
on the pipeline's eager twin (same switches, nothing compiled; for an offline backend, the PyTorch
network it was exported from, which computes the same convolutions), and this process's GEMM peaks
(blendstudy.measure.roofline).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from blendstudy import optimize
from blendstudy.measure.profile import profile_stages
from blendstudy.measure.roofline import Peaks, RooflineRow, mean_stage_flops, measure_peaks, recipe_precision, rows
from blendstudy.pipeline import Pipeline
from blendstudy.study.context import Context

__all__ = ["backend_roofline", "peaks", "recipe_roofline"]

#: switches that change how the network is run, not what it computes
_COMPILE = ("compile_backbone", "compile_model")


def _half_name(ctx: Context) -> str:
    return {"bfloat16": "bf16", "float16": "fp16"}[optimize.half_dtype(ctx.device)]


def peaks(ctx: Context, precisions: Sequence[str]) -> Peaks:
    """This process's GEMM peaks for ``precisions`` (fp32 always), each measured once per process."""
    wanted = list(dict.fromkeys(["fp32", *precisions]))
    flops = {}
    for p in wanted:
        one = ctx.once(("gemm peak", p), lambda p=p: measure_peaks(ctx.device, [p]))
        flops.update(one.flops)
    return replace(one, flops=flops)


def applied_switches(pipe: Pipeline) -> List[str]:
    """The switches the pipeline was built with, less those this device skipped."""
    info = getattr(pipe, "recipe_info", {}) or {}
    return [n for n in info.get("switches", []) if n not in info.get("skipped", {})]


def _images(ctx: Context, n: int) -> List[np.ndarray]:
    return list(ctx.images.values())[: max(1, n)]


def _profiled_ms(ctx: Context, pipe: Pipeline, images: Sequence[np.ndarray]) -> Dict[str, float]:
    p = ctx.params.profile
    return profile_stages(pipe, images, warmup=p.warmup, repeats=p.repeats, progress=False).stage_ms


def recipe_roofline(ctx: Context, name: str, pipe: Pipeline, images: Optional[int] = None) -> List[RooflineRow]:
    """Roofline rows of PyTorch recipe ``name`` whose (warmed) pipeline is ``pipe``."""
    ims = _images(ctx, images or ctx.params.profile.images)
    switches = applied_switches(pipe)
    eager = optimize.build_pipeline(ctx.loaded.pipeline, [n for n in switches if n not in _COMPILE])
    flops = mean_stage_flops(eager, ims)
    precision = recipe_precision(switches, _half_name(ctx))
    return rows(name, _profiled_ms(ctx, pipe, ims), flops, precision, peaks(ctx, list(precision.values())))


def backend_roofline(ctx: Context, label: str, pipe: Pipeline, precision: str, lazy: bool = False,
                     images: Optional[int] = None, stage_ms: Optional[Dict[str, float]] = None) -> List[RooflineRow]:
    """Roofline rows of offline backend ``label`` whose pipeline (host switches + offline dense part)
    is ``pipe`` and whose dense network runs in ``precision`` ("fp32", "bf16" or "int8"): the dense
    network's FLOPs are those of the eager network it was exported from
    (``lazy``: exported without the attention conv, which the host then runs at the detections; its
    few FLOPs are counted in the dense network's). ``stage_ms``: the pipeline's profile over the
    same first ``images`` benchmark images when the caller has it (else it is measured here)."""
    ims = _images(ctx, images or ctx.params.profile.images)
    switches = [n for n in applied_switches(pipe) if n not in _COMPILE] + (["lazy_attention"] if lazy else [])
    twin = optimize.build_pipeline(ctx.loaded.pipeline, switches)
    per_stage = mean_stage_flops(twin, ims)
    dense = sum(per_stage.pop(s, 0.0) for s in ("backbone+FPN", "FCOS head", "basis module"))
    flops = {**per_stage, "dense network": dense}
    return rows(label, stage_ms or _profiled_ms(ctx, pipe, ims), flops, {"dense network": precision},
                peaks(ctx, [precision]))
