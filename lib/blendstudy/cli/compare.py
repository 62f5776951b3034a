"""`python -m blendstudy compare`: the study's paired A/B for a user's own change.

``--a`` and ``--b`` are SPECs: a recipe name ("p4", "best_cpu", "p4+half", ...) or
``BACKEND:MODEL_DIR@RECIPE`` -- the dense part exported into MODEL_DIR (python -m blendstudy
export) run by BACKEND (onnxruntime, openvino, om) with the host switches of RECIPE, its export
checked against --config and --weights (a stale one is refused). Both are built and measured in
ONE worker process (blendstudy.measure.worker: non-interactive, the caller's environment) as the
study measures: every padded input shape of the images run once first (compiles outside the
samples), then blendstudy.measure.latency.paired_compare (the speedup of B over A, image by image,
its median with a bootstrap confidence interval), then the accuracy gate of B against A
(blendstudy.study.context.Context.gates: box IoU, lost instances, and with --annotations the COCO
AP change with its paired bootstrap interval over the images). The gate is "pass", "fail" or
"inconclusive"; it is reported, it does not change the exit status.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from blendstudy.cli.common import UserError, random_init_arg
from blendstudy.jsonable import to_jsonable
from blendstudy.tables import text

__all__ = ["CompareRequest", "Spec", "measure", "parse_spec", "register"]


@dataclass(frozen=True)
class Spec:
    """One side of the A/B: ``text`` as given, the recipe, and for an offline model its backend
    and model directory."""

    text: str
    recipe: str
    backend: Optional[str] = None
    model_dir: Optional[str] = None


def parse_spec(text: str) -> Spec:
    """A SPEC checked as far as it can be without a model: the recipe is known, the backend is one
    of blendstudy.backends.BACKENDS and the model directory holds an export (UserError /
    BackendError, one line each). Whether the export is stale is checked where it is loaded."""
    from blendstudy.backends import BACKENDS
    from blendstudy.backends.common import read_meta
    from blendstudy.optimize import recipe_switches

    backend = model_dir = None
    recipe = text
    if ":" in text or "@" in text:
        found = re.fullmatch(r"([A-Za-z_]+):(.+)@([^@]+)", text)
        if found is None:
            raise UserError(f"SPEC {text!r}: expected a recipe name or BACKEND:MODEL_DIR@RECIPE")
        backend, model_dir, recipe = found.groups()
        if backend not in BACKENDS:
            raise UserError(f"SPEC {text!r}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    try:
        recipe_switches(recipe)
    except ValueError as exc:
        raise UserError(f"SPEC {text!r}: {exc}") from None
    if model_dir is not None:
        read_meta(model_dir)
        model_dir = str(Path(model_dir).resolve())
    return Spec(text, recipe, backend, model_dir)


@dataclass(frozen=True)
class CompareRequest:
    """What the worker needs (paths absolute)."""

    config: str
    weights: Optional[str]
    device: str
    score_thresh: Optional[float]
    images: str
    annotations: Optional[str]
    a: Spec
    b: Spec
    rounds: int = 2
    warmup: int = 3
    n_boot: int = 2000
    confidence: float = 0.95
    max_ap_change: float = 0.3
    random_init: str = "adelaidet"


def _params(req: CompareRequest):
    """The study's params for these images: the benchmark (and gate) images are --images, with
    --annotations their COCO ground truth (else an image folder: no AP check)."""
    from blendstudy.study.params import StudyParams

    bench = ({"source": "coco", "annotations": req.annotations, "images": req.images} if req.annotations
             else {"source": "folder", "images": req.images})
    return StudyParams.from_mapping({"model": {"config": req.config, "weights": req.weights,
                                               "random_init": req.random_init},
                                     "data": {"benchmark": bench},
                                     "accuracy": {"max_ap_change": req.max_ap_change, "confidence": req.confidence}},
                                    path="compare")


def _pipeline(ctx: Any, spec: Spec):
    """The spec's pipeline: the recipe's, or its host switches with the offline model's dense part."""
    from blendstudy import optimize
    from blendstudy.backends import load_backend

    if spec.backend is None:
        return ctx.pipeline(spec.recipe)
    pipe = optimize.build_pipeline(ctx.loaded.pipeline, optimize.host_recipe(spec.recipe))
    pipe.dense = load_backend(spec.backend, spec.model_dir, config=ctx.params.model.config,
                              checkpoint=ctx.loaded.weights or "random")
    pipe.recipe_info["dense"] = pipe.dense.describe()
    return pipe


def _names(req: CompareRequest) -> Tuple[str, str]:
    return (req.a.text, req.b.text) if req.a.text != req.b.text else (f"{req.a.text} (A)", f"{req.b.text} (B)")


