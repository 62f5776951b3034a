"""`python -m blendstudy bench` / `profile`: one recipe's latency or stage profile, in this process
(a command-line process is non-interactive: the runtime set before it started is in force)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from blendstudy.cli.common import UserError, backend_args, model_args, recipe_pipeline
from blendstudy.data.images import list_images, read_image
from blendstudy.data.synthetic import synthetic_split
from blendstudy.measure.latency import measure_latency
from blendstudy.measure.profile import profile_stages
from blendstudy.measure.worker import process_info
from blendstudy.report import to_markdown
from blendstudy.results import BenchResult, LatencyResult, save_results


def images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", nargs="*", default=None, help="image files or folders")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="instead of --images: N generated synthetic images")
    p.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--data-root", default="artifacts/_data")
    p.add_argument("--num", type=int, default=None, help="use the first N images")


def image_paths(args: argparse.Namespace) -> List[Path]:
    if args.synthetic:
        _, image_dir = synthetic_split(args.data_root, "cli", args.synthetic, seed=2, image_size=tuple(args.size))
        paths = sorted(image_dir.glob("*.png"))
    elif args.images:
        paths = list_images(args.images)
    else:
        raise UserError("give --images or --synthetic N")
    return paths[: args.num] if args.num else paths


def _output(args: argparse.Namespace, loaded, record: BenchResult, images: int) -> None:
    params = {**loaded.describe(), "recipe": args.recipe, "images": images}
    save_results(args.output, f"{args.command}_{args.recipe}", record, params,
                 effective_runtime={args.command: process_info()})


def cmd_bench(args: argparse.Namespace) -> int:
    loaded, pipe = recipe_pipeline(args)
    paths = image_paths(args)
    images = {p.name: read_image(p) for p in paths}
    run = measure_latency(pipe, images, loaded.device, warmup=args.warmup, repeats=args.repeats,
                          desc=f"bench {args.recipe}")
    s = run.stats
    print(f"{args.recipe}: mean {s.mean:.2f} ms  P50 {s.p50:.2f}  P90 {s.p90:.2f}  P99 {s.p99:.2f}  "
          f"{s.throughput:.2f} img/s  (first call {run.first_call_ms:.1f} ms, {s.n} samples)")
    if args.output:
        result = LatencyResult.of(args.recipe, run, process_info())
        _output(args, loaded, BenchResult(args.recipe, latency=s, run=result), len(paths))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    loaded, pipe = recipe_pipeline(args)
    paths = image_paths(args)
    prof = profile_stages(pipe, paths, warmup=args.warmup, repeats=args.repeats)
    print(to_markdown(prof.frame()))
    print(f"profiled total {prof.total_ms:.2f} ms, unprofiled end-to-end {prof.end_to_end_ms:.2f} ms, "
          f"profiler overhead {prof.overhead_ms:.2f} ms, input {prof.input_size}")
    if args.output:
        _output(args, loaded, BenchResult(args.recipe, profile=prof), len(paths))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="end-to-end latency of a recipe")
    model_args(b)
    backend_args(b)
    images_args(b)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--repeats", type=int, default=1)
    b.add_argument("--output", default=None, help="results JSON")
    b.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="per-stage breakdown of a recipe")
    model_args(p)
    backend_args(p)
    images_args(p)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default=None)
    p.set_defaults(func=cmd_profile)
