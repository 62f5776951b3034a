"""Export BlendMask's dense part (backbone + FPN + FCOS head with the attention + basis module) to ONNX.

The exported graph takes the pipeline's normalised, padded batch "images" (1, 3, H, W) float32 and
returns a flat tuple: logits_<level>..., box_reg_<level>..., ctrness_<level>..., top_feats_<level>...,
bases. Everything data dependent (decode, NMS, blend, paste) stays in the pipeline. Beside the
.onnx, model.json records what the graph was made from (config network keys, checkpoint sha256,
normalisation, sizes, exporter and versions) and how closely onnxruntime reproduced eager PyTorch.
"""

from __future__ import annotations

import inspect
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from blendstudy.backends.common import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_NAME,
    META_FILE,
    ONNX_FILE,
    ExportError,
    PathLike,
    deform_settings,
    network_digest,
    network_record,
    output_names,
    scale_errors,
    write_meta,
)
from blendstudy.model.blendmask import BlendMask

# Tolerance of the exported graph against eager PyTorch, both fp32, as max |ort - eager| divided by
# the output's scale max |eager|. The two differ only in summation order and kernels (MLAS / oneDNN
# convolutions, fused conv+bn, GroupNorm decomposed into ops): on the tiny model that measures
# 1e-7..2e-6 of the scale per output, and error grows roughly with depth, so R-101 stays far below.
# 1e-3 leaves >100x headroom for deeper nets and other CPUs, while any real graph mistake (a wrong
# resize mode, a missing norm, swapped outputs, a padding off by one) moves outputs by >1e-2 of scale.
REL_TOLERANCE = 1e-3

EXPORTER = "torchscript"  # torch.onnx.export(dynamo=False): the tracing exporter, present in torch 2.0-2.13


class DenseWrapper(nn.Module):
    """BlendMask's dense part as one module: images -> flat tuple in `output_names(levels, lazy)` order.
    By default the top layer (attention) runs at every location, whatever model.lazy_attention says:
    the exported head carries top_feats. With lazy_attention=True the graph stops at the bbox towers
    (box_towers outputs) and the host computes the attention at the detections left after NMS only
    (BlendMask.attend, the lazy_attention switch)."""

    def __init__(self, model: BlendMask, lazy_attention: bool = False):
        super().__init__()
        self.model = model
        self.lazy_attention = bool(lazy_attention)

    @property
    def levels(self) -> List[str]:
        return list(self.model.proposal_generator.in_features)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.model.extract_features(images)
        if self.lazy_attention:
            head = self.model.proposal_generator(features, None, keep_box_towers=True)
            last = head.box_towers
        else:
            head = self.model.proposal_generator(features, self.model.top_layer)
            last = head.top_feats
        bases = self.model.compute_bases(features)
        return tuple(head.logits + head.box_reg + head.ctrness + last + [bases])


@dataclass
class ExportResult:
    model_dir: Path
    onnx_path: Path
    meta_path: Path
    meta: Dict[str, Any]
    errors: Dict[str, Dict[str, float]] = field(default_factory=dict)  # output -> max_abs/scale/max_rel

    @property
    def export_seconds(self) -> float:
        return float(self.meta["export_seconds"])

    @property
    def max_rel(self) -> float:
        return max((e["max_rel"] for e in self.errors.values()), default=0.0)


def sample_batch(model: BlendMask, size: Tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A deterministic image-like batch: uniform uint8 noise normalised as the pipeline does (so the
    activations have the scale of real inputs; N(0, 1) would not for std-1 configs)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (1, 3, int(size[0]), int(size[1])), generator=g).float()
    mean, std = model.pixel_mean.float().cpu(), model.pixel_std.float().cpu()
    return ((pixels - mean) / std).to(model.device)


