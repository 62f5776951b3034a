"""int8 post-training static quantization of an exported dense part (onnxruntime.quantization).

Calibration data are batches the caller prepares exactly as the pipeline does (normalised, padded,
(1, 3, H, W) float32) from TRAINING-split images: calibrating on evaluation images would leak them
into the measured accuracy. The result is a new export directory (model.onnx in QDQ format + model.json
with a "quantization" record) that load_backend serves like any other; its errors against the fp32
graph are recorded, not enforced (int8 is expected to move the outputs)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from blendstudy.backends.common import (
    INPUT_NAME,
    META_FILE,
    ONNX_FILE,
    ExportError,
    PathLike,
    fit_batch,
    read_meta,
    scale_errors,
    write_meta,
)

Batch = Union[np.ndarray, torch.Tensor]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: get_next() -> {input: array} or None."""

    def __init__(self, batches: List[np.ndarray]):
        self._batches = batches
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        b = next(self._it, None)
        return None if b is None else {INPUT_NAME: b}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def quantize_onnx(model_dir: PathLike, calib_batches: Sequence[Batch], out_dir: PathLike,
                  per_channel: bool = True, method: str = "minmax") -> Path:
    """Quantize `model_dir`'s model.onnx to int8 (QDQ, static activations calibrated on `calib_batches`)
    into `out_dir`; returns `out_dir`. method: "minmax", "entropy" or "percentile"."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ExportError("onnxruntime.quantization is not available: pip install onnxruntime") from None
    src = Path(model_dir)
    meta = read_meta(src)
    if meta.get("quantization"):
        raise ExportError(f"{src / META_FILE}: already quantized; quantize the fp32 export instead")
    if not calib_batches:
        raise ExportError("quantize_onnx needs at least one calibration batch (training-split images)")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ExportError(f"calibration method {method!r}: choose one of {', '.join(methods)}")
    fixed = None if meta.get("dynamic") else meta.get("input_size")
    arrays = []
    for b in calib_batches:
        t = torch.as_tensor(b)
        arrays.append(np.ascontiguousarray(fit_batch(t, fixed, int(meta["size_divisibility"]),
                                                     "calibration batch").numpy()))
    out = Path(out_dir)
    if out.resolve() == src.resolve():
        raise ExportError(f"{out}: the quantized model needs its own directory, not the fp32 export's")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        try:
            quant_pre_process(str(src / ONNX_FILE), str(prepped), skip_symbolic_shape=True)
        except Exception:  # the pre-processing (shape inference, folding) is an optimisation only
            shutil.copyfile(src / ONNX_FILE, prepped)
        quantize_static(str(prepped), str(out / ONNX_FILE), _Reader(arrays), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        calibrate_method=methods[method])
    seconds = time.perf_counter() - t0

    # errors of int8 against fp32 on the first calibration batch, for the record
    names = list(meta["output_names"])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(str(src / ONNX_FILE), opts, providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(out / ONNX_FILE), opts, providers=["CPUExecutionProvider"])
    r = ref.run(names, {INPUT_NAME: arrays[0]})
    g = q.run(names, {INPUT_NAME: arrays[0]})
    errors = {n: scale_errors(torch.from_numpy(a), torch.from_numpy(b)) for n, a, b in zip(names, r, g)}
    new: Dict[str, Any] = dict(meta)
    new["quantization"] = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                           "activations": "int8", "weights": "int8", "per_channel": bool(per_channel),
                           "calibration": method, "calibration_batches": len(arrays),
                           "calibration_sizes": sorted({tuple(a.shape[2:]) for a in arrays}),
                           "source": str(src), "seconds": round(seconds, 3),
                           "errors_vs_fp32": errors, "onnxruntime": ort.__version__}
    write_meta(out, new)
    return out
