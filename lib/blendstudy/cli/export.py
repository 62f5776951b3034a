"""`python -m blendstudy export`: BlendMask's dense part (backbone + FPN + FCOS head with the
attention + basis module) as an offline model, checked against eager PyTorch."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List

import numpy as np

from blendstudy.backends import atc_command, export_onnx, soc_version
from blendstudy.cli.common import UserError, random_init_arg
from blendstudy.config import load_config
from blendstudy.data.images import ImageReadError, list_images, read_image
from blendstudy.loading import LoadedPipeline, load_pipeline
from blendstudy.optimize import build_pipeline, host_recipe


def cmd_export(args: argparse.Namespace) -> int:
    if args.format != "onnx":
        raise UserError(f"--format {args.format}: only onnx is exported (ATC converts it to .om on Ascend)")
    if args.input_size is None and not args.dynamic:
        raise UserError("give --input-size H W (a fixed-size model) or --dynamic")
    load_config(args.config)  # an unknown or unsupported config stops here, in one line
    loaded = load_pipeline(args.config, args.weights, "cpu", warn_random=False, random_init=args.random_init)
    if args.quantize:
        return export_int8(args, loaded)
    res = export_onnx(loaded.pipeline.model, args.out, input_size=tuple(args.input_size) if args.input_size else None,
                      dynamic=args.dynamic, opset=args.opset, config_name=args.config,
                      checkpoint=args.weights or "random", lazy_attention=args.lazy_attention)
    m = res.meta
    size = "dynamic H, W" if m["dynamic"] else "x".join(str(v) for v in m["input_size"])
    print(f"wrote {res.onnx_path} ({size}, opset {m['opset']}, {len(m['output_names'])} outputs) and {res.meta_path}")
    print(f"export {res.export_seconds:.1f} s; onnx.checker: ok; onnxruntime vs eager PyTorch: max relative error "
          f"{res.max_rel:.2e} of each output's scale (tolerance {m['verification']['rel_tolerance']:g})")
    for name, e in res.errors.items():
        print(f"  {name:16s} max abs {e['max_abs']:.3e}  scale {e['scale']:.3e}  rel {e['max_rel']:.3e}")
    if not m["dynamic"]:
        soc = args.soc or soc_version()
        cmd = atc_command(res.onnx_path, res.model_dir / "model", soc or "<soc_version: see npu-smi info>",
                          m["input_size"])
        print("on Ascend (seed 002's path): " + " ".join(cmd))
    return 0


def calibration_batches(loaded: LoadedPipeline, folder: str, recipe: str, count: int) -> List[np.ndarray]:
    """The first ``count`` images of ``folder`` prepared as ``recipe``'s host switches prepare them
    (resized, normalised, padded); an unreadable image is one line on stderr and skipped."""
    from blendstudy.backends.nncf_int8 import calibration_batches as prepared

    images: List[np.ndarray] = []
    for path in list_images(folder)[:count]:
        try:
            images.append(read_image(path))
        except ImageReadError as exc:
            print(f"blendstudy: {exc}", file=sys.stderr)
    if not images:
        raise UserError(f"--calibration-images {folder}: no readable image to calibrate int8 on")
    return prepared(build_pipeline(loaded.pipeline, host_recipe(recipe)).prepare, images)


def export_int8(args: argparse.Namespace, loaded: LoadedPipeline) -> int:
    """--quantize int8: a dynamic fp32 export beside --out (<out>-fp32), NNCF's post-training int8
    of it calibrated on --calibration-images, written to --out as an OpenVINO IR (fixed to
    --input-size when given); `openvino:<out>@<recipe>` then runs it."""
    from blendstudy.backends.nncf_int8 import quantize_openvino, specialize

    if not args.calibration_images:
        raise UserError("--quantize int8 needs --calibration-images DIR (training images, not evaluation ones)")
    out = Path(args.out)
    fp32 = out.with_name(out.name + "-fp32")
    res = export_onnx(loaded.pipeline.model, fp32, dynamic=True, opset=args.opset, config_name=args.config,
                      checkpoint=args.weights or "random", lazy_attention=args.lazy_attention)
    batches = calibration_batches(loaded, args.calibration_images, args.recipe, args.calibration_count)
    staging = out.with_name(out.name + "-dynamic-int8") if args.input_size else out
    ir = quantize_openvino(res.model_dir, batches, staging)
    if args.input_size:
        specialize(ir, tuple(args.input_size), out)
        shutil.rmtree(staging)
    print(f"wrote {out} (OpenVINO IR, int8 by nncf.quantize on {len(batches)} images of {args.calibration_images} "
          f"prepared as {args.recipe}'s host switches; fp32 export in {fp32})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export the dense part to ONNX (checked against eager PyTorch)")
    e.add_argument("--config", required=True, help="config path or shipped name, e.g. BlendMask/R_101_3x")
    e.add_argument("--weights", default=None, help=".pth, 'tiny_synthetic', or omit for random weights")
    random_init_arg(e)
    e.add_argument("--format", default="onnx", choices=["onnx"])
    e.add_argument("--out", required=True, help="model directory (model.onnx + model.json)")
    size = e.add_mutually_exclusive_group()
    size.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                      help="fixed (padded) input size, multiples of 32 (P4: of 64)")
    size.add_argument("--dynamic", action="store_true", help="any H, W (multiples of 32)")
    e.add_argument("--opset", type=int, default=17)
    e.add_argument("--lazy-attention", action="store_true",
                   help="stop the graph at the bbox towers: the host computes the attention at the detections")
    e.add_argument("--soc", default=None, help="Ascend SoC for the printed ATC command (default: read from the device)")
    e.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8 by OpenVINO's NNCF (post-training), written as an OpenVINO IR")
    e.add_argument("--calibration-images", default=None, metavar="DIR", help="images to calibrate int8 on")
    e.add_argument("--calibration-count", type=int, default=16, help="how many of them (default 16)")
    e.add_argument("--recipe", default="best_cpu",
                   help="whose host switches prepare the calibration images (as the pipeline that runs it)")
    e.set_defaults(func=cmd_export)
