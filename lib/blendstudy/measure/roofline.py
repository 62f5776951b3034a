"""A roofline per pipeline part: the FLOPs each part executes, its time, the FLOP/s it achieves,
and the fraction of this machine's measured GEMM peak for the precision the part runs in.

The parts group the pipeline's steps (blendstudy.pipeline.STEPS): host pre-processing, backbone+FPN,
the FCOS head (towers, predictors, BlendMask's attention), decode+NMS, the basis module, the blender
and host post-processing; an offline model's ``dense network`` is one part. FLOPs are counted by
torch.utils.flop_counter (convolutions and matmuls) on the eager equivalent of the pipeline, image by
image, so whatever changes the arithmetic (padding, lazy attention, raw masks) changes the count;
host parts have no GEMM FLOPs and show their time only. Peaks are measured in the process that
measures the parts: a dense matmul in fp32 and in the half dtype (torch), and an int8 GEMM (ONNX
Runtime's MatMulInteger, where ONNX Runtime is installed: the int8 path the CPU's offline backends
use). Each peak is the best of the GEMM implementations measured here (fp32: torch and, on a CPU,
ONNX Runtime's MatMul, whose kernels the offline backends use). A fraction over 1 is flagged, not
hidden: a FLOP count that is too high, a peak measured low (a busy machine), or a kernel doing fewer
multiplications than the direct convolution the count assumes (Winograd) -- the row says "over peak".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from blendstudy.device import cpu_flags
from blendstudy.measure.clock import timed_call

#: pipeline part -> the steps (Pipeline.run_steps' marks) it is made of, in pipeline order
PARTS: Dict[str, List[str]] = {
    "host pre": ["read", "resize", "to-device", "normalize+pad"],
    "backbone+FPN": ["backbone+FPN"],
    "FCOS head": ["FCOS head"],
    "dense network": ["dense network"],
    "decode+NMS": ["decode+NMS"],
    "basis module": ["basis module"],
    "blender": ["blender"],
    "host post": ["mask paste", "result extraction"],
}
#: precision names (as rows carry them) -> the torch dtype of the matmul that measures their peak
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Peaks:
    """Measured GEMM throughput (FLOP/s; int8: OP/s) by precision name, and the CPU's kernel level
    as torch reports it (e.g. AVX2, AVX512) plus the VNNI/AMX flags the CPU announces."""

    flops: Dict[str, float]
    capability: str
    cpu_flags: List[str]
    size: int

    def of(self, precision: str) -> Optional[float]:
        return self.flops.get(precision)

    def to_dict(self) -> Dict[str, object]:
        return {"flops": dict(self.flops), "capability": self.capability, "cpu_flags": list(self.cpu_flags),
                "size": self.size}


def _best_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    return min(timed_call(lambda _: fn(), None, device) for _ in range(repeats))


def torch_gemm_peak(device: torch.device, dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of an n x n x n matmul in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2.0 * n ** 3 / (_best_ms(lambda: torch.matmul(a, b), device, repeats) / 1000.0)


def int8_gemm_peak(n: int = 1024, repeats: int = 5, threads: Optional[int] = None) -> Optional[float]:
    """Best-of-``repeats`` OP/s of ONNX Runtime's MatMulInteger (uint8 x int8 -> int32, n x n x n) on
    the CPU with ``threads`` intra-op threads (None: torch's thread count); None without onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("b", TensorProto.INT8, [n, n], rng.integers(-128, 128, (n, n), dtype=np.int8).tobytes(),
                                raw=True)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    return 2.0 * n ** 3 / (_best_ms(lambda: sess.run(None, {"a": a}), torch.device("cpu"), repeats) / 1000.0)


def ort_fp32_gemm_peak(n: int = 1024, repeats: int = 5, threads: Optional[int] = None) -> Optional[float]:
    """Best-of-``repeats`` FLOP/s of ONNX Runtime's fp32 MatMul (n x n x n) on the CPU; None without it."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("b", TensorProto.FLOAT, [n, n], rng.standard_normal((n, n), dtype=np.float32).tobytes(),
                                raw=True)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "fp32_gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])], [weight])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((n, n), dtype=np.float32)
    return 2.0 * n ** 3 / (_best_ms(lambda: sess.run(None, {"a": a}), torch.device("cpu"), repeats) / 1000.0)


def openvino_gemm_peak(precision: str, n: int = 1024, repeats: int = 5) -> Optional[float]:
    """Best-of-``repeats`` FLOP/s of OpenVINO's CPU MatMul (n x n x n, a constant weight) compiled
    with the inference precision ``precision`` ("fp32" or "bf16": the precisions P6's OpenVINO
    backends run in); None without openvino, or where the CPU plugin will not run that precision."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    model = ov.Model([ops.matmul(a, ops.constant(rng.standard_normal((n, n), dtype=np.float32)), False, False)],
                     [a], "gemm")
    hint = {"fp32": "f32", "bf16": "bf16"}[precision]
    try:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                          "PERFORMANCE_HINT": "LATENCY"})
    except Exception:  # a CPU without native bf16 refuses the hint
        return None
    request, x = compiled.create_infer_request(), rng.standard_normal((n, n), dtype=np.float32)
    return 2.0 * n ** 3 / (_best_ms(lambda: request.infer({0: x}), torch.device("cpu"), repeats) / 1000.0)


