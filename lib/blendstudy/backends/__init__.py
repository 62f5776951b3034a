"""BlendMask's dense part (backbone + FPN + FCOS head with attention + basis module) as an offline model:
export to ONNX (export_onnx), serve it through onnxruntime / OpenVINO / Ascend om (load_backend), and
the helpers around it (ATC command, SoC version, int8 quantization). A backend plugs into the pipeline
where the three model calls were: `head, bases = backend(batch)`."""

from blendstudy.backends.ascend import atc_command, parse_npu_smi, soc_version
from blendstudy.backends.common import BackendError, ExportError, output_names
from blendstudy.backends.engines import (
    BACKENDS,
    DenseBackend,
    OmBackend,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    load_backend,
    ort_providers,
)
from blendstudy.backends.export import REL_TOLERANCE, DenseWrapper, ExportResult, export_onnx
from blendstudy.backends.quantize import quantize_onnx
from blendstudy.backends.shapes import PerShapeBackend

__all__ = [
    "BACKENDS", "REL_TOLERANCE", "BackendError", "DenseBackend", "DenseWrapper", "ExportError", "ExportResult",
    "OmBackend", "OnnxRuntimeBackend", "OpenVINOBackend", "PerShapeBackend", "atc_command", "export_onnx",
    "load_backend", "ort_providers", "output_names", "parse_npu_smi", "quantize_onnx", "soc_version",
]
