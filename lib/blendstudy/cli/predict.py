"""`python -m blendstudy predict`: BlendMask on images, detections JSON (+ overlays)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from tqdm import tqdm

from blendstudy.cli.common import EXIT_PARTIAL, UserError, attach_backend, backend_args, random_init_arg
from blendstudy.data.images import ImageReadError, list_images, read_image
from blendstudy.loading import load_pipeline
from blendstudy.visualize import save_visualization


def _image_names(paths: Sequence[Path]) -> List[str]:
    """File names as keys; the full path where two inputs share a name."""
    names = [p.name for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    return [str(p) if p.name in dup else p.name for p in paths]


def cmd_predict(args: argparse.Namespace) -> int:
    paths: List[Path] = []
    errors: Dict[str, str] = {}
    for item in args.inputs:  # a missing input is reported and skipped like a bad image
        try:
            paths.extend(list_images([item]))
        except ImageReadError as exc:
            print(f"blendstudy: {exc}", file=sys.stderr)
            errors[str(item)] = str(exc)
    if not paths:
        raise UserError(f"no readable images among {', '.join(args.inputs)}")
    loaded = load_pipeline(args.config, args.weights, args.device, args.score_thresh, random_init=args.random_init)
    pipe = attach_backend(args, loaded.pipeline)
    out: Dict[str, object] = {
        "source": f"blendstudy native BlendMask, {loaded.device}, {loaded.pipeline.options.dtype}"
                  + (f", dense part on {args.backend} ({args.model})" if args.backend else ""),
        "config": str(args.config), "weights": loaded.weights or "random", "images": {}, "errors": errors}
    images: Dict[str, object] = out["images"]  # type: ignore[assignment]
    for name, path in tqdm(list(zip(_image_names(paths), paths)), desc="predict", unit="img",
                           disable=len(paths) < 2 or args.quiet):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            print(f"blendstudy: {exc}", file=sys.stderr)
            errors[name] = str(exc)
            continue
        det = pipe(image)
        images[name] = det.to_record()
        if args.visualize:
            save_visualization(image, det, Path(args.visualize) / (Path(name).stem + ".png"))
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(out))
    print(f"wrote {len(images)} image(s) to {args.output_json}"
          + (f"; {len(errors)} skipped" if errors else ""), file=sys.stderr)
    return EXIT_PARTIAL if errors else 0


def register(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("predict", help="run BlendMask on images, write detections JSON")
    pr.add_argument("--config", required=True, help="config path or shipped name, e.g. BlendMask/R_101_3x")
    pr.add_argument("--weights", default=None, help=".pth checkpoint (or 'tiny_synthetic'); omit for random")
    random_init_arg(pr)
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda[:N], npu[:N]")
    pr.add_argument("--score-thresh", type=float, default=None, help="override MODEL.FCOS.INFERENCE_TH_TEST")
    pr.add_argument("--output-json", required=True)
    pr.add_argument("--visualize", default=None, metavar="DIR", help="also save overlay PNGs here")
    pr.add_argument("--quiet", action="store_true")
    backend_args(pr)
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.set_defaults(func=cmd_predict)
