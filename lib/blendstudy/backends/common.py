"""What export and the engines share: the errors, the model directory's layout and record
(model.json), the network's identity in a config, and turning flat outputs back into HeadOutputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from blendstudy.model.fcos import HeadOutputs

PathLike = Union[str, Path]

FORMAT = "blendstudy-dense-onnx"
FORMAT_VERSION = 1
META_FILE = "model.json"
ONNX_FILE = "model.onnx"
OM_FILE = "model.om"
INPUT_NAME = "images"
HEAD_FIELDS = ("logits", "box_reg", "ctrness", "top_feats")
BASES_NAME = "bases"
EXPORT_HINT = "python -m blendstudy export"

# The config keys that decide the dense part's graph and weights layout (what build_model reads
# for backbone + FPN + FCOS head + top layer + basis module), and the normalisation the pipeline
# applies before it. Decode settings (score threshold, NMS, top-k) and training keys are left out
# on purpose: changing them does not make an exported network stale.
NETWORK_KEYS = (
    "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.OUT_FEATURES", "MODEL.RESNETS.NORM",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.RESNETS.NUM_GROUPS",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.RES5_DILATION",
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "MODEL.RESNETS.DEFORM_MODULATED", "MODEL.RESNETS.DEFORM_NUM_GROUPS",
    "MODEL.RESNETS.DEFORM_INTERVAL",
    "MODEL.FPN.IN_FEATURES", "MODEL.FPN.OUT_CHANNELS", "MODEL.FPN.NORM", "MODEL.FPN.FUSE_TYPE",
    "MODEL.FCOS.TOP_LEVELS", "MODEL.FCOS.IN_FEATURES", "MODEL.FCOS.FPN_STRIDES", "MODEL.FCOS.NUM_CLASSES",
    "MODEL.FCOS.NUM_CLS_CONVS", "MODEL.FCOS.NUM_BOX_CONVS", "MODEL.FCOS.NUM_SHARE_CONVS", "MODEL.FCOS.NORM",
    "MODEL.FCOS.USE_SCALE", "MODEL.FCOS.USE_DEFORMABLE",
    "MODEL.BASIS_MODULE.IN_FEATURES", "MODEL.BASIS_MODULE.NUM_BASES", "MODEL.BASIS_MODULE.CONVS_DIM",
    "MODEL.BASIS_MODULE.NUM_CONVS", "MODEL.BASIS_MODULE.NORM",
    "MODEL.BLENDMASK.ATTN_SIZE",
    "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT",
)


class ExportError(RuntimeError):
    """The dense part could not be exported or does not reproduce the eager model; one line."""


class BackendError(RuntimeError):
    """A model directory or engine that cannot serve the pipeline; one line naming the thing and the fix."""


def _lookup(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        if isinstance(node, Mapping):
            if part not in node:
                return None
            node = node[part]
        else:
            node = getattr(node, part, None)
            if node is None:
                return None
    return node


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def network_record(cfg: Any) -> Dict[str, Any]:
    """{dotted key: value} of NETWORK_KEYS in `cfg` (a blendstudy Config or a nested mapping)."""
    return {key: _plain(_lookup(cfg, key)) for key in NETWORK_KEYS}


def network_digest(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(record), sort_keys=True).encode()).hexdigest()


def deform_settings(cfg: Any) -> List[str]:
    """The deformable settings switched on in `cfg` ("KEY=value"), empty when there are none."""
    found = []
    per_stage = _lookup(cfg, "MODEL.RESNETS.DEFORM_ON_PER_STAGE")
    if isinstance(per_stage, (list, tuple)) and any(bool(v) for v in per_stage):
        found.append(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(per_stage)}")
    if bool(_lookup(cfg, "MODEL.FCOS.USE_DEFORMABLE")):
        found.append("MODEL.FCOS.USE_DEFORMABLE=True")
    return found


#: with lazy attention the graph gives the bbox towers' outputs instead of the attention: the host
#: computes the attention (the top layer) at the detections left after NMS only
LAZY_HEAD_FIELDS = ("logits", "box_reg", "ctrness", "box_towers")


def output_names(levels: Sequence[str], lazy_attention: bool = False) -> List[str]:
    """The flat output order of the exported graph: each head field over the levels, then the bases."""
    fields = LAZY_HEAD_FIELDS if lazy_attention else HEAD_FIELDS
    return [f"{field}_{level}" for field in fields for level in levels] + [BASES_NAME]


def assemble(outputs: Mapping[str, torch.Tensor], levels: Sequence[str]) -> Tuple[HeadOutputs, torch.Tensor]:
    """{output name: tensor} -> (HeadOutputs, bases), the shapes eager BlendMask gives (with lazy
    attention: box_towers filled and top_feats empty, as BlendMask.predict_head gives them)."""
    if f"box_towers_{levels[0]}" in outputs:
        logits, box_reg, ctrness, towers = [[outputs[f"{f}_{lv}"] for lv in levels] for f in LAZY_HEAD_FIELDS]
        return HeadOutputs(logits, box_reg, ctrness, [], box_towers=towers), outputs[BASES_NAME]
    head = HeadOutputs(*[[outputs[f"{field}_{level}"] for level in levels] for field in HEAD_FIELDS])
    return head, outputs[BASES_NAME]


def read_meta(model_dir: PathLike) -> Dict[str, Any]:
    """model.json of an export directory, checked for presence and format (BackendError otherwise)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BackendError(f"{model_dir}: no such model directory: export one with `{EXPORT_HINT} --out {model_dir}`")
    path = model_dir / META_FILE
    if not path.is_file():
        raise BackendError(f"{path}: missing, {model_dir} is not an export directory: "
                           f"re-export with `{EXPORT_HINT} --out {model_dir}`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BackendError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]}): "
                           f"re-export with `{EXPORT_HINT} --out {model_dir}`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BackendError(f"{path}: not a blendstudy dense-model record (format {FORMAT!r} expected): "
                           f"re-export with `{EXPORT_HINT} --out {model_dir}`")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise BackendError(f"{path}: format_version {meta.get('format_version')} is newer than this blendstudy "
                           f"understands ({FORMAT_VERSION}): update blendstudy or re-export")
    return meta


