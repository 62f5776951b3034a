"""Per-step breakdown of one image's inference (the seed's 11-step profile, 001's two sizes),
the profiler's own overhead, peak device memory, and FLOP efficiency against the matmul peak.

The steps are blendstudy.pipeline.STEPS. The names StageProfile, profile_stages and the record's
``stage_ms`` keep the seed's word "stage" for them: they are the results files' schema."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from blendstudy import device as devmod
from blendstudy.data.images import read_image
from blendstudy.measure.clock import Stopwatch, timed_call
from blendstudy.pipeline import STEPS, Pipeline

ImageLike = Union[str, Path, np.ndarray]


@dataclass
class StageProfile:
    """Median milliseconds per stage over the measured runs, with the overhead of syncing at every
    stage boundary: overhead_ms = median(profiled total) - median(unprofiled end-to-end)."""

    stage_ms: Dict[str, float]
    samples_ms: Dict[str, List[float]]
    total_ms: float
    end_to_end_ms: float
    overhead_ms: float
    peak_memory_mb: Optional[float]
    input_size: str
    runs: int
    extra: Dict[str, Any] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame({"stage": list(self.stage_ms), "ms": list(self.stage_ms.values())})
        df["share"] = (df["ms"] / max(self.total_ms, 1e-9) * 100).round(1).astype(str) + "%"
        return df

    def to_dict(self) -> Dict[str, Any]:
        return {"stage_ms": self.stage_ms, "total_ms": self.total_ms, "end_to_end_ms": self.end_to_end_ms,
                "overhead_ms": self.overhead_ms, "peak_memory_mb": self.peak_memory_mb,
                "input_size": self.input_size, "runs": self.runs, **self.extra}


def _read(x: ImageLike) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else read_image(x)


def profiled_call(pipeline: Pipeline, image: ImageLike, clock: Callable[[], float] = time.perf_counter
                  ) -> Dict[str, float]:
    """Run one image through the pipeline's step sequence (Pipeline.run_steps), synchronising
    the device at every step boundary (measure.clock.Stopwatch). Returns {step: ms} over STEPS
    (0.0 for a step this pipeline does not have), plus any step an offline runner adds."""
    watch = Stopwatch(pipeline.device, clock)
    t: Dict[str, float] = {}
    img = _read(image)
    t["read"] = watch.lap()

    def mark(stage: str) -> None:
        t[stage] = t.get(stage, 0.0) + watch.lap()

    pipeline.run_steps(img, mark)
    out = {k: t.get(k, 0.0) for k in STEPS}
    out.update({k: v for k, v in t.items() if k not in out})
    return out


def profile_stages(pipeline: Pipeline, images: Sequence[ImageLike], warmup: int = 2, repeats: int = 3,
                   progress: bool = True, desc: str = "profile") -> StageProfile:
    """Stage medians over `repeats` passes of `images` (warm-up passes excluded), the unprofiled
    end-to-end median on the same inputs (read included) and the difference as profiler overhead."""
    dev = pipeline.device
    images = list(images)
    for i in range(warmup):
        profiled_call(pipeline, images[i % len(images)])
    samples: Dict[str, List[float]] = {}
    totals, e2e = [], []
    devmod.reset_peak_memory(dev)
    bar = tqdm(total=repeats * len(images), desc=desc, disable=not progress)
    for _ in range(repeats):
        for im in images:
            st = profiled_call(pipeline, im)
            for k, v in st.items():
                samples.setdefault(k, []).append(v)
            totals.append(sum(st.values()))
            e2e.append(timed_call(lambda path: pipeline(_read(path)), im, dev))
            bar.update(1)
    bar.close()
    first = _read(images[0])
    stage_ms = {k: float(np.median(v)) for k, v in samples.items()}
    total = float(np.median(totals))
    end = float(np.median(e2e))
    return StageProfile(stage_ms, samples, total, end, total - end, devmod.peak_memory_mb(dev),
                        f"{first.shape[1]}x{first.shape[0]}", len(totals))


# ---- efficiency -------------------------------------------------------------------------------
def count_flops(pipeline: Pipeline, image: np.ndarray) -> float:
    """FLOPs of one image through the pipeline's step sequence (Pipeline.run_steps), counted by
    torch.utils.flop_counter: convolutions and matmuls, i.e. the network, the attention and the
    blender; resizing, NMS, ROIAlign and pasting are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipeline.run_steps(image)
    return float(counter.get_total_flops())


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                      repeats: int = 5) -> float:
    """Measured dense matmul throughput (FLOP/s) of the device: best of `repeats` n x n products."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best_ms = min(timed_call(lambda x: torch.matmul(x, b), a, device) for _ in range(repeats))
    return 2.0 * n ** 3 / (best_ms / 1000.0)


@dataclass
class Efficiency:
    flops_per_image: float
    latency_ms: float
    achieved_flops: float       # FLOP/s of the whole pipeline at that latency
    peak_flops: float           # measured matmul FLOP/s
    fraction_of_peak: float

    def to_dict(self) -> Dict[str, float]:
        return dict(self.__dict__)


def efficiency(flops_per_image: float, latency_ms: float, peak_flops: float) -> Efficiency:
    achieved = flops_per_image / (latency_ms / 1000.0)
    return Efficiency(flops_per_image, latency_ms, achieved, peak_flops, achieved / peak_flops)
