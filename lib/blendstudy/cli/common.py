"""What every command shares: the user-error types (one line, exit 2) and the model options."""

from __future__ import annotations

import argparse

from blendstudy.backends import BackendError, ExportError, load_backend
from blendstudy.checkpoint import CheckpointError
from blendstudy.config import ConfigError
from blendstudy.data.coco import DatasetError
from blendstudy.data.images import ImageReadError
from blendstudy.device import DeviceError
from blendstudy.errors import EXIT_PARTIAL, EXIT_USER_ERROR, UserError
from blendstudy.loading import RANDOM_INITS, LoadedPipeline, load_pipeline
from blendstudy.optimize import build_pipeline, host_recipe, recipe_switches
from blendstudy.pipeline import Pipeline
from blendstudy.study.params import ParamsError

__all__ = ["EXIT_PARTIAL", "EXIT_USER_ERROR", "USER_ERRORS", "UserError", "attach_backend", "backend_args",
           "model_args", "random_init_arg", "recipe_pipeline"]

#: errors whose message is the whole story: printed as one line `blendstudy: <message>`, exit 2
USER_ERRORS = (UserError, CheckpointError, ConfigError, DatasetError, ImageReadError, DeviceError, ParamsError,
               BackendError, ExportError, FileNotFoundError)


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config path or shipped name")
    p.add_argument("--weights", default=None, help=".pth, 'tiny_synthetic', or omit for random weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--recipe", default="baseline", help="baseline, p0..p4, p4+fold_bn, best, ...")
    p.add_argument("--score-thresh", type=float, default=None)
    random_init_arg(p)


def random_init_arg(p: argparse.ArgumentParser) -> None:
    """--random-init: how a model without --weights is initialised (blendstudy.loading.RANDOM_INITS)."""
    p.add_argument("--random-init", choices=RANDOM_INITS, default="adelaidet",
                   help="without --weights: AdelaiDet's initialisation, or 'detecting' (about 100 "
                        "instances per image survive NMS, a trained model's load on decode/blender/paste)")


def backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None, choices=["onnxruntime", "openvino", "om"],
                   help="run the dense part offline (python -m blendstudy export writes --model)")
    p.add_argument("--model", default=None, metavar="DIR", help="the exported model directory of --backend")
    p.add_argument("--backend-device", default=None, help="the engine's device (default cpu; npu:N for om)")


def attach_backend(args: argparse.Namespace, pipe: Pipeline) -> Pipeline:
    """With --backend/--model: the dense part of ``pipe`` run by that engine (the export checked
    against --config and --weights: a stale model directory is one clear error)."""
    if getattr(args, "backend", None) is None:
        if getattr(args, "model", None):
            raise UserError("--model needs --backend onnxruntime|openvino|om")
        return pipe
    if not args.model:
        raise UserError(f"--backend {args.backend} needs --model DIR (python -m blendstudy export --out DIR)")
    pipe.dense = load_backend(args.backend, args.model, device=args.backend_device, config=args.config,
                              checkpoint=args.weights or "random")
    pipe.recipe_info["dense"] = pipe.dense.describe()
    return pipe


def recipe_pipeline(args: argparse.Namespace):
    """(LoadedPipeline, the recipe's Pipeline) from --config/--weights/--device/--recipe (and
    --backend/--model: then only the recipe's host switches apply, the engine runs the network)."""
    try:
        recipe_switches(args.recipe)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    loaded: LoadedPipeline = load_pipeline(args.config, args.weights, args.device, args.score_thresh,
                                           random_init=args.random_init)
    recipe = args.recipe
    if getattr(args, "backend", None):
        recipe = host_recipe(args.recipe)
    return loaded, attach_backend(args, build_pipeline(loaded.pipeline, recipe))
