"""CLI commands bench / profile / eval (registered into blendstudy.cli); thin over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List

from blendstudy.cli import EXTRA_COMMANDS, UserError


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config path or shipped name")
    p.add_argument("--weights", default=None, help=".pth, 'tiny_synthetic', or omit for random weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--recipe", default="baseline", help="baseline, p0..p4, p4+fold_bn, best, ...")
    p.add_argument("--score-thresh", type=float, default=None)


def _images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", nargs="*", default=None, help="image files or folders")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="instead of --images: N generated synthetic pictures")
    p.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--data-root", default="artifacts/_data")
    p.add_argument("--num", type=int, default=None, help="use the first N images")


def _pipeline(args):
    from blendstudy.optimize import build_pipeline, recipe_switches
    from blendstudy.predictor import load_pipeline
    from blendstudy.runtime import current_runtime

    try:
        recipe_switches(args.recipe)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    loaded = load_pipeline(args.config, args.weights, args.device, args.score_thresh)
    pipe = build_pipeline(loaded.pipeline, args.recipe, runtime=current_runtime())
    return loaded, pipe


def _image_paths(args) -> List[Path]:
    from blendstudy.data.images import list_images

    if args.synthetic:
        from blendstudy.data.synthetic import ensure_synthetic_coco

        h, w = args.size
        _, image_dir = ensure_synthetic_coco(Path(args.data_root) / f"synthetic_cli_{args.synthetic}_{h}x{w}",
                                             args.synthetic, seed=2, image_size=(h, w), split_name="bench")
        paths = sorted(image_dir.glob("*.png"))
    elif args.images:
        paths = list_images(args.images)
    else:
        raise UserError("give --images or --synthetic N")
    return paths[: args.num] if args.num else paths


def cmd_bench(args: argparse.Namespace) -> int:
    from blendstudy.data.images import read_image
    from blendstudy.report import write_results
    from blendstudy.timing import measure_latency

    loaded, pipe = _pipeline(args)
    paths = _image_paths(args)
    images = {p.name: read_image(p) for p in paths}
    run = measure_latency(pipe, images, loaded.device, warmup=args.warmup, repeats=args.repeats,
                          desc=f"bench {args.recipe}")
    s = run.stats
    print(f"{args.recipe}: mean {s.mean:.2f} ms  P50 {s.p50:.2f}  P90 {s.p90:.2f}  P99 {s.p99:.2f}  "
          f"{s.throughput:.2f} img/s  (first call {run.first_call_ms:.1f} ms, {s.n} samples)")
    if args.output:
        write_results(args.output, f"bench_{args.recipe}", {**loaded.describe(), "recipe": args.recipe,
                                                            "images": len(paths)},
                      {}, device=loaded.device, extra={"latency": s, "run": run})
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from blendstudy.profile import profile_stages
    from blendstudy.report import to_markdown, write_results

    loaded, pipe = _pipeline(args)
    prof = profile_stages(pipe, _image_paths(args), warmup=args.warmup, repeats=args.repeats)
    print(to_markdown(prof.frame()))
    print(f"profiled total {prof.total_ms:.2f} ms, unprofiled end-to-end {prof.end_to_end_ms:.2f} ms, "
          f"profiler overhead {prof.overhead_ms:.2f} ms, input {prof.input_size}")
    if args.output:
        write_results(args.output, f"profile_{args.recipe}", {**loaded.describe(), "recipe": args.recipe},
                      {}, device=loaded.device, extra={"profile": prof.to_dict()})
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from blendstudy.accuracy import RunMismatchError, run_coco_evaluation
    from blendstudy.data.coco import CocoDataset

    loaded, pipe = _pipeline(args)
    ds = CocoDataset(args.annotations, args.image_dir)
    model_classes = int(loaded.config.MODEL.FCOS.NUM_CLASSES)
    if model_classes != len(ds.category_ids):
        raise UserError(f"{args.annotations}: {len(ds.category_ids)} categories, but the model predicts "
                        f"{model_classes} classes (MODEL.FCOS.NUM_CLASSES): they cannot be mapped one to one")
    ids = ds.subset(args.max_images)
    thresh = float(loaded.config.MODEL.FCOS.INFERENCE_TH_TEST)
    try:
        res = run_coco_evaluation(ids, ds.image_path, pipe, ds.coco, ds.contiguous_to_category_id, args.out_dir,
                                  score_thresh=thresh, max_dets=args.max_dets, device=loaded.device,
                                  run_info=loaded.prediction_identity(args.recipe))
    except RunMismatchError as exc:  # out_dir holds another run's predictions: say so, keep them
        raise UserError(str(exc)) from None
    for kind, m in res.metrics.items():
        print(f"{kind}: AP {m.AP:.1f}  AP50 {m.AP50:.1f}  AP75 {m.AP75:.1f}  "
              f"({m.num_detections} detections on {m.num_images} images, {m.detections_per_image:.1f}/img, "
              f"score >= {thresh}, <= {args.max_dets}/img)")
    if res.skipped:
        print(f"{len(res.skipped)} image(s) skipped (see {args.out_dir}/skipped.jsonl)", file=sys.stderr)
    Path(args.out_dir, "summary.json").write_text(json.dumps(
        {"metrics": {k: v.to_dict() for k, v in res.metrics.items()}, **loaded.describe(),
         "recipe": args.recipe}, indent=2, default=str))
    return 1 if res.skipped else 0


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="end-to-end latency of a recipe")
    _model_args(b)
    _images_args(b)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--repeats", type=int, default=1)
    b.add_argument("--output", default=None, help="results JSON")
    b.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="per-stage breakdown of a recipe")
    _model_args(p)
    _images_args(p)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default=None)
    p.set_defaults(func=cmd_profile)

    e = sub.add_parser("eval", help="COCO evaluation (bbox, segm), resumable")
    _model_args(e)
    e.add_argument("--annotations", required=True, help="COCO instances json")
    e.add_argument("--image-dir", required=True)
    e.add_argument("--out-dir", required=True, help="predictions, per-image timing, summary (resumes here)")
    e.add_argument("--max-images", type=int, default=None)
    e.add_argument("--max-dets", type=int, default=100)
    e.set_defaults(func=cmd_eval)


EXTRA_COMMANDS.append(register)
