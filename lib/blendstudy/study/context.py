"""The study as a measuring process sees it: params, model, benchmark images, built pipelines.

A :class:`StudySpec` (params file, run folder, image cap) is all a worker process needs to rebuild
the same study; :func:`context` builds it once per process (the model loaded, the benchmark images
read, every recipe's pipeline built on first use and kept) so that several calls into one worker --
a stage and its extras, or a paired A/B across two workers -- reuse what is built and compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from blendstudy import device as devices
from blendstudy import optimize
from blendstudy.coco.evaluate import compare_ap
from blendstudy.data.coco import CocoDataset
from blendstudy.data.images import read_image
from blendstudy.measure.agreement import AccuracyReport, GateThresholds, compare_runs
from blendstudy.pipeline import Pipeline
from blendstudy.predictor import LoadedPipeline, load_pipeline
from blendstudy.runtime import RuntimeConfig, runtime_candidates
from blendstudy.structures import Detections
from blendstudy.study.params import (
    StudyParams,
    benchmark_images,
    open_dataset,
    resolve_config,
    resolve_weights,
    runtime_for,
    weights_label,
)

__all__ = ["Context", "StudySpec", "context", "gate_ground_truth"]


@dataclass(frozen=True)
class StudySpec:
    """What identifies one study run in any process: the params file (absolute), the run folder
    and the cap on benchmark / evaluation images (None: as the params say)."""

    params_file: str
    run_folder: str
    max_images: Optional[int] = None

    def load_params(self) -> StudyParams:
        return StudyParams.load(self.params_file)


@dataclass
class Context:
    """One process's view of the study (see the module docstring)."""

    spec: StudySpec
    params: StudyParams
    loaded: LoadedPipeline
    images: Dict[str, np.ndarray]
    pipes: Dict[Tuple[str, Optional[str]], Pipeline] = field(default_factory=dict)
    #: what this process has already measured -- ("latency", recipe, runtime), ("paired", a, b,
    #: runtime) -- so that a later step in the same worker (P4's extras after the stage) reads it
    #: instead of measuring the same pipeline again under the same conditions (detections are not
    #: kept: full-size masks of every recipe would not fit)
    measured: Dict[Tuple[Any, ...], Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def weights(self) -> str:
        return weights_label(self.loaded.weights)

    @property
    def run_folder(self) -> Path:
        return Path(self.spec.run_folder)

    def model_info(self) -> Dict[str, Any]:
        return {"weights": self.weights, "random_weights": self.loaded.random_weights, "model": self.loaded.describe()}

    def pipeline(self, recipe: str, runtime: Optional[RuntimeConfig] = None) -> Pipeline:
        """The recipe's pipeline, built once per process. ``runtime``: the P2 setting's in-process
        part (threads, cuda flags) for the "runtime" switch; its core binding is the process's own."""
        key = (recipe, runtime.name if runtime is not None else None)
        if key not in self.pipes:
            rt = replace(runtime, cpu_cores=None) if runtime is not None else None
            self.pipes[key] = optimize.build_pipeline(self.loaded.pipeline, recipe, runtime=rt)
        return self.pipes[key]

    def gate_images(self) -> List[str]:
        n = (self.params.get("accuracy") or {}).get("images")
        names = list(self.images)
        return names[: int(n)] if n else names

    def outputs(self, recipe: str, runtime: Optional[RuntimeConfig] = None) -> Dict[str, Detections]:
        """The recipe's detections on the gate's images (image name -> Detections)."""
        pipe = self.pipeline(recipe, runtime)
        return {name: pipe(self.images[name]) for name in self.gate_images()}

    def once(self, key: Tuple[Any, ...], measure: Any) -> Any:
        """``measure()`` the first time ``key`` is asked for in this process, its result after."""
        if key not in self.measured:
            self.measured[key] = measure()
        return self.measured[key]

    def thresholds(self) -> GateThresholds:
        a = self.params.get("accuracy") or {}
        return GateThresholds(min_mean_box_iou=float(a.get("min_mean_box_iou", 0.99)),
                              max_lost=int(a.get("max_lost", 0)), max_ap_change=a.get("max_ap_change", 0.3))

    def gates(self, outputs: Dict[str, Dict[str, Detections]], pairs: Sequence[Tuple[str, str]]
              ) -> Tuple[Dict[str, AccuracyReport], Dict[str, bool], str]:
        """The accuracy gate of every (reference, test) pair of ``outputs`` with the params'
        settings, AP included where gate_ground_truth allows; the verdict is decided here, once.
        Returns ({"test vs ref": report}, {"test vs ref": passed}, a note on the AP check)."""
        a = self.params.get("accuracy") or {}
        truth, note = gate_ground_truth(self.params, self.loaded)
        max_dets = int((self.params.get("evaluation") or {}).get("max_dets") or 100)
        reports: Dict[str, AccuracyReport] = {}
        for ref, test in pairs:
            ap = compare_ap(outputs[ref], outputs[test], truth, max_dets=max_dets) if truth is not None else None
            rep = compare_runs(outputs[ref], outputs[test], a.get("iou_thresh", 0.5), a.get("gate_score", 0.3), ap=ap)
            rep.decide(self.thresholds())
            reports[f"{test} vs {ref}"] = rep
        return reports, {k: bool(r.gate) for k, r in reports.items()}, note


_CONTEXTS: Dict[StudySpec, Context] = {}


def context(spec: StudySpec) -> Context:
    """This process's Context for ``spec`` (built on first use: model loaded, images read)."""
    if spec not in _CONTEXTS:
        params = spec.load_params()
        loaded = load_pipeline(resolve_config(params), resolve_weights(params), params.get("device", "auto"),
                               params.model.get("score_thresh"), warn_random=False)
        images = {p.name: read_image(p) for p in benchmark_images(params, spec.max_images)}
        _CONTEXTS[spec] = Context(spec, params, loaded, images)
    return _CONTEXTS[spec]


def gate_ground_truth(params: StudyParams, loaded: LoadedPipeline) -> Tuple[Optional[CocoDataset], str]:
    """The benchmark images' annotations for the accuracy gate's AP check, or None with the reason:
    AP needs a trained model (not random weights), annotated images (synthetic or coco, not a
    folder) and the model's classes being the dataset's categories."""
    if loaded.random_weights:
        return None, "random weights: no AP check (the instance gate still runs)"
    if params.data.benchmark.get("source", "synthetic") == "folder":
        return None, "data.benchmark is an image folder without annotations: no AP check"
    dataset = open_dataset(params, "benchmark")
    classes = loaded.pipeline.model.proposal_generator.fcos_head.num_classes
    if classes != len(dataset.category_ids):
        return None, (f"the model has {classes} classes, {dataset.ann_file.name} {len(dataset.category_ids)} "
                      "categories: no AP check")
    limit = (params.get("accuracy") or {}).get("max_ap_change", 0.3)
    return dataset, f"AP on {dataset.ann_file.name} (max change {limit} points)"


def study_device(spec: StudySpec) -> torch.device:
    """The device the params name, resolved in this process -- without loading the model or
    reading the images (what a question about the device alone needs)."""
    return devices.resolve_device(spec.load_params().get("device", "auto"))


def runtime_candidates_here(spec: StudySpec, limit: Optional[int] = None) -> List[RuntimeConfig]:
    """P2's runtime settings for the device THIS process resolves for the study (a worker: the
    notebook's kernel never imports torch_npu, so it cannot even name an npu device), bound to the
    params' core range for that device (runtime.cpu_affinity), else to its NUMA-local cores."""
    params = spec.load_params()
    dev = study_device(spec)
    _, cores = runtime_for(params, str(dev))
    return runtime_candidates(dev, cores=cores or devices.local_cores(dev), limit=limit)
