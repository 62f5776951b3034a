"""P6's measuring steps (run INSIDE worker processes): the network's dense part exported to ONNX
and run by an offline engine (ONNX Runtime, OpenVINO, Ascend om), the host side -- pre-processing,
decode, blender, paste -- exactly the study's pipeline with the host switches of a recipe.

The params' ``offline`` section says which engines, which input shapes (``static``: one fixed-size
model per padded size the images give, as P4's compiled graphs; ``dynamic``: one model for any
H, W), whose host switches (``host_recipe``) and whether to try int8. Durations in ms, sizes MiB.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from blendstudy import optimize
from blendstudy.backends import (
    BackendError,
    PerShapeBackend,
    atc_command,
    export_onnx,
    load_backend,
    quantize_onnx,
    soc_version,
)
from blendstudy.data.images import read_image
from blendstudy.device import no_native_bf16
from blendstudy.measure.latency import measure_latency, paired_compare
from blendstudy.measure.memory import process_memory
from blendstudy.measure.profile import profile_stages
from blendstudy.measure.roofline import RooflineRow
from blendstudy.measure.worker import process_info
from blendstudy.pipeline import Pipeline
from blendstudy.results import BackendMeasurement, LatencyResult
from blendstudy.study.context import Context, StudySpec, context
from blendstudy.study.offline_int8 import int8_methods
from blendstudy.study.params import open_dataset, resolve_config
from blendstudy.study.roofline import backend_roofline, recipe_roofline
from blendstudy.study.steps import distinct_shapes, warm_shapes

__all__ = ["OfflineSettings", "bf16_plan", "compile_om", "export_variant", "fastest_recipe", "measure_backend",
           "measure_memory", "offline_settings", "padded_sizes", "quantize_variant", "recipe_rows", "settings"]


@dataclass(frozen=True)
class OfflineSettings:
    """The params' ``offline`` section as this study's device resolves it (its defaults:
    blendstudy.study.params_schema.OfflineParams): the host recipe named, the int8 methods checked,
    and whether a bf16 variant is made (``bf16``) or why not (``bf16_why``)."""

    backends: List[str]
    shapes: List[str]
    host_recipe: str
    int8: List[str]
    calibration_images: int
    compare_recipe: Optional[str]
    bf16: bool
    bf16_why: Optional[str]


def settings(spec: StudySpec) -> OfflineSettings:
    """offline_settings as a worker sees the study (its device decides the default host recipe)."""
    return offline_settings(context(spec))


def offline_settings(ctx: Context) -> OfflineSettings:
    """The params' ``offline`` section resolved for ``ctx``'s device."""
    o = ctx.params.offline
    make, why = bf16_plan(o.bf16, ctx.device)
    return OfflineSettings(list(o.backends), list(o.shapes),
                           o.host_recipe or ("offline_cpu" if ctx.device.type == "cpu" else "best"),
                           int8_methods(o.int8), int(o.calibration_images), o.compare_recipe, make, why)


def bf16_plan(wanted: Any, device: Any) -> Tuple[bool, Optional[str]]:
    """The params' ``offline.bf16``: (whether P6 adds a bf16 variant, the reason when it does not).
    "auto" makes it where the CPU computes bfloat16 natively (device.no_native_bf16), true always,
    false never."""
    why = no_native_bf16(device)
    if wanted is False or wanted is None:
        return False, "offline.bf16 is false"
    return wanted is True or why is None, why


def _host_pipeline(ctx: Context, host_recipe: str) -> Pipeline:
    return ctx.pipeline(optimize.host_recipe(host_recipe))


def padded_sizes(spec: StudySpec, host_recipe: str) -> List[str]:
    """The padded input sizes ("HxW") the benchmark images give under the host recipe's padding."""
    ctx = context(spec)
    return [f"{h}x{w}" for h, w in sorted(distinct_shapes(ctx, _host_pipeline(ctx, host_recipe)))]


def _model_root(ctx: Context) -> Path:
    return ctx.run_folder / "p6_offline" / "models"