def measure(req: CompareRequest) -> Dict[str, Any]:
    """In the worker: build both sides, warm every padded shape, the paired A/B, the gate of B
    against A. Returns {"comparison", "accuracy", "note", "process", "pipelines"}."""
    from blendstudy.data.images import list_images, read_image
    from blendstudy.loading import load_pipeline
    from blendstudy.measure.latency import paired_compare
    from blendstudy.measure.worker import process_info
    from blendstudy.study.context import Context, StudySpec
    from blendstudy.study.steps import warm_shapes

    params = _params(req)
    loaded = load_pipeline(req.config, req.weights, req.device, req.score_thresh, warn_random=False,
                           random_init=req.random_init)
    images = {p.name: read_image(p) for p in list_images([req.images])}
    ctx = Context(StudySpec(str(params.path), str(Path(req.images))), params, loaded, images)
    name_a, name_b = _names(req)
    pipes = {name_a: _pipeline(ctx, req.a), name_b: _pipeline(ctx, req.b)}
    for name, pipe in pipes.items():
        warm_shapes(ctx, name, pipe)
        for shape_image in {tuple(pipe.prepare(im)[0].shape[-2:]): im for im in images.values()}.values():
            pipe(shape_image)  # an offline model's first call per shape, outside the samples
    comparison = paired_compare(pipes[name_a], pipes[name_b], images, ctx.device, rounds=req.rounds,
                                warmup=req.warmup, n_boot=req.n_boot, confidence=req.confidence, progress=False,
                                name_a=name_a, name_b=name_b)
    reports, _, note = ctx.gates({n: ctx.detect(p) for n, p in pipes.items()}, [(name_a, name_b)])
    return {"comparison": comparison, "accuracy": reports[f"{name_b} vs {name_a}"], "note": note,
            "process": process_info(), "pipelines": {n: to_jsonable(p.recipe_info) for n, p in pipes.items()}}


def _gate_line(rep: Any, note: str) -> str:
    ap = rep.ap
    if ap is None:
        return f"gate: {rep.verdict} (mean box IoU {text(rep.mean_box_iou)}, lost {rep.lost_above}; {note})"
    ci = ap.change_ci or {}
    parts = [f"{t} dAP {v:+.2f} [{ci[t][0]:+.2f}, {ci[t][1]:+.2f}]" if t in ci else f"{t} dAP {v:+.2f}"
             for t, v in ap.change.items()]
    return (f"gate: {rep.verdict} ({', '.join(parts)} points, {ap.confidence:.0%} interval, bound "
            f"{rep.gate_thresholds.max_ap_change}; mean box IoU {text(rep.mean_box_iou)} (at least "
            f"{rep.gate_thresholds.min_mean_box_iou}), lost {rep.lost_above})")


def cmd_compare(args: argparse.Namespace) -> int:
    from blendstudy.data.images import list_images
    from blendstudy.measure.worker import Worker, WorkerSpec

    if not list_images([args.images]):
        raise UserError(f"{args.images}: no images")
    if args.annotations and not Path(args.annotations).is_file():
        raise UserError(f"{args.annotations}: no such annotations file (--annotations)")
    weights = args.weights
    if weights and Path(weights).exists():
        weights = str(Path(weights).resolve())
    req = CompareRequest(args.config, weights, args.device, args.score_thresh, str(Path(args.images).resolve()),
                         str(Path(args.annotations).resolve()) if args.annotations else None,
                         parse_spec(args.a), parse_spec(args.b), rounds=args.rounds, warmup=args.warmup,
                         max_ap_change=args.max_ap_change, random_init=args.random_init)
    with Worker(WorkerSpec(label="compare")) as worker:
        res = worker.call(measure, req)
    cmp, rep = res["comparison"], res["accuracy"]
    print(cmp.summary())
    print(_gate_line(rep, res["note"]))
    out = {"a": args.a, "b": args.b, "speedup": cmp.median_speedup, "ci_low": cmp.ci_low, "ci_high": cmp.ci_high,
           "confidence": cmp.confidence, "gate": rep.verdict, "ap_change": rep.ap.change if rep.ap else None,
           "ap_change_ci": rep.ap_change_ci, "ap_note": res["note"], "comparison": cmp.to_dict(),
           "accuracy": rep.to_dict(), "pipelines": res["pipelines"], "process": res["process"]}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(to_jsonable(out), indent=1))
        print(f"wrote {args.output}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="paired A/B of two recipes or offline models, with the accuracy gate")
    c.add_argument("--config", required=True, help="config path or shipped name")
    c.add_argument("--weights", default=None, help=".pth, 'tiny_synthetic', or omit for random weights")
    random_init_arg(c)
    c.add_argument("--device", default="auto")
    c.add_argument("--score-thresh", type=float, default=None)
    c.add_argument("--images", required=True, metavar="DIR", help="the images both sides run on")
    c.add_argument("--annotations", default=None, metavar="JSON", help="their COCO ground truth: adds the AP check")
    c.add_argument("--a", required=True, metavar="SPEC", help="reference: RECIPE or BACKEND:MODEL_DIR@RECIPE")
    c.add_argument("--b", required=True, metavar="SPEC", help="the change: RECIPE or BACKEND:MODEL_DIR@RECIPE")
    c.add_argument("--rounds", type=int, default=2, help="paired rounds per image (who goes first alternates)")
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--max-ap-change", type=float, default=0.3, help="the gate's AP bound, points")
    c.add_argument("--output", default=None, metavar="JSON", help="results JSON")
    c.set_defaults(func=cmd_compare)
