"""`python -m blendstudy export`: BlendMask's dense part (backbone + FPN + FCOS head with the
attention + basis module) as an offline model, checked against eager PyTorch."""

from __future__ import annotations

import argparse

from blendstudy.backends import atc_command, export_onnx, soc_version
from blendstudy.cli.common import UserError
from blendstudy.config import load_config
from blendstudy.predictor import load_pipeline


def cmd_export(args: argparse.Namespace) -> int:
    if args.format != "onnx":
        raise UserError(f"--format {args.format}: only onnx is exported (ATC converts it to .om on Ascend)")
    if args.input_size is None and not args.dynamic:
        raise UserError("give --input-size H W (a fixed-size model) or --dynamic")
    load_config(args.config)  # an unknown or unsupported config stops here, in one line
    loaded = load_pipeline(args.config, args.weights, "cpu", warn_random=False)
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


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export the dense part to ONNX (checked against eager PyTorch)")
    e.add_argument("--config", required=True, help="config path or shipped name, e.g. BlendMask/R_101_3x")
    e.add_argument("--weights", default=None, help=".pth, 'tiny_synthetic', or omit for random weights")
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
    e.set_defaults(func=cmd_export)