def export_variant(spec: StudySpec, shape_kind: str, host_recipe: str) -> Dict[str, Any]:
    """Export the dense part for ``shape_kind`` ("static": one model per padded size of the benchmark
    images under the host recipe's padding; "dynamic": one model) into <run>/p6_offline/models/.
    Returns {"kind", "dirs": {"HxW" | "dynamic": dir}, "export_s", "max_rel", "verified"}."""
    ctx = context(spec)
    host = _host_pipeline(ctx, host_recipe)
    model = ctx.loaded.pipeline.model
    config, weights = resolve_config(ctx.params), ctx.loaded.weights
    dirs: Dict[str, str] = {}
    seconds, worst = 0.0, 0.0
    # the host recipe's lazy attention carries over: the graph stops at the bbox towers and the host
    # computes the attention at the detections left after NMS (BlendMask.attend)
    lazy = "lazy_attention" in optimize.recipe_switches(host_recipe)
    if shape_kind == "dynamic":
        sizes: List[Optional[Tuple[int, int]]] = [None]
    else:
        sizes = sorted(distinct_shapes(ctx, host))
    for size in sizes:
        name = "dynamic" if size is None else f"{size[0]}x{size[1]}"
        out = _model_root(ctx) / f"{shape_kind}_{name}{'_lazy' if lazy else ''}"
        res = export_onnx(model, out, input_size=size, dynamic=size is None, config_name=config,
                          checkpoint=weights or "random", lazy_attention=lazy)
        dirs[name] = str(res.model_dir)
        seconds += res.export_seconds
        worst = max(worst, res.max_rel)
    soc = soc_version()
    atc = [" ".join(atc_command(Path(d) / "model.onnx", Path(d) / "model", soc or "<soc: npu-smi info>",
                                [int(v) for v in name.split("x")]))
           for name, d in dirs.items() if name != "dynamic"]
    return {"kind": shape_kind, "dirs": dirs, "export_s": seconds, "max_rel": worst, "verified": True,
            "lazy_attention": lazy, "atc": atc, "soc_version": soc, "process": process_info()}


def compile_om(spec: StudySpec, exported: Dict[str, Any]) -> Dict[str, Any]:
    """ATC on this Ascend host: every fixed-size export of ``exported`` to its model.om (the om
    backend runs static shapes only). Raises BackendError when atc is not on PATH (source CANN's
    set_env.sh) or a conversion fails (its last output line)."""
    if "dynamic" in exported["dirs"]:
        raise BackendError("the om backend needs fixed-size exports (offline.shapes: static)")
    if shutil.which("atc") is None:
        raise BackendError("atc not found: source /usr/local/Ascend/ascend-toolkit/set_env.sh before the study")
    soc = soc_version()
    t0 = time.perf_counter()
    for name, d in exported["dirs"].items():
        cmd = atc_command(Path(d) / "model.onnx", Path(d) / "model", soc or "", [int(v) for v in name.split("x")])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise BackendError(f"{' '.join(cmd)}: {tail[0]}")
    return {**exported, "kind": exported["kind"] + "-om", "atc_s": time.perf_counter() - t0}


def quantize_variant(spec: StudySpec, exported: Dict[str, Any], host_recipe: str, images: int) -> Dict[str, Any]:
    """int8 (ONNX Runtime static quantization) of an exported variant, calibrated on images of the
    params' ``data.calibration`` split -- training images, never the evaluation images."""
    ctx = context(spec)
    host = _host_pipeline(ctx, host_recipe)
    calib = open_dataset(ctx.params, "calibration")
    batches = [host.prepare(read_image(calib.image_path(i)))[0] for i in calib.image_ids[:images]]
    dirs: Dict[str, str] = {}
    t0 = time.perf_counter()
    for name, d in exported["dirs"].items():
        fitting = [b for b in batches if name == "dynamic" or f"{b.shape[-2]}x{b.shape[-1]}" == name] or batches
        out = Path(d).with_name(Path(d).name + "_int8")
        dirs[name] = str(quantize_onnx(d, fitting, out))
    return {"kind": exported["kind"] + "-int8", "dirs": dirs, "export_s": time.perf_counter() - t0, "int8": True,
            "calibration": f"{calib.ann_file.name}: {min(images, len(calib))} images", "process": process_info()}


def _backend(ctx: Context, engine: str, exported: Dict[str, Any]):
    config, weights = resolve_config(ctx.params), ctx.loaded.weights or "random"
    options = {"properties": {"INFERENCE_PRECISION_HINT": "bf16"}} if exported.get("precision") == "bf16" else {}
    dirs = exported["dirs"]
    if "dynamic" in dirs:
        return load_backend(engine, dirs["dynamic"], config=config, checkpoint=weights, **options)
    return PerShapeBackend({tuple(int(v) for v in k.split("x")): load_backend(engine, d, config=config,
                                                                            checkpoint=weights, **options)
                            for k, d in dirs.items()})


def _precision(exported: Dict[str, Any]) -> str:
    return str(exported.get("precision") or ("int8" if exported.get("int8") else "fp32"))


def offline_pipeline(ctx: Context, engine: str, exported: Dict[str, Any], host_recipe: str) -> Tuple[Pipeline, float]:
    """(the host recipe's pipeline with its dense part run by ``engine``, session creation s)."""
    t0 = time.perf_counter()
    backend = _backend(ctx, engine, exported)
    session_s = time.perf_counter() - t0
    pipe = optimize.build_pipeline(ctx.loaded.pipeline, optimize.host_recipe(host_recipe))
    pipe.dense = backend
    pipe.recipe_info["dense"] = backend.describe()
    return pipe, session_s