def _versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("onnx", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def _torch_export(wrapper: nn.Module, sample: torch.Tensor, path: Path, names: List[str], opset: int,
                  dynamic: bool) -> None:
    kwargs: Dict[str, Any] = {}
    params = inspect.signature(torch.onnx.export).parameters
    if "dynamo" in params:
        kwargs["dynamo"] = False  # torch >= 2.9 defaults to the torch.export-based exporter; pick tracing
    if dynamic:
        axes: Dict[str, Dict[int, str]] = {INPUT_NAME: {2: "height", 3: "width"}}
        for name in names:
            suffix = name.rsplit("_", 1)[-1]
            axes[name] = {2: f"height_{suffix}", 3: f"width_{suffix}"}
        kwargs["dynamic_axes"] = axes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation note and tracer warnings
        torch.onnx.export(wrapper, (sample,), str(path), input_names=[INPUT_NAME], output_names=names,
                          opset_version=int(opset), do_constant_folding=True, **kwargs)


def verify_onnx(onnx_path: PathLike, wrapper: nn.Module, batches: Sequence[torch.Tensor],
                names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Run the .onnx with onnxruntime (CPU) on `batches` and compare with eager; the worst error per output."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("onnxruntime is not installed, the export cannot be verified: "
                          "pip install onnxruntime (pinned in env/requirements-cpu.txt)") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    worst: Dict[str, Dict[str, float]] = {}
    for batch in batches:
        with torch.no_grad():
            ref = wrapper(batch)
        got = session.run(list(names), {INPUT_NAME: batch.detach().cpu().numpy()})
        for name, r, g in zip(names, ref, got):
            e = scale_errors(r, torch.from_numpy(g))
            if name not in worst or e["max_rel"] > worst[name]["max_rel"]:
                worst[name] = e
    return worst


def export_onnx(model: BlendMask, out_dir: PathLike, input_size: Optional[Tuple[int, int]] = None,
                dynamic: bool = False, opset: int = 17, config_name: Optional[str] = None,
                checkpoint: Optional[str] = None, config: Any = None, sample: Optional[torch.Tensor] = None,
                verify: bool = True, rel_tolerance: float = REL_TOLERANCE,
                lazy_attention: bool = False) -> ExportResult:
    """Export `model`'s dense part to `out_dir`/model.onnx + model.json and verify it with onnxruntime.

    input_size: (H, W) of the batch, multiples of the backbone's size divisibility. A fixed-size
    model (dynamic=False) needs it; with dynamic=True it is the tracing size (default 10x12 pad
    multiples) and the graph takes any H, W that are multiples of the divisibility.
    config_name / config: the config the model was built from (a name or path, or the Config itself);
    recorded so a backend can refuse a stale export, and checked for settings that cannot be exported.
    checkpoint: the weights loaded into `model` (a path or a shipped name such as "tiny_synthetic");
    None = random weights. sample: the (1, 3, H, W) batch to trace and verify with (default: normalised
    uniform noise). Raises ExportError (one line) for unsupported configs, a failing onnx checker, or
    onnxruntime outputs off eager by more than rel_tolerance of an output's scale. lazy_attention:
    export the bbox towers instead of the attention (the host then computes it at the detections).
    """
    config, name = _exportable(model, config, config_name)
    sample = _trace_batch(model, input_size, dynamic, sample)
    ckpt_path, sha = _checkpoint_digest(checkpoint)
    model = model.eval()
    wrapper = DenseWrapper(model, lazy_attention).eval()
    names = output_names(wrapper.levels, lazy_attention)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_FILE
    export_seconds = _export_graph(wrapper, sample, onnx_path, names, opset, dynamic, name)
    _check_graph(onnx_path)
    with torch.no_grad():
        shapes = {n: list(t.shape) for n, t in zip(names, wrapper(sample))}
    verification = _verification(model, wrapper, onnx_path, sample, names, dynamic, verify, rel_tolerance)
    meta: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "onnx": ONNX_FILE,
        **_source_record(config, config_name, ckpt_path, sha),
        **_graph_record(model, wrapper.levels, names, dynamic, tuple(sample.shape[-2:]), lazy_attention, shapes,
                        opset),
        "export_seconds": round(export_seconds, 3),
        "verification": verification,
    }
    meta_path = write_meta(out, meta)  # written even when it fails: the errors are the diagnosis
    _raise_if_off(onnx_path, verification["errors"], rel_tolerance)
    return ExportResult(out, onnx_path, meta_path, meta, verification["errors"])


# ----------------------------------------------------------------------------- export_onnx's parts


