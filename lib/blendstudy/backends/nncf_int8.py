"""int8 through OpenVINO's post-training quantization (NNCF): plain `nncf.quantize`, or
`nncf.quantize_with_accuracy_control` with the caller's metric, which keeps in floating point the
layers whose quantization costs the metric most until the drop is within ``max_drop``.

The input is a dynamic-shape export (model.onnx + model.json); the output an OpenVINO IR directory
(model.xml/.bin + model.json with a "quantization" record) that load_backend("openvino", ...) serves.
The quantization parameters do not depend on the input size, so `specialize` then writes a copy of
the quantized IR for each padded size with its input shape fixed (static per padded size, as P4's
graphs). Calibration batches are prepared as the pipeline prepares them (normalised, padded,
(1, 3, H, W) float32) from TRAINING-split images, never the evaluation images.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from blendstudy.backends.common import INPUT_NAME, META_FILE, ExportError, PathLike, read_meta, write_meta
from blendstudy.backends.engines import _model_file, _openvino_core, openvino_properties

__all__ = ["IR_FILE", "calibration_batches", "compiled_layer_precisions", "quantize_openvino", "specialize"]

IR_FILE = "model.xml"


def _nncf():
    try:
        import nncf
    except ImportError:
        raise ExportError("nncf is not installed: pip install nncf (pinned in env/requirements-cpu.txt)") from None
    return nncf


def calibration_batches(prepare: Callable[[np.ndarray], Tuple[Any, Any]], images: Iterable[np.ndarray]
                        ) -> List[np.ndarray]:
    """The network inputs int8 is calibrated on: each image as ``prepare`` (the host pipeline's
    Pipeline.prepare: resized, normalised, padded) makes it, a (1, 3, H, W) float32 array."""
    return [np.ascontiguousarray(prepare(image)[0].detach().cpu().numpy(), dtype=np.float32) for image in images]


def _dataset(nncf: Any, batches: Sequence[np.ndarray]) -> Any:
    return nncf.Dataset([np.ascontiguousarray(b, dtype=np.float32) for b in batches], lambda b: {INPUT_NAME: b})


def _quantize(nncf: Any, model: Any, calib: Any, n: int, validate: Optional[Callable[[Any, List[Any]], float]],
              validation_items: Sequence[Any], max_drop: float, ranking_subset: int, iterations: int) -> Any:
    if validate is None:
        return nncf.quantize(model, calib, subset_size=n)
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    restorer = AdvancedAccuracyRestorerParameters(ranking_subset_size=ranking_subset, max_num_iterations=iterations)
    validation = nncf.Dataset(list(validation_items))
    return nncf.quantize_with_accuracy_control(
        model, calib, validation, lambda compiled, items: (float(validate(compiled, list(items))), None),
        max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=n,
        advanced_accuracy_restorer_parameters=restorer)


def compiled_layer_precisions(compiled: Any) -> Tuple[Dict[str, int], List[str]]:
    """What the CPU plugin runs: {"<runtime precision> <kernel>": count} over the convolutions and
    matmuls of a compiled model (e.g. "u8 jit_avx2_I8", "f32 brgconv_avx512"), and the names of
    those that run in floating point (kept fp32 by accuracy control, or never quantized)."""
    kernels: Dict[str, int] = {}
    fp: List[str] = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind not in ("Convolution", "GroupConvolution", "MatMul", "FullyConnected", "Deconvolution"):
            continue
        prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        kernel = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
        kernels[f"{prec} {kernel}"] = kernels.get(f"{prec} {kernel}", 0) + 1
        if prec.startswith(("f", "bf")):
            fp.append(op.get_friendly_name())
    return kernels, fp


def quantize_openvino(model_dir: PathLike, calib_batches: Sequence[np.ndarray], out_dir: PathLike,
                      validate: Optional[Callable[[Any, List[Any]], float]] = None,
                      validation_items: Sequence[Any] = (), max_drop: float = 0.3, ranking_subset: int = 8,
                      iterations: int = 8, metric: str = "") -> Path:
    """Quantize ``model_dir``'s dynamic export to int8 with NNCF into ``out_dir`` (an OpenVINO IR).
    Plain PTQ when ``validate`` is None; else accuracy control: ``validate(compiled_model, items)``
    returns the caller's metric (higher is better, named ``metric``) over ``validation_items``, and
    at most ``max_drop`` (absolute, in the metric's units) is given up. Returns ``out_dir``."""
    nncf = _nncf()
    ov, core = _openvino_core()
    src = Path(model_dir)
    meta = read_meta(src)
    if meta.get("quantization"):
        raise ExportError(f"{src / META_FILE}: already quantized; quantize the fp32 export instead")
    if not meta.get("dynamic"):
        raise ExportError(f"{src / META_FILE}: NNCF quantizes the dynamic export (the static copies come from it)")
    if not calib_batches:
        raise ExportError("quantize_openvino needs at least one calibration batch (training-split images)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = core.read_model(str(_model_file(src, meta)))
    calib = _dataset(nncf, calib_batches)
    q = _quantize(nncf, model, calib, len(calib_batches), validate, validation_items, max_drop, ranking_subset,
                  iterations)
    ov.save_model(q, str(out / IR_FILE), compress_to_fp16=False)
    seconds = time.perf_counter() - t0
    kernels, fp = compiled_layer_precisions(core.compile_model(q, "CPU", openvino_properties("CPU")))
    new: Dict[str, Any] = {**meta, "model_file": IR_FILE, "onnx": None}
    new["quantization"] = {
        "tool": "nncf.quantize_with_accuracy_control" if validate else "nncf.quantize", "nncf": nncf.__version__,
        "openvino": ov.get_version(), "activations": "int8", "weights": "int8",
        "calibration_batches": len(calib_batches),
        "calibration_sizes": sorted({tuple(b.shape[2:]) for b in calib_batches}),
        "metric": metric or None, "max_drop": max_drop if validate else None, "source": str(src),
        "seconds": round(seconds, 3), "cpu_kernels": kernels, "kept_fp32": fp}
    write_meta(out, new)
    return out


def specialize(ir_dir: PathLike, size: Tuple[int, int], out_dir: PathLike) -> Path:
    """A copy of the quantized IR in ``ir_dir`` with its input fixed to (1, 3, *size)."""
    ov, core = _openvino_core()
    src, out = Path(ir_dir), Path(out_dir)
    meta = read_meta(src)
    model = core.read_model(str(_model_file(src, meta)))
    model.reshape({INPUT_NAME: [1, 3, int(size[0]), int(size[1])]})
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ov.save_model(model, str(out / IR_FILE), compress_to_fp16=False)
    write_meta(out, {**meta, "dynamic": False, "input_size": [int(size[0]), int(size[1])],
                     "specialized_from": str(src)})
    return out