def write_meta(model_dir: PathLike, meta: Mapping[str, Any]) -> Path:
    path = Path(model_dir) / META_FILE
    path.write_text(json.dumps(dict(meta), indent=2, sort_keys=False) + "\n")
    return path


def fit_batch(batch: torch.Tensor, fixed: Optional[Sequence[int]], divisor: int, where: str) -> torch.Tensor:
    """Check (and for a fixed-size model, zero-pad bottom/right) a (1, 3, H, W) float32 batch.

    Padding with zeros after normalisation is what the pipeline's own padding does, so a fixed-size
    model sees the image as if the pad multiple were larger (detections stay in input pixels)."""
    if batch.dim() != 4 or batch.shape[0] != 1 or batch.shape[1] != 3:
        raise BackendError(f"{where}: expects a (1, 3, H, W) batch, got {tuple(batch.shape)}")
    if batch.dtype != torch.float32:
        raise BackendError(f"{where}: exported in float32 but the batch is {batch.dtype}: run the pipeline "
                           "with dtype float32")
    h, w = int(batch.shape[2]), int(batch.shape[3])
    if fixed is not None:
        fh, fw = int(fixed[0]), int(fixed[1])
        if h > fh or w > fw:
            raise BackendError(f"{where}: batch {h}x{w} is larger than the exported fixed size {fh}x{fw}: "
                               f"re-export with a larger --size or --dynamic")
        if (h, w) != (fh, fw):
            batch = torch.nn.functional.pad(batch, (0, fw - w, 0, fh - h))
        return batch
    if divisor and (h % divisor or w % divisor):
        raise BackendError(f"{where}: batch {h}x{w} is not a multiple of {divisor} (the backbone's size "
                           "divisibility): pad it as the pipeline does")
    return batch


def scale_errors(ref: torch.Tensor, got: torch.Tensor) -> Dict[str, float]:
    """max |got - ref|, the output's scale max |ref|, and their ratio (the relative error used for the
    tolerance: elementwise relative errors are meaningless where outputs cross zero)."""
    ref = ref.detach().float().cpu()
    got = got.detach().float().cpu()
    if ref.shape != got.shape:
        return {"max_abs": float("inf"), "scale": float(ref.abs().max()) if ref.numel() else 0.0,
                "max_rel": float("inf")}
    diff = float((got - ref).abs().max()) if ref.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return {"max_abs": diff, "scale": scale, "max_rel": diff / max(scale, 1e-12)}
