"""Build a ready-to-run pipeline from a config name/path, a checkpoint and a device."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from blendstudy.checkpoint import LoadReport, file_sha256, load_weights
from blendstudy.config import Config, load_config
from blendstudy.device import code_fingerprint, resolve_device
from blendstudy.model import BlendMask, build_model
from blendstudy.paths import SHIPPED_WEIGHTS
from blendstudy.pipeline import Pipeline, PipelineOptions


@dataclass
class LoadedPipeline:
    pipeline: Pipeline
    config: Config
    config_source: str
    weights: Optional[str]          # None = random weights
    load_report: Optional[LoadReport]
    device: torch.device

    @property
    def random_weights(self) -> bool:
        return self.weights is None

    def describe(self) -> Dict[str, Any]:
        return {"config": self.config_source, "weights": self.weights or "random (seeded init)",
                "random_weights": self.random_weights, "device": str(self.device),
                "options": self.pipeline.options.to_dict(),
                "score_thresh": float(self.config.MODEL.FCOS.INFERENCE_TH_TEST)}

    def prediction_identity(self, recipe: str) -> Dict[str, Any]:
        """What decides this pipeline's predictions under `recipe`: config, checkpoint (sha256;
        None = random weights), recipe, code fingerprint, torch version and device type. A
        resumable evaluation continues only predictions with the same identity."""
        return {"config": str(self.config_source), "recipe": recipe,
                "weights_sha256": file_sha256(self.weights) if self.weights else None,
                "code": code_fingerprint(), "torch": torch.__version__, "device": self.device.type,
                "options": self.pipeline.options.to_dict()}


def resolve_weights(weights: Optional[str]) -> Optional[str]:
    """A checkpoint path, a shipped name ("tiny_synthetic"), or None/"" / "random" for none."""
    if weights in (None, "", "random", "none"):
        return None
    if weights in SHIPPED_WEIGHTS:
        return str(SHIPPED_WEIGHTS[weights])
    return str(weights)


#: How a model without a checkpoint is initialised (``random_init``): "adelaidet" = AdelaiDet's own
#: initialisation, seeded -- its classifier prior (0.01) leaves almost nothing above the 0.05 test
#: threshold, so decode, blender and paste measure empty work; "detecting" = the same with the
#: classifier's bias at prior 0.5 and the box regression's at +2 strides (boxes of positive size),
#: so that POST_NMS_TOPK_TEST instances (100) per image survive NMS: the load a trained model puts
#: on the host stages. A checkpoint's weights replace either.
RANDOM_INITS = ("adelaidet", "detecting")


def detecting_init(model: BlendMask) -> None:
    """The "detecting" random initialisation (RANDOM_INITS) applied to ``model``'s FCOS head."""
    head = model.proposal_generator.fcos_head
    with torch.no_grad():
        head.cls_logits.bias.zero_()
        head.bbox_pred.bias.fill_(2.0)


def load_pipeline(config: Union[str, Path], weights: Optional[str] = None, device: str = "auto",
                  score_thresh: Optional[float] = None, options: Optional[PipelineOptions] = None,
                  seed: int = 0, warn_random: bool = True, random_init: str = "adelaidet") -> LoadedPipeline:
    """Config + checkpoint (strict) + device -> Pipeline. Without weights the model keeps its seeded
    random initialisation (``random_init``: one of RANDOM_INITS) and a warning says so on stderr."""
    if random_init not in RANDOM_INITS:
        raise ValueError(f"random_init must be one of {RANDOM_INITS}, not {random_init!r}")
    overrides = {}
    if score_thresh is not None:
        overrides["MODEL.FCOS.INFERENCE_TH_TEST"] = float(score_thresh)
    cfg = load_config(str(config), overrides=overrides or None)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model: BlendMask = build_model(cfg)
    path = resolve_weights(weights)
    report = None
    if path is not None:
        report = load_weights(model, path, strict=True)
    else:
        if random_init == "detecting":
            detecting_init(model)
        if warn_random:
            print(f"blendstudy: no --weights given: {config} runs with RANDOM weights (seed {seed}, "
                  f"{random_init} initialisation); detections are meaningless", file=sys.stderr)
    model.to(dev).eval()
    pipe = Pipeline.from_config(cfg, model, options)
    return LoadedPipeline(pipe, cfg, str(config), path, report, dev)