def gemm_peak(device: torch.device, precision: str, n: int = 1024, repeats: int = 5) -> Optional[float]:
    """The measured GEMM peak of one precision, the best of the implementations the study's
    pipelines run on this device: "fp32" torch, and on a CPU ONNX Runtime and OpenVINO; "bf16" torch
    and on a CPU OpenVINO (whose AMX kernels can beat torch's matmul); "fp16" torch; "int8" ONNX
    Runtime (CPU only). None where it cannot be measured."""
    if precision == "int8":
        return int8_gemm_peak(n, repeats) if device.type == "cpu" else None
    best = torch_gemm_peak(device, _TORCH_DTYPES[precision], n, repeats)
    if device.type == "cpu" and precision in ("fp32", "bf16"):
        others = [openvino_gemm_peak(precision, n, repeats)]
        if precision == "fp32":
            others.append(ort_fp32_gemm_peak(n, repeats))
        best = max([best, *(o for o in others if o)])
    return best


#: the GEMM size of the peaks: 2048 (17 GFLOP a call). On CPUs with AMX a 1024 bf16 matmul stays well
#: below the tiles' full rate, so real convolutions would beat that "peak" (README, "What we found")
PEAK_GEMM_SIZE = 2048


def measure_peaks(device: torch.device, precisions: Sequence[str] = ("fp32",), n: int = PEAK_GEMM_SIZE,
                  repeats: int = 5) -> Peaks:
    """This process's GEMM peaks on ``device`` for ``precisions`` (those that cannot be measured
    here are left out)."""
    flops = {p: v for p in dict.fromkeys(precisions) if (v := gemm_peak(device, p, n, repeats))}
    return Peaks(flops, torch.backends.cpu.get_cpu_capability(), cpu_flags(), n)


def stage_flops(pipeline, image: np.ndarray) -> Dict[str, float]:
    """FLOPs of each step of one image through ``pipeline`` (Pipeline.run_steps), counted by
    torch.utils.flop_counter between the step marks. Run it on an eager pipeline: a compiled
    module under the counter would be traced again."""
    from torch.utils.flop_counter import FlopCounterMode

    out: Dict[str, float] = {}
    seen = [0.0]

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        def mark(stage: str) -> None:
            total = float(counter.get_total_flops())
            out[stage] = out.get(stage, 0.0) + total - seen[0]
            seen[0] = total

        pipeline.run_steps(image, mark)
    return out


def mean_stage_flops(pipeline, images: Sequence[np.ndarray]) -> Dict[str, float]:
    """stage_flops averaged over ``images`` (the count changes with the image's padded size and,
    under lazy attention or raw masks, with its detections)."""
    per = [stage_flops(pipeline, im) for im in images]
    return {k: float(np.mean([p.get(k, 0.0) for p in per])) for k in dict.fromkeys(k for p in per for k in p)}


def part_totals(per_stage: Mapping[str, float]) -> Dict[str, float]:
    """Stage values (ms or FLOPs) summed into PARTS; parts with no stage present are left out."""
    return {part: float(sum(per_stage[s] for s in stages if s in per_stage))
            for part, stages in PARTS.items() if any(s in per_stage for s in stages)}


@dataclass(frozen=True)
class RooflineRow:
    pipeline: str
    part: str
    precision: str
    gflop: float
    ms: float
    achieved_gflops: Optional[float]
    peak_gflops: Optional[float]
    fraction_of_peak: Optional[float]
    #: the part achieves more than its precision's measured peak (see the module docstring)
    over_peak: bool = False

    def to_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


def rows(pipeline: str, stage_ms: Mapping[str, float], flops: Mapping[str, float],
         precision: Mapping[str, str], peaks: Peaks) -> List[RooflineRow]:
    """One RooflineRow per part of ``pipeline``: ``stage_ms`` (median ms per stage, e.g.
    StageProfile.stage_ms), ``flops`` (per stage, mean_stage_flops) and ``precision`` (part ->
    "fp32"/"bf16"/"fp16"/"int8"; a part not named runs fp32). Parts without FLOPs (host work) get
    their time only. A part above its precision's measured peak is kept and flagged (``over_peak``)."""
    ms, fl = part_totals(stage_ms), part_totals(flops)
    out = []
    for part, t in ms.items():
        prec = precision.get(part, "fp32")
        f = fl.get(part, 0.0)
        peak = peaks.of(prec)
        achieved = f / (t / 1000.0) if f > 0 and t > 0 else None
        frac = achieved / peak if achieved is not None and peak else None
        out.append(RooflineRow(pipeline, part, prec if f > 0 else "-", f / 1e9, t,
                               None if achieved is None else achieved / 1e9,
                               None if peak is None or f <= 0 else peak / 1e9, frac, bool(frac and frac > 1.0)))
    return out


def recipe_precision(switches: Sequence[str], half: str) -> Dict[str, str]:
    """The precision each network part runs in under a recipe's (applied) switches: ``half`` is the
    device's half dtype name ("bf16" on a CPU). half_towers puts the head's tower convolutions
    (nearly all of its FLOPs) in half, so the head counts as half."""
    names = set(switches)
    out: Dict[str, str] = {}
    if "half" in names:
        return {p: half for p in ("backbone+FPN", "FCOS head", "basis module", "blender")}
    if "mixed_half" in names:
        out.update({"backbone+FPN": half, "basis module": half})
    if "half_towers" in names:
        out["FCOS head"] = half
    return out