def _exportable(model: BlendMask, config: Any, config_name: Optional[str]) -> Tuple[Any, str]:
    """The checks before anything is traced: (the config, loaded from ``config_name`` when not
    given; the name messages use). ExportError for a model that is no BlendMask, deformable
    convolutions (in the config or the model) or parameters other than float32."""
    if config is None and config_name is not None:
        from blendstudy.config import load_config

        config = load_config(str(config_name), check=False)
    name = str(config_name) if config_name is not None else "(unnamed config)"
    if not isinstance(model, BlendMask):
        raise ExportError(f"export_onnx needs a BlendMask, not {type(model).__name__}")
    deform = deform_settings(config) if config is not None else []
    if not deform:
        layers = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Deform")})
        deform = [f"the model's {', '.join(layers)} layers"] if layers else []
    if deform:
        raise ExportError(f"{name}: {'; '.join(deform)}: deformable convolutions are not exportable until "
                          "blendstudy exports and verifies them on the engines (ONNX DeformConv is opset 19)")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ExportError("export_onnx needs a float32 model (build it without the float16/bfloat16 switch)")
    return config, name


def _trace_batch(model: BlendMask, input_size: Optional[Tuple[int, int]], dynamic: bool,
                 sample: Optional[torch.Tensor]) -> torch.Tensor:
    """The (1, 3, H, W) float32 batch to trace and verify with: ``sample`` checked against
    ``input_size``, or made by sample_batch. H, W: ``input_size``, else the sample's, else (dynamic)
    10x12 multiples of the size divisibility; ExportError unless positive multiples of it."""
    divisor = int(model.size_divisibility)
    if input_size is None:
        if not dynamic and sample is None:
            raise ExportError("a fixed-size export needs input_size=(H, W) (or dynamic=True)")
        input_size = tuple(sample.shape[-2:]) if sample is not None else (divisor * 10, divisor * 12)
    h, w = int(input_size[0]), int(input_size[1])
    if h <= 0 or w <= 0 or h % divisor or w % divisor:
        raise ExportError(f"input_size {h}x{w} must be positive multiples of {divisor} (the backbone's size "
                          "divisibility; the pipeline pads to it)")
    if sample is None:
        return sample_batch(model, (h, w))
    if tuple(sample.shape) != (1, 3, h, w) or sample.dtype != torch.float32:
        raise ExportError(f"sample must be a (1, 3, {h}, {w}) float32 batch, got {tuple(sample.shape)} "
                          f"{sample.dtype}")
    return sample


def _checkpoint_digest(checkpoint: Optional[str]) -> Tuple[Optional[Path], Optional[str]]:
    """(the weights file ``checkpoint`` names, its sha256); (None, None) for random weights."""
    from blendstudy.loading import resolve_weights

    ckpt_path = resolve_weights(checkpoint)
    if ckpt_path is None:
        return None, None
    from blendstudy.checkpoint import file_sha256

    if not Path(ckpt_path).is_file():
        raise ExportError(f"{ckpt_path}: no such checkpoint file (the weights to record in model.json)")
    return ckpt_path, file_sha256(ckpt_path)


def _export_graph(wrapper: nn.Module, sample: torch.Tensor, onnx_path: Path, names: List[str], opset: int,
                  dynamic: bool, name: str) -> float:
    """Trace ``wrapper`` to ``onnx_path``; the seconds it took. The exporter's error as a one-line ExportError."""
    t0 = time.perf_counter()
    try:
        _torch_export(wrapper, sample, onnx_path, names, opset, dynamic)
    except Exception as e:  # the exporter's own errors are long; keep the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{name}: torch.onnx.export failed ({type(e).__name__}: {first})") from e
    return time.perf_counter() - t0


def _check_graph(onnx_path: Path) -> None:
    """onnx.checker on the written graph; ExportError when onnx is missing or the checker rejects it."""
    try:
        import onnx
    except ImportError:
        raise ExportError("onnx is not installed: pip install onnx (pinned in env/requirements-cpu.txt)") from None
    try:
        onnx.checker.check_model(str(onnx_path))
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{onnx_path}: onnx.checker rejects the graph ({str(e).splitlines()[0]})") from e


