"""The study as a measuring process sees it: params, model, benchmark images, built pipelines.

A :class:`StudySpec` (params file, run folder, image cap) is all a worker process needs to rebuild
the same study; :func:`context` builds it once per process (the model loaded, the benchmark images
read, every recipe's pipeline built on first use and kept) so that several calls into one worker --
a stage and its extras, or a paired A/B across two workers -- reuse what is built and compiled.

The accuracy gate runs on images of its own (:func:`gate_section`: the params' ``accuracy.data``
split, at most ``accuracy.images`` of them), usually more than the latency is measured on: only
the recipes under test run there, once each. Their detections are kept per recipe in a compact
form (blendstudy.measure.agreement.RecordedRun: masks as COCO RLE) and their COCO evaluation with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from blendstudy import device as devices
from blendstudy import optimize
from blendstudy.coco.evaluate import RunAp, compare_evaluated, evaluate_run
from blendstudy.data.coco import CocoDataset
from blendstudy.data.images import read_image
from blendstudy.loading import LoadedPipeline, load_pipeline
from blendstudy.measure.agreement import AccuracyReport, GateThresholds, RecordedRun, compare_runs
from blendstudy.pipeline import Pipeline
from blendstudy.runtime import RuntimeConfig, runtime_candidates
from blendstudy.structures import Detections
from blendstudy.study.params import (
    ParamsError,
    StudyParams,
    benchmark_images,
    open_dataset,
    resolve_config,
    resolve_weights,
    runtime_for,
    weights_label,
)

__all__ = ["Context", "StudySpec", "context", "gate_ground_truth", "gate_section"]


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
    #: runtime), ("outputs", recipe, runtime) -- so that a later step in the same worker (P4's extras
    #: after the stage) reads it instead of measuring the same pipeline again under the same
    #: conditions (detections are kept as RecordedRun: masks as RLE)
    measured: Dict[Tuple[Any, ...], Any] = field(default_factory=dict)
    #: the accuracy gate's images (name -> image), read on first use (gate_inputs)
    gate_set: Optional[Dict[str, np.ndarray]] = None

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

    def gate_inputs(self) -> Dict[str, np.ndarray]:
        """The accuracy gate's images (name -> image): those of the params' ``accuracy.data``
        section (gate_section; the benchmark images already read by default), the first
        ``accuracy.images`` of them (null: all) and at most the spec's ``max_images``."""
        if self.gate_set is None:
            section, limit = gate_section(self.params, self.spec.max_images)
            if section == "benchmark":
                names = list(self.images)[:limit]
                self.gate_set = {n: self.images[n] for n in names}
            else:
                ds = open_dataset(self.params, section)
                paths = [ds.image_path(i) for i in ds.image_ids[:limit]]
                self.gate_set = {p.name: read_image(p) for p in paths}
        return self.gate_set

    def gate_images(self) -> List[str]:
        """The names of the gate's images (gate_inputs)."""
        return list(self.gate_inputs())

    def detect(self, pipe: Pipeline) -> RecordedRun:
        """``pipe``'s detections on the gate's images, each image once."""
        return RecordedRun({name: pipe(image).to_record() for name, image in self.gate_inputs().items()})

    def outputs(self, recipe: str, runtime: Optional[RuntimeConfig] = None) -> RecordedRun:
        """The recipe's detections on the gate's images, computed once per process."""
        return self.once(("outputs", recipe, runtime.name if runtime is not None else None),
                         lambda: self.detect(self.pipeline(recipe, runtime)))

    def once(self, key: Tuple[Any, ...], measure: Any) -> Any:
        """``measure()`` the first time ``key`` is asked for in this process, its result after."""
        if key not in self.measured:
            self.measured[key] = measure()
        return self.measured[key]

    def thresholds(self) -> GateThresholds:
        a = self.params.accuracy
        return GateThresholds(min_mean_box_iou=a.min_mean_box_iou, max_lost=a.max_lost, max_ap_change=a.max_ap_change)

    def gates(self, outputs: Mapping[str, Mapping[str, Detections]], pairs: Sequence[Tuple[str, str]]
              ) -> Tuple[Dict[str, AccuracyReport], Dict[str, bool], str]:
        """The accuracy gate of every (reference, test) pair of ``outputs`` with the params'
        settings, AP included where gate_ground_truth allows (each run evaluated once, the AP change
        with its paired bootstrap interval over the images: ``accuracy.n_boot`` resamples at
        ``accuracy.confidence``); the verdict is decided here, once. Returns ({"test vs ref": report},
        {"test vs ref": passed}, a note on the AP check): "passed" is the verdict "pass" -- a pair
        whose AP change is inconclusive has not passed (so it is never counted as a recipe that
        passes the gate) and its report says "inconclusive" (AccuracyReport.verdict)."""
        a = self.params.accuracy
        truth, note = gate_ground_truth(self.params, self.loaded)
        max_dets = self.params.evaluation.max_dets
        reports: Dict[str, AccuracyReport] = {}
        for ref, test in pairs:
            ap = None
            if truth is not None:
                names = [k for k in outputs[ref] if k in outputs[test]]
                ap = compare_evaluated(_evaluated(outputs[ref], truth, max_dets, names),
                                       _evaluated(outputs[test], truth, max_dets, names), max_dets,
                                       n_boot=a.n_boot, confidence=a.confidence)
            rep = compare_runs(outputs[ref], outputs[test], a.iou_thresh, a.gate_score, ap=ap)
            rep.decide(self.thresholds())
            reports[f"{test} vs {ref}"] = rep
        return reports, {k: bool(r.gate) for k, r in reports.items()}, note


