"""How one inference runs: every optimization switch's effect as one frozen record.

`InferenceOptions` is taken at construction: by the model's parts (`build_model(cfg, options)`,
`BlendMask.with_options`), by the weight transforms after the checkpoint is in
(`blendstudy.transforms.prepare_model`) and by `Pipeline`. A recipe (blendstudy.optimize) is data:
the switches it names each set some of these fields, and nothing else changes behaviour. Each
field's metadata names the code that reads it (``read_by``); tests/test_options.py checks that it
does, and that every switch changes what runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: the parts of the network that can compute in half precision between float32 neighbours
HALF_PARTS = ("backbone", "basis_module", "tower_convs")
#: the parts of the network that can be compiled
COMPILE_TARGETS = ("backbone", "proposal_generator", "basis_module")
#: the fields that act outside the dense network (pre-processing, decode, blender, paste, the
#: process): what still applies when an offline engine runs the network (P6)
HOST_FIELDS = ("resize", "decode", "pad_multiple", "raw_masks", "blend_upsample", "blend_chunk", "runtime")


def _read_by(where: str) -> Dict[str, str]:
    return {"read_by": where}


@dataclass(frozen=True)
class InferenceOptions:
    """Defaults reproduce detectron2 + AdelaiDet exactly.

    resize: "pil" = ResizeShortestEdge with PIL bilinear on uint8 on the CPU (detectron2);
            "device" = bilinear F.interpolate on the device (the seed's P0).
    decode: "reference" = AdelaiDet's decode (data-dependent shapes, host syncs);
            "sync_free" = fixed-shape decode with no .cpu()/.item() until the results (P1).
    pad_multiple: pad the input to a multiple of this (0 = the backbone's size divisibility, 32).
    raw_masks: keep the R x R mask probabilities and skip pasting full-image masks.
    dtype: compute dtype of the whole network ("float32", "float16", "bfloat16").
    channels_last: NHWC memory format for the convolutions.
    half_parts: parts of the network (HALF_PARTS) computed in ``half_dtype`` between float32
            neighbours, the rest float32 (the precision policy per part).
    half_dtype: the dtype of ``half_parts``.
    lazy_attention: BlendMask's top layer only at the detections left after NMS.
    blend_upsample: the blender's attention upsampling, "interpolate" (AdelaiDet) or "matmul".
    blend_chunk: detections the blender takes at a time (None: all at once, as AdelaiDet).
    fold_bn: fold frozen BatchNorms into the preceding convolutions.
    compile_targets: parts compiled with torch.compile (COMPILE_TARGETS).
    recompile_limit: dynamo's recompile limit while the compiled parts run (None: dynamo's default).
    runtime: apply the P2 runtime setting in-process when the pipeline is built.
    """

    resize: str = field(default="pil", metadata=_read_by("blendstudy.pipeline.Pipeline.resize_cpu"))
    decode: str = field(default="reference", metadata=_read_by("blendstudy.pipeline.Pipeline.decode"))
    pad_multiple: int = field(default=0, metadata=_read_by("blendstudy.pipeline.Pipeline.pad_multiple"))
    raw_masks: bool = field(default=False, metadata=_read_by("blendstudy.pipeline.Pipeline.paste"))
    dtype: str = field(default="float32", metadata=_read_by("blendstudy.transforms.set_precision"))
    channels_last: bool = field(default=False, metadata=_read_by("blendstudy.pipeline.Pipeline.normalize_pad"))
    half_parts: Tuple[str, ...] = field(default=(), metadata=_read_by("blendstudy.transforms.set_precision"))
    half_dtype: str = field(default="float32", metadata=_read_by("blendstudy.transforms.set_precision"))
    lazy_attention: bool = field(default=False,
                                 metadata=_read_by("blendstudy.model.blendmask.BlendMask.lazy_attention"))
    blend_upsample: str = field(default="interpolate", metadata=_read_by("blendstudy.model.blender.Blender.__init__"))
    blend_chunk: Optional[int] = field(default=None, metadata=_read_by("blendstudy.model.blender.Blender.__init__"))
    fold_bn: bool = field(default=False, metadata=_read_by("blendstudy.transforms.prepare_model"))
    compile_targets: Tuple[str, ...] = field(default=(), metadata=_read_by("blendstudy.transforms.compile_parts"))
    recompile_limit: Optional[int] = field(default=None, metadata=_read_by("blendstudy.transforms.compile_parts"))
    runtime: bool = field(default=False, metadata=_read_by("blendstudy.optimize.build_pipeline"))

    def __post_init__(self) -> None:
        _check(self.resize in ("pil", "device"), f"resize must be 'pil' or 'device', not {self.resize!r}")
        _check(self.decode in ("reference", "sync_free"), f"decode must be 'reference' or 'sync_free', "
               f"not {self.decode!r}")
        for name in ("dtype", "half_dtype"):
            value = getattr(self, name)
            _check(value in DTYPES, f"{name} must be one of {sorted(DTYPES)}, not {value!r}")
        _check(self.blend_upsample in ("interpolate", "matmul"),
               f"blend_upsample must be 'interpolate' or 'matmul', not {self.blend_upsample!r}")
        _check(self.blend_chunk is None or self.blend_chunk > 0,
               f"blend_chunk must be positive, not {self.blend_chunk}")
        _check(self.pad_multiple >= 0, f"pad_multiple must be >= 0, not {self.pad_multiple}")
        _check(self.recompile_limit is None or self.recompile_limit > 0,
               f"recompile_limit must be positive, not {self.recompile_limit}")
        _check(set(self.half_parts) <= set(HALF_PARTS), f"half_parts: {self.half_parts}; known: {HALF_PARTS}")
        _check(set(self.compile_targets) <= set(COMPILE_TARGETS),
               f"compile_targets: {self.compile_targets}; known: {COMPILE_TARGETS}")
        _check(not (self.half_parts and self.dtype != "float32"),
               "half_parts and a half dtype for the whole network exclude each other")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def changed(self) -> Dict[str, Any]:
        """The fields that differ from the defaults (detectron2 + AdelaiDet)."""
        default = InferenceOptions()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


def _check(ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(problem)


def read_by(name: str) -> str:
    """The code that reads the field ``name`` (a dotted path)."""
    return {f.name: f.metadata["read_by"] for f in fields(InferenceOptions)}[name]