def _verification(model: BlendMask, wrapper: nn.Module, onnx_path: Path, sample: torch.Tensor, names: List[str],
                  dynamic: bool, verify: bool, rel_tolerance: float) -> Dict[str, Any]:
    """model.json's "verification": onnxruntime against eager on ``sample`` and, for a dynamic graph,
    on a second size (proving the graph is not frozen at the tracing size). ``passed``: every output
    within ``rel_tolerance`` of its scale; None (and no errors) when ``verify`` is False."""
    h, w = (int(v) for v in sample.shape[-2:])
    errors: Dict[str, Dict[str, float]] = {}
    verify_seconds = 0.0
    verified_sizes = [[h, w]]
    if verify:
        batches = [sample]
        if dynamic:
            divisor = int(model.size_divisibility)
            h2, w2 = h + 2 * divisor, w + divisor
            batches.append(sample_batch(model, (h2, w2), seed=1))
            verified_sizes.append([h2, w2])
        t1 = time.perf_counter()
        errors = verify_onnx(onnx_path, wrapper, batches, names)
        verify_seconds = time.perf_counter() - t1
    return {
        "runtime": "onnxruntime CPUExecutionProvider",
        "sizes": verified_sizes if verify else [],
        "rel_tolerance": rel_tolerance,
        "seconds": round(verify_seconds, 3),
        "errors": errors,
        "passed": not _off(errors, rel_tolerance) if verify else None,
    }


def _off(errors: Dict[str, Dict[str, float]], rel_tolerance: float) -> Dict[str, Dict[str, float]]:
    """The outputs whose error is not within ``rel_tolerance`` of their scale (NaN included)."""
    return {n: e for n, e in errors.items() if not e["max_rel"] <= rel_tolerance}


def _raise_if_off(onnx_path: Path, errors: Dict[str, Dict[str, float]], rel_tolerance: float) -> None:
    """ExportError naming the worst output when any is off eager by more than ``rel_tolerance``."""
    bad = _off(errors, rel_tolerance)
    if bad:
        worst = max(bad, key=lambda n: bad[n]["max_rel"])
        e = bad[worst]
        raise ExportError(f"{onnx_path}: onnxruntime differs from eager PyTorch in {len(bad)} output(s); worst "
                          f"{worst}: max abs {e['max_abs']:.3g} = {e['max_rel']:.3g} of its scale "
                          f"{e['scale']:.3g} > {rel_tolerance:g} (see {META_FILE})")


def _source_record(config: Any, config_name: Optional[str], ckpt_path: Optional[Path], sha: Optional[str]
                   ) -> Dict[str, Any]:
    """model.json's record of what the graph was made from: config, network keys, checkpoint."""
    record = network_record(config) if config is not None else None
    return {
        "config": str(config_name) if config_name is not None else None,
        "network": record,
        "network_sha256": network_digest(record) if record is not None else None,
        "checkpoint": str(ckpt_path) if ckpt_path else None,
        "checkpoint_sha256": sha,
    }


def _graph_record(model: BlendMask, levels: List[str], names: List[str], dynamic: bool, trace_size: Tuple[int, int],
                  lazy_attention: bool, shapes: Dict[str, List[int]], opset: int) -> Dict[str, Any]:
    """model.json's record of the graph: its input (normalisation, sizes), outputs, opset, exporter, versions."""
    h, w = int(trace_size[0]), int(trace_size[1])
    return {
        "input_name": INPUT_NAME,
        "input_format": model.input_format,
        "dynamic": bool(dynamic),
        "input_size": None if dynamic else [h, w],
        "trace_size": [h, w],
        "size_divisibility": int(model.size_divisibility),
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten().tolist()],
        "pixel_std": [float(v) for v in model.pixel_std.flatten().tolist()],
        "levels": levels,
        "strides": list(model.proposal_generator.settings.strides),
        "output_names": names,
        "lazy_attention": bool(lazy_attention),
        "output_shapes_at_trace_size": shapes,
        "opset": int(opset),
        "exporter": f"{EXPORTER} (torch.onnx.export dynamo=False)",
        "versions": _versions(),
    }
