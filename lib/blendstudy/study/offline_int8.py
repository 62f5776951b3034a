"""P6's int8 variants through OpenVINO's NNCF (run INSIDE a worker): plain post-training quantization
and quantization with accuracy control, each calibrated on the params' ``data.calibration`` split
(training images, never the benchmark or evaluation images) and then fixed to each padded size.

Accuracy control validates on the same calibration split with the study's own measure: COCO AP
(mean of bbox and segm, points) where the model is trained and the split's categories are its
classes; otherwise the agreement with the fp32 network (percent of its instances above the gate's
score found again at box IoU >= the gate's threshold), the gate's measure when AP cannot be had.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from blendstudy import optimize
from blendstudy.backends.common import read_meta
from blendstudy.backends.engines import OpenVINOBackend
from blendstudy.backends.nncf_int8 import calibration_batches, quantize_openvino, specialize
from blendstudy.coco.evaluate import evaluate_run
from blendstudy.data.images import read_image
from blendstudy.measure.agreement import compare_runs
from blendstudy.measure.worker import process_info
from blendstudy.pipeline import Pipeline
from blendstudy.structures import Detections
from blendstudy.study.context import Context, StudySpec, context
from blendstudy.study.params import open_dataset

__all__ = ["INT8_METHODS", "NNCF_METHODS", "int8_methods", "nncf_variant", "runs_on"]

#: int8 methods of the params' offline.int8 that NNCF makes, and the export kind suffix of each
NNCF_METHODS = {"nncf": "nncf", "nncf-accuracy": "nncf-ac"}

Run = Dict[str, Detections]


def _host(ctx: Context, host_recipe: str) -> Pipeline:
    return optimize.build_pipeline(ctx.loaded.pipeline, optimize.host_recipe(host_recipe))


def _calibration(ctx: Context, images: int) -> Tuple[Any, Dict[str, np.ndarray]]:
    """(the calibration CocoDataset, {file name: image}) for its first ``images`` images."""
    calib = open_dataset(ctx.params, "calibration")
    return calib, {str(calib.image_info(i)["file_name"]): read_image(calib.image_path(i))
                   for i in calib.image_ids[:images]}


def _ap_usable(ctx: Context, dataset: Any) -> bool:
    classes = ctx.loaded.pipeline.model.proposal_generator.fcos_head.num_classes
    return not ctx.loaded.random_weights and classes == len(dataset.category_ids)


def calibration_metric(ctx: Context, dataset: Any, reference: Run) -> Tuple[str, Callable[[Run], float]]:
    """(the metric's name, run -> value; higher is better) for accuracy control on ``dataset``;
    ``reference``: the fp32 pipeline's detections on the same images (for the agreement measure)."""
    a = ctx.params.accuracy
    if _ap_usable(ctx, dataset):
        max_dets = int(ctx.params.evaluation.max_dets)

        def ap(run: Run) -> float:
            return float(np.mean(list(evaluate_run(run, dataset, max_dets).ap.values())))

        return "COCO AP, mean of bbox and segm (points)", ap
    iou, score = float(a.iou_thresh), float(a.gate_score)

    def agreement(run: Run) -> float:
        rep = compare_runs({k: reference[k] for k in run}, run, iou, score)
        found = rep.ref_instances - rep.unmatched_ref
        return 100.0 * found / max(rep.ref_instances, 1)

    return "agreement with fp32: % of its instances found again", agreement


def _validator(ctx: Context, host: Pipeline, images: Dict[str, np.ndarray], src: str,
               metric: Callable[[Run], float]) -> Callable[[Any, List[str]], float]:
    """NNCF's validation function: the host pipeline with the compiled model under validation as
    its dense part, over the named calibration images, scored by ``metric``."""
    meta = read_meta(src)

    def validate(compiled: Any, names: List[str]) -> float:
        host.dense = OpenVINOBackend(src, meta, "cpu", compiled=compiled)
        try:
            return metric({n: host(images[n]) for n in names})
        finally:
            host.dense = None

    return validate


def nncf_variant(spec: StudySpec, dynamic: Dict[str, Any], sizes: List[str], host_recipe: str, images: int,
                 method: str) -> Dict[str, Any]:
    """int8 by NNCF (``method``: "nncf" or "nncf-accuracy") of the dynamic export ``dynamic``,
    then one fixed-size copy per padded size in ``sizes`` ("HxW"). Returns the variant as
    export_variant does ({"kind": "static-<suffix>", "dirs", "export_s", "int8", "quantization"})."""
    ctx = context(spec)
    host = _host(ctx, host_recipe)
    dataset, calib = _calibration(ctx, images)
    batches = calibration_batches(host.prepare, calib.values())
    src = dynamic["dirs"]["dynamic"]
    suffix = NNCF_METHODS[method]
    t0 = time.perf_counter()
    kwargs: Dict[str, Any] = {}
    if method == "nncf-accuracy":
        if ctx.params.accuracy.max_ap_change is None:
            raise ValueError("offline.int8 nncf-accuracy needs accuracy.max_ap_change (the drop it may give up)")
        reference = {n: host(im) for n, im in calib.items()}
        name, metric = calibration_metric(ctx, dataset, reference)
        kwargs = {"validate": _validator(ctx, host, calib, src, metric), "validation_items": list(calib),
                  "max_drop": float(ctx.params.accuracy.max_ap_change), "metric": name}
    ir = quantize_openvino(src, batches, Path(src).with_name(f"{suffix}_dynamic"), **kwargs)
    dirs = {s: str(specialize(ir, tuple(int(v) for v in s.split("x")), Path(src).with_name(f"{suffix}_{s}")))
            for s in sizes}
    q = read_meta(ir)["quantization"]
    return {"kind": f"static-{suffix}", "dirs": dirs, "export_s": time.perf_counter() - t0, "int8": True,
            "quantization": {**q, "calibration": f"{dataset.ann_file.name}: {len(calib)} images"},
            "process": process_info()}


# ---- the notebook kernel's side: which int8 variants to make, and which engine runs which -----------
INT8_METHODS = ("onnxruntime", "nncf", "nncf-accuracy")


def int8_methods(value: Any) -> List[str]:
    """The params' ``offline.int8``: false/null (none), true (all of INT8_METHODS), or a list of them."""
    if value is True:
        return list(INT8_METHODS)
    if not value:
        return []
    methods = [value] if isinstance(value, str) else list(value)
    unknown = [m for m in methods if m not in INT8_METHODS]
    if unknown:
        raise ValueError(f"offline.int8: unknown method(s) {unknown}; known: {', '.join(INT8_METHODS)} (or true/false)")
    return methods


def runs_on(engine: str, exported: Dict[str, Any]) -> bool:
    """Whether ``engine`` serves the export variant: NNCF's IRs are OpenVINO's, so is the bf16
    variant (OpenVINO's inference precision), the QDQ int8 graph is ONNX Runtime's format, ATC
    compiles fixed shapes."""
    kind = str(exported["kind"])
    if "nncf" in kind or kind.endswith("-bf16"):
        return engine == "openvino"
    if kind.endswith("int8"):
        return engine == "onnxruntime"
    return kind == "static" if engine == "om" else True