def measure_backend(spec: StudySpec, engine: str, exported: Dict[str, Any], host_recipe: str,
                    fastest: str) -> BackendMeasurement:
    """One offline backend in this (fresh) process: session creation apart, the first call of each
    shape, peak memory after one pass over the benchmark images (before any PyTorch recipe is
    built here: what a process running only this backend needs, as measure_memory would give in
    a process of its own), latency, paired A/B against the baseline AND against the fastest
    PyTorch recipe (``fastest``), the gate against the baseline, and where the time goes."""
    ctx = context(spec)
    label = f"{engine} {exported['kind']}"
    pipe, session_s = offline_pipeline(ctx, engine, exported, host_recipe)
    first_ms = [measure_latency(pipe, {n: ctx.images[n]}, ctx.device, warmup=0, repeats=1,
                                progress=False).first_call_ms for n in distinct_shapes(ctx, pipe).values()]
    memory = _memory_after_pass(ctx, pipe, label)
    t = ctx.params.timing
    run = measure_latency(pipe, ctx.images, ctx.device, warmup=t.warmup, repeats=t.repeats, progress=False)
    latency = LatencyResult.of(label, run, process_info())
    refs = {r: ctx.pipeline(r) for r in dict.fromkeys(["baseline", fastest])}
    for r, p in refs.items():
        warm_shapes(ctx, r, p)
    pairs = {f"{label} vs {r}": paired_compare(p, pipe, ctx.images, ctx.device, rounds=t.rounds, warmup=t.warmup,
                                               n_boot=t.n_boot, confidence=t.confidence, progress=False,
                                               name_a=r, name_b=label) for r, p in refs.items()}
    outputs = {"baseline": ctx.outputs("baseline"), label: ctx.detect(pipe)}
    accuracy, gate, note = ctx.gates(outputs, [("baseline", label)])
    p = ctx.params.profile
    profile = profile_stages(pipe, list(ctx.images.values())[: p.images], warmup=p.warmup, repeats=p.repeats,
                             progress=False)
    row = {"backend": label, "runtime": engine, "shapes": exported["kind"], "host recipe": host_recipe,
           "models": len(exported["dirs"]), "export s": exported["export_s"], "session s": session_s,
           "precision": _precision(exported), "first call ms (per shape)": first_ms,
           "steady mean ms": run.stats.mean,
           "providers": pipe.recipe_info["dense"].get("providers") or pipe.recipe_info["dense"].get("models")}
    roofline = backend_roofline(ctx, label, pipe, precision=_precision(exported),
                                lazy=bool(exported.get("lazy_attention")), stage_ms=profile.stage_ms)
    return BackendMeasurement(row, latency, pairs, accuracy, gate, note, profile, memory, roofline)


def _memory_after_pass(ctx: Context, pipe: Pipeline, label: str) -> Dict[str, Any]:
    for image in ctx.images.values():
        pipe(image)
    return {"pipeline": label, **process_memory(ctx.device), "process": process_info()}


def measure_memory(spec: StudySpec, recipe: str) -> Dict[str, Any]:
    """Peak memory of ONE PyTorch recipe in this (fresh) process, run once over the benchmark images
    after its shapes are compiled (an offline backend's is taken in measure_backend's own worker)."""
    ctx = context(spec)
    pipe = ctx.pipeline(recipe)
    warm_shapes(ctx, recipe, pipe)
    return _memory_after_pass(ctx, pipe, recipe)


def fastest_recipe(spec: StudySpec, candidates: Sequence[str]) -> str:
    """The PyTorch recipe with the lowest median latency among ``candidates`` in this process."""
    ctx = context(spec)
    t = ctx.params.timing
    best, best_ms = candidates[0], float("inf")
    for r in candidates:
        pipe = ctx.pipeline(r)
        warm_shapes(ctx, r, pipe)
        ms = measure_latency(pipe, ctx.images, ctx.device, warmup=t.warmup, repeats=1, progress=False).stats.p50
        if ms < best_ms:
            best, best_ms = r, ms
    return best


def recipe_rows(spec: StudySpec, recipe: str) -> List[RooflineRow]:
    """The roofline of PyTorch recipe ``recipe`` in this process (every padded shape compiled first),
    beside the backends' in P6's table: what the offline networks are measured against."""
    ctx = context(spec)
    pipe = ctx.pipeline(recipe)
    warm_shapes(ctx, recipe, pipe)
    return recipe_roofline(ctx, recipe, pipe)