def _evaluated(run: Mapping[str, Detections], truth: CocoDataset, max_dets: int, names: List[str]) -> RunAp:
    """evaluate_run of ``run`` on ``names``, kept with a RecordedRun (evaluated once per process)."""
    if not isinstance(run, RecordedRun):
        return evaluate_run(run, truth, max_dets, names)
    key = (str(truth.ann_file), max_dets, tuple(names))
    if key not in run.evaluated:
        run.evaluated[key] = evaluate_run(run, truth, max_dets, names)
    return run.evaluated[key]


_CONTEXTS: Dict[StudySpec, Context] = {}


def context(spec: StudySpec) -> Context:
    """This process's Context for ``spec`` (built on first use: model loaded, images read)."""
    if spec not in _CONTEXTS:
        params = spec.load_params()
        loaded = load_pipeline(resolve_config(params), resolve_weights(params), params.device,
                               params.model.score_thresh, warn_random=False, random_init=params.model.random_init)
        images = {p.name: read_image(p) for p in benchmark_images(params, spec.max_images)}
        _CONTEXTS[spec] = Context(spec, params, loaded, images)
    return _CONTEXTS[spec]


def gate_section(params: StudyParams, max_images: Optional[int] = None) -> Tuple[str, Optional[int]]:
    """(the data section the accuracy gate runs on, how many of its images): ``accuracy.data``
    (default "benchmark") and ``accuracy.images`` (null: all), capped by ``max_images``. A section
    the params' ``data`` lacks raises ParamsError naming accuracy.data."""
    section = params.accuracy.data
    if section not in params.data:
        raise ParamsError(f"{params.path}: parameter accuracy.data: no data.{section} section")
    counts = [int(n) for n in (params.accuracy.images, max_images) if n]
    return section, min(counts) if counts else None


def gate_ground_truth(params: StudyParams, loaded: LoadedPipeline) -> Tuple[Optional[CocoDataset], str]:
    """The gate images' annotations (gate_section) for the accuracy gate's AP check, or None with the
    reason: AP needs a trained model (not random weights), annotated images (synthetic or coco, not
    a folder) and the model's classes being the dataset's categories."""
    if loaded.random_weights:
        return None, "random weights: no AP check (the instance gate still runs)"
    section, _ = gate_section(params)
    if params.data[section].source == "folder":
        return None, f"data.{section} is an image folder without annotations: no AP check"
    dataset = open_dataset(params, section)
    classes = loaded.pipeline.model.proposal_generator.fcos_head.num_classes
    if classes != len(dataset.category_ids):
        return None, (f"the model has {classes} classes, {dataset.ann_file.name} {len(dataset.category_ids)} "
                      "categories: no AP check")
    limit, confidence = params.accuracy.max_ap_change, params.accuracy.confidence
    return dataset, (f"AP on {dataset.ann_file.name} (max change {limit} points; the change's "
                     f"{confidence:.0%} paired bootstrap interval over the images decides: pass within, fail "
                     "beyond, inconclusive across the bound)")


def study_device(spec: StudySpec) -> torch.device:
    """The device the params name, resolved in this process -- without loading the model or
    reading the images (what a question about the device alone needs)."""
    return devices.resolve_device(spec.load_params().device)


def runtime_candidates_here(spec: StudySpec, limit: Optional[int] = None) -> List[RuntimeConfig]:
    """P2's runtime settings for the device THIS process resolves for the study (a worker: the
    notebook's kernel never imports torch_npu, so it cannot even name an npu device), bound to the
    params' core range for that device (runtime.cpu_affinity), else to its NUMA-local cores."""
    params = spec.load_params()
    dev = study_device(spec)
    _, cores = runtime_for(params, str(dev))
    return runtime_candidates(dev, cores=cores or devices.local_cores(dev), limit=limit)
