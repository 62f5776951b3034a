"""`python -m blendstudy <command>`: the same functions the notebooks call.

Commands: predict, weights, bench, profile, eval, reproduce. Errors a user can fix (a bad file, a
missing path, an unavailable device) print one line `blendstudy: <what>` and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from tqdm import tqdm

EXIT_USER_ERROR = 2
EXIT_PARTIAL = 1


class UserError(Exception):
    """An error whose message is the whole story for the user (no traceback)."""


def _user_errors() -> tuple:
    from blendstudy.checkpoint import CheckpointError
    from blendstudy.config import ConfigError
    from blendstudy.data.coco import DatasetError
    from blendstudy.data.images import ImageReadError
    from blendstudy.device import DeviceError

    return (UserError, CheckpointError, ConfigError, DatasetError, ImageReadError, DeviceError,
            FileNotFoundError)


# ---- predict --------------------------------------------------------------------------------
def _image_names(paths: Sequence[Path]) -> List[str]:
    """File names as keys; the full path where two inputs share a name."""
    names = [p.name for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    return [str(p) if p.name in dup else p.name for p in paths]


def cmd_predict(args: argparse.Namespace) -> int:
    from blendstudy.data.images import ImageReadError, list_images, read_image
    from blendstudy.predictor import load_pipeline

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
    loaded = load_pipeline(args.config, args.weights, args.device, args.score_thresh)
    out: Dict[str, object] = {
        "source": f"blendstudy native BlendMask, {loaded.device}, {loaded.pipeline.options.dtype}",
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
        det = loaded.pipeline(image)
        images[name] = det.to_record()
        if args.visualize:
            from blendstudy.visualize import save_visualization

            save_visualization(image, det, Path(args.visualize) / (Path(name).stem + ".png"))
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(out))
    print(f"wrote {len(images)} image(s) to {args.output_json}"
          + (f"; {len(errors)} skipped" if errors else ""), file=sys.stderr)
    return EXIT_PARTIAL if errors else 0


# ---- weights --------------------------------------------------------------------------------
def cmd_weights(args: argparse.Namespace) -> int:
    from blendstudy.checkpoint import compare_state_dict, read_state_dict
    from blendstudy.config import load_config
    from blendstudy.model import build_model

    cfg = load_config(args.config)
    model = build_model(cfg)
    path = Path(args.weights)
    state = read_state_dict(path)
    report = compare_state_dict(model, state, str(path), path.stat().st_size)
    params = sum(p.numel() for p in model.parameters())
    print(report.summary(limit=args.limit))
    print(f"  model parameters (trainable tensors only): {params:,}")
    if args.json:
        from blendstudy.report import to_jsonable

        Path(args.json).write_text(json.dumps(to_jsonable({"report": report, "coverage": report.coverage,
                                                           "ok": report.ok, "parameters": params}), indent=2))
    return 0 if report.ok else EXIT_PARTIAL


# ---- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blendstudy", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", help="run BlendMask on images, write detections JSON")
    pr.add_argument("--config", required=True, help="config path or shipped name, e.g. BlendMask/R_101_3x")
    pr.add_argument("--weights", default=None, help=".pth checkpoint (or 'tiny_synthetic'); omit for random")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda[:N], npu[:N]")
    pr.add_argument("--score-thresh", type=float, default=None, help="override MODEL.FCOS.INFERENCE_TH_TEST")
    pr.add_argument("--output-json", required=True)
    pr.add_argument("--visualize", default=None, metavar="DIR", help="also save overlay PNGs here")
    pr.add_argument("--quiet", action="store_true")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.set_defaults(func=cmd_predict)

    w = sub.add_parser("weights", help="check a checkpoint against a config (size, tensors, coverage)")
    w.add_argument("--config", required=True)
    w.add_argument("--weights", required=True)
    w.add_argument("--limit", type=int, default=20, help="names listed per problem kind")
    w.add_argument("--json", default=None, help="also write the report as JSON here")
    w.set_defaults(func=cmd_weights)

    for register in EXTRA_COMMANDS:
        register(sub)
    return p


EXTRA_COMMANDS: List[Callable[[argparse._SubParsersAction], None]] = []


def _load_commands() -> None:
    import blendstudy.commands  # noqa: F401  (registers bench / profile / eval)

    try:
        from blendstudy.reproduce import register_cli
    except ImportError:
        return
    if register_cli not in EXTRA_COMMANDS:
        EXTRA_COMMANDS.append(register_cli)


def main(argv: Optional[Sequence[str]] = None) -> int:
    _load_commands()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        msg = str(exc).strip()
        if isinstance(exc, FileNotFoundError) and exc.filename:
            msg = f"{exc.filename}: {exc.strerror or 'not found'}"
        print(f"blendstudy: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("blendstudy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
