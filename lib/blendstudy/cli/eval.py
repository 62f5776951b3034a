"""`python -m blendstudy eval`: COCO evaluation (bbox, segm) of a recipe, resumable, on one process
or sharded over many (``torchrun --nproc-per-node N -m blendstudy eval ...``; docs/p5_multi_device.md)."""

from __future__ import annotations

import argparse
import sys

from blendstudy.cli.common import EXIT_PARTIAL, model_args
from blendstudy.coco.sharded import throughput
from blendstudy.study.evaluation import DEFAULT_TIMEOUT_MIN, EvalJob, run_eval_job


def cmd_eval(args: argparse.Namespace) -> int:
    res = run_eval_job(EvalJob.from_args(args))
    if res is None:  # a rank other than 0: rank 0 merges and reports
        return 0
    for kind, m in res.metrics.items():
        print(f"{kind}: AP {m.AP:.1f}  AP50 {m.AP50:.1f}  AP75 {m.AP75:.1f}  "
              f"({m.num_detections} detections on {m.num_images} images, {m.detections_per_image:.1f}/img, "
              f"score >= {res.score_thresh}, <= {res.max_dets}/img)")
    t = throughput(res.ranks)
    rate = f"{t['images_per_s']:.2f} images/s in total" if t["images_per_s"] else "nothing left to predict"
    print(f"{res.num_processes} process(es): {res.processed} image(s) predicted now, {res.resumed_from} before; "
          f"{rate}; wall {res.wall_s:.1f} s (see {args.out_dir}/summary.json)")
    if res.skipped:
        print(f"{len(res.skipped)} image(s) skipped (see {args.out_dir}/skipped.jsonl)", file=sys.stderr)
    return EXIT_PARTIAL if res.skipped else 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="COCO evaluation (bbox, segm), resumable; under torchrun sharded over ranks")
    model_args(e)
    e.add_argument("--annotations", required=True, help="COCO instances json")
    e.add_argument("--image-dir", required=True)
    e.add_argument("--out-dir", required=True,
                   help="predictions, per-image timing, summary (resumes here; one folder shared by every rank)")
    e.add_argument("--max-images", type=int, default=None)
    e.add_argument("--max-dets", type=int, default=100)
    e.add_argument("--eval-score-thresh", type=float, default=None,
                   help="keep detections scoring at least this (default: the model's threshold)")
    e.add_argument("--devices", default=None,
                   help="one device per local rank, e.g. npu:0,npu:1 (default: --device's kind, index LOCAL_RANK)")
    e.add_argument("--cpu-affinity", default=None,
                   help="cores per local rank: '0-23,24-47' or '0-23;24-47,96-99', per device "
                        "'npu:1=144-167;npu:2=96-119', or one range for all")
    e.add_argument("--runtime", default=None, help="runtime_best.json of the P2 sweep (the 'runtime' switch)")
    e.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="predict and time only, no AP (random weights)")
    e.add_argument("--on-mismatch", choices=("error", "restart"), default="error",
                   help="out dir holding another pipeline's predictions: stop (default) or discard them")
    e.add_argument("--no-progress", dest="progress", action="store_false")
    e.add_argument("--timeout-min", type=float, default=DEFAULT_TIMEOUT_MIN,
                   help="how long a rank waits for the others (minutes)")
    e.set_defaults(func=cmd_eval)
