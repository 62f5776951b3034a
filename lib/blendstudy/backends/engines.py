"""Engines that serve the exported dense part to the pipeline: `backend(batch) -> (HeadOutputs, bases)`.

onnxruntime (CPU; CUDA / TensorRT / CANN execution providers when asked for and installed), OpenVINO
(compile_model on CPU or GPU) and Ascend .om through ais_bench's InferSession. `load_backend` checks the
model directory first: its model.json must exist, have passed verification, and match the config's
network and the checkpoint's sha256 when they are given; each failure is one BackendError line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from blendstudy.backends.ascend import atc_command
from blendstudy.backends.common import (
    EXPORT_HINT,
    INPUT_NAME,
    META_FILE,
    OM_FILE,
    ONNX_FILE,
    BackendError,
    PathLike,
    assemble,
    fit_batch,
    network_record,
    read_meta,
)
from blendstudy.model.fcos import HeadOutputs

BACKENDS = ("onnxruntime", "openvino", "om")
_ALIASES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "openvino": "openvino", "ov": "openvino",
            "om": "om", "ascend": "om"}


def _device_index(device: str) -> int:
    _, _, idx = device.partition(":")
    try:
        return int(idx) if idx else 0
    except ValueError:
        raise BackendError(f"device {device!r}: the index after ':' must be an integer") from None


class DenseBackend:
    """The dense part of BlendMask behind an engine. Callable: (1, 3, H, W) float32 batch ->
    (HeadOutputs, bases) as torch float32 tensors on the batch's device.

    name: the engine; model_dir: the export directory; device: as asked ("cpu", "cuda:0", "npu:0");
    providers: what actually runs it (execution providers / OpenVINO device / NPU id);
    session_seconds: time to create (compile, load) the session; meta: model.json."""

    name = "dense"

    def __init__(self, model_dir: PathLike, meta: Mapping[str, Any], device: str):
        self.model_dir = Path(model_dir)
        self.meta = dict(meta)
        self.device = device
        self.levels: List[str] = list(meta["levels"])
        self.output_names: List[str] = list(meta["output_names"])
        size = meta.get("input_size")
        self.input_size: Optional[Tuple[int, int]] = None if meta.get("dynamic") else (int(size[0]), int(size[1]))
        self.divisor = int(meta.get("size_divisibility") or 0)
        self.providers: List[str] = []
        self.session_seconds = 0.0

    @property
    def dynamic(self) -> bool:
        return self.input_size is None

    def run_arrays(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        """{output name: array} for one (1, 3, H, W) float32 array of the model's input size."""
        raise NotImplementedError

    def __call__(self, batch: torch.Tensor) -> Tuple[HeadOutputs, torch.Tensor]:
        x = fit_batch(batch, self.input_size, self.divisor, f"{self.name} backend {self.model_dir}")
        arrays = self.run_arrays(np.ascontiguousarray(x.detach().cpu().numpy()))
        outs = {}
        for name in self.output_names:
            t = torch.from_numpy(np.asarray(arrays[name], dtype=np.float32))
            outs[name] = t if batch.device.type == "cpu" else t.to(batch.device)
        return assemble(outs, self.levels)

    def describe(self) -> Dict[str, Any]:
        m = self.meta
        return {"backend": self.name, "model_dir": str(self.model_dir), "device": self.device,
                "providers": list(self.providers), "session_seconds": round(self.session_seconds, 3),
                "dynamic": self.dynamic, "input_size": list(self.input_size) if self.input_size else None,
                "config": m.get("config"), "checkpoint_sha256": m.get("checkpoint_sha256"),
                "exporter": m.get("exporter"), "opset": m.get("opset"), "runtime_version": self.engine_version()}

    def engine_version(self) -> Optional[str]:
        return None

    def close(self) -> None:
        """Release the session (the NPU's memory for om); the backend is unusable afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_dir} on {self.providers or self.device}>"


def _model_file(model_dir: Path, meta: Mapping[str, Any]) -> Path:
    path = model_dir / str(meta.get("model_file") or meta.get("onnx") or ONNX_FILE)
    if not path.is_file():
        raise BackendError(f"{path}: missing (model.json is there, the graph is not): re-export with "
                           f"`{EXPORT_HINT} --out {model_dir}`")
    return path


# ---- onnxruntime -----------------------------------------------------------------------------
def ort_providers(device: str, available: Sequence[str]) -> List[Tuple[str, Dict[str, Any]]]:
    """Execution providers (with options) for `device`: "cpu"; "cuda[:N]"; "tensorrt[:N]" (TensorRT, then
    CUDA); "npu[:N]" / "cann[:N]" (Ascend CANN); "auto" (CUDA, else CANN, else CPU). CPU is always last,
    for the ops a provider leaves to it. BackendError when the provider asked for is not installed."""
    kind = device.split(":")[0].lower()
    cpu = ("CPUExecutionProvider", {})
    if kind == "auto":
        for ep, k in (("CUDAExecutionProvider", "cuda"), ("CANNExecutionProvider", "npu")):
            if ep in available:
                return ort_providers(k + device[len("auto"):], available)
        return [cpu]
    if kind == "cpu":
        return [cpu]
    wanted = {"cuda": ["CUDAExecutionProvider"], "gpu": ["CUDAExecutionProvider"],
              "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
              "trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
              "npu": ["CANNExecutionProvider"], "cann": ["CANNExecutionProvider"]}.get(kind)
    if wanted is None:
        raise BackendError(f"onnxruntime: unknown device {device!r} (cpu, cuda[:N], tensorrt[:N], npu[:N], auto)")
    missing = [ep for ep in wanted if ep not in available]
    if missing:
        pkg = "onnxruntime-cann" if kind in ("npu", "cann") else "onnxruntime-gpu"
        raise BackendError(f"onnxruntime has no {missing[0]} (available: {', '.join(available)}): "
                           f"install {pkg} instead of onnxruntime for --device {device}")
    idx = _device_index(device)
    return [(ep, {"device_id": idx}) for ep in wanted] + [cpu]


class OnnxRuntimeBackend(DenseBackend):
    name = "onnxruntime"

    def __init__(self, model_dir: PathLike, meta: Mapping[str, Any], device: str = "cpu",
                 threads: Optional[int] = None):
        super().__init__(model_dir, meta, device)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed: pip install onnxruntime "
                               "(pinned in env/requirements-cpu.txt)") from None
        self._ort = ort
        path = _model_file(self.model_dir, meta)
        providers = ort_providers(device, ort.get_available_providers())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        t0 = time.perf_counter()
        self.session = ort.InferenceSession(str(path), opts, providers=[p for p, _ in providers],
                                            provider_options=[o for _, o in providers])
        self.session_seconds = time.perf_counter() - t0
        self.providers = list(self.session.get_providers())
        got = [o.name for o in self.session.get_outputs()]
        if sorted(got) != sorted(self.output_names):
            raise BackendError(f"{path}: outputs {got[:3]}... do not match {META_FILE}'s output_names: re-export "
                               f"with `{EXPORT_HINT} --out {self.model_dir}`")

    def run_arrays(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, {INPUT_NAME: images})))

    def engine_version(self) -> Optional[str]:
        return str(self._ort.__version__)


# ---- OpenVINO --------------------------------------------------------------------------------
def _openvino_core():
    try:
        import openvino as ov

        return ov, ov.Core()
    except (ImportError, AttributeError):
        pass
    try:
        import openvino.runtime as ov  # OpenVINO < 2023.1

        return ov, ov.Core()
    except ImportError:
        raise BackendError("openvino is not installed: pip install openvino (pinned in env/requirements-cpu.txt)"
                           ) from None


def _openvino_target(core: Any, device: str) -> str:
    """OpenVINO's device name for ``device`` ("cpu" -> CPU, "gpu:1" -> GPU.1); BackendError when absent."""
    kind = device.split(":")[0].lower()
    if kind in ("cpu", "gpu", "auto"):
        target = kind.upper() + (f".{_device_index(device)}" if kind == "gpu" and ":" in device else "")
    else:
        target = device
    available = list(core.available_devices)
    if target != "AUTO" and target not in available and target.split(".")[0] not in available \
            and not any(d.startswith(target + ".") for d in available):
        raise BackendError(f"openvino has no device {target} (available: {', '.join(available)}): "
                           "pick one of those with --device")
    return target


def openvino_properties(target: str, properties: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """compile_model properties: the latency hint, and on the CPU fp32 as exported (the CPU plugin
    would otherwise run fp32 layers in bf16 on CPUs with AMX / AVX512-BF16; int8 layers stay int8)."""
    props: Dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if target == "CPU":
        props["INFERENCE_PRECISION_HINT"] = "f32"
    props.update(properties or {})
    return props


class OpenVINOBackend(DenseBackend):
    name = "openvino"

    def __init__(self, model_dir: PathLike, meta: Mapping[str, Any], device: str = "cpu",
                 properties: Optional[Mapping[str, Any]] = None, compiled: Any = None):
        """``compiled``: an OpenVINO CompiledModel of this export to serve as it is (e.g. one NNCF's
        accuracy control is validating) instead of compiling the model file."""
        super().__init__(model_dir, meta, device)
        ov, core = _openvino_core()
        self._ov = ov
        path = _model_file(self.model_dir, meta) if compiled is None else self.model_dir
        t0 = time.perf_counter()
        if compiled is None:
            target = _openvino_target(core, device)
            compiled = core.compile_model(str(path), target, openvino_properties(target, properties))
        self.compiled = compiled
        self.request = self.compiled.create_infer_request()
        self.session_seconds = time.perf_counter() - t0
        self.providers = [str(d) for d in self.compiled.get_property("EXECUTION_DEVICES")]
        try:  # the precision its floating-point layers run in (f32 as exported, or bf16 when asked)
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "f32", "bf16"
            self.precision = str(hint.get_type_name() if hasattr(hint, "get_type_name") else hint)
        except Exception:  # a device plugin without the property
            self.precision = None
        self._outputs = []
        for port in self.compiled.outputs:
            names = set(port.get_names())
            match = [n for n in self.output_names if n in names]
            if not match:
                raise BackendError(f"{path}: OpenVINO output {port.get_any_name()} matches none of {META_FILE}'s "
                                   f"output_names: re-export with `{EXPORT_HINT} --out {self.model_dir}`")
            self._outputs.append((match[0], port))

    def run_arrays(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        res = self.request.infer({INPUT_NAME: images})
        return {name: np.array(res[port], copy=True) for name, port in self._outputs}

    def engine_version(self) -> Optional[str]:
        return str(self._ov.get_version())


# ---- Ascend .om through ais_bench ------------------------------------------------------------
class OmBackend(DenseBackend):
    """An ATC-compiled model.om beside model.json, run by ais_bench.infer.interface.InferSession
    (device_id, om path); `infer([images], mode="static")` returns the outputs in the om's order, named
    "<node>:<index>:<onnx output name>" or plainly. Static input shape only (ATC --input_shape)."""

    name = "om"

    def __init__(self, model_dir: PathLike, meta: Mapping[str, Any], device: str = "npu:0"):
        super().__init__(model_dir, meta, device)
        kind = device.split(":")[0].lower()
        if kind not in ("npu", "ascend"):
            raise BackendError(f"the om backend runs on an Ascend NPU: --device must be npu or npu:N, not {device!r}")
        om = self.model_dir / OM_FILE
        if not om.is_file():
            shape = meta.get("input_size") or meta.get("trace_size") or [0, 0]
            cmd = " ".join(atc_command(self.model_dir / ONNX_FILE, self.model_dir / "model", "<soc_version>", shape))
            raise BackendError(f"{om}: missing: compile the export with `{cmd}` on the Ascend host")
        try:
            from ais_bench.infer.interface import InferSession
        except ImportError:
            raise BackendError("ais_bench is not installed: install the ais_bench and aclruntime wheels "
                               "(Ascend ait benchmark) on the NPU host") from None
        idx = _device_index(device)
        t0 = time.perf_counter()
        self.session = InferSession(idx, str(om))
        self.session_seconds = time.perf_counter() - t0
        self.providers = [f"npu:{idx}"]
        inputs = self.session.get_inputs()
        shape = [int(d) for d in inputs[0].shape]
        if len(inputs) != 1 or len(shape) != 4 or any(d <= 0 for d in shape):
            raise BackendError(f"{om}: input {[list(i.shape) for i in inputs]} is not one fixed (1, 3, H, W) shape: "
                               "compile it with a fixed ATC --input_shape")
        self.input_size = (shape[2], shape[3])
        descs = self.session.get_outputs()
        keys = [str(d.name).rsplit(":", 1)[-1] for d in descs]
        if sorted(keys) == sorted(self.output_names):
            order = keys
        elif len(descs) == len(self.output_names):
            order = list(self.output_names)  # ATC keeps the ONNX output order
        else:
            raise BackendError(f"{om}: {len(descs)} outputs, {META_FILE} lists {len(self.output_names)}: "
                               "compile the om from this directory's model.onnx")
        self._outputs = [(name, [int(d) for d in desc.shape]) for name, desc in zip(order, descs)]

    def run_arrays(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        arrays = self.session.infer([images], mode="static")
        out = {}
        for (name, shape), a in zip(self._outputs, arrays):
            a = np.asarray(a)
            if list(a.shape) != shape and a.size == int(np.prod(shape)):
                a = a.reshape(shape)
            out[name] = a.astype(np.float32, copy=False)
        return out

    def close(self) -> None:
        free = getattr(self.session, "free_resource", None)
        if free is not None:
            free()

    def engine_version(self) -> Optional[str]:
        try:
            from importlib.metadata import version

            return version("ais_bench")
        except Exception:
            return None


# ---- the one entry point ---------------------------------------------------------------------
def _short(sha: Optional[str]) -> str:
    return sha[:12] + ".." if sha else "none (random weights)"


def _check_config(model_dir: Path, meta: Mapping[str, Any], config: Any) -> None:
    from blendstudy.config import load_config

    where = model_dir / META_FILE
    cfg = config if isinstance(config, Mapping) else load_config(str(config), check=False)
    label = meta.get("config") or "an unrecorded config"
    given = str(config) if not isinstance(config, Mapping) else "the given config"
    recorded = meta.get("network")
    if not recorded:
        raise BackendError(f"{where}: records no config network, cannot check it against {given}: re-export with "
                           f"`{EXPORT_HINT} --config {given} --out {model_dir}`")
    now = network_record(cfg)
    diff = [k for k in now if now[k] != recorded.get(k)]
    if diff:
        k = diff[0]
        more = f" (+{len(diff) - 1} more keys)" if len(diff) > 1 else ""
        raise BackendError(f"{where}: exported from {label} but {given} differs in {k} ({recorded.get(k)!r} there, "
                           f"{now[k]!r} here){more}: re-export with `{EXPORT_HINT} --config {given} --out {model_dir}`")


def _check_checkpoint(model_dir: Path, meta: Mapping[str, Any], checkpoint: str) -> None:
    from blendstudy.checkpoint import file_sha256
    from blendstudy.loading import resolve_weights

    path = resolve_weights(checkpoint)
    if path is not None and not Path(path).is_file():
        raise BackendError(f"{path}: no such checkpoint file (--weights)")
    sha = file_sha256(path) if path else None
    recorded = meta.get("checkpoint_sha256")
    if sha != recorded:
        raise BackendError(f"{model_dir / META_FILE}: exported from checkpoint sha256 {_short(recorded)} but --weights "
                           f"{checkpoint} is {_short(sha)}: re-export with `{EXPORT_HINT} --weights {checkpoint} "
                           f"--out {model_dir}`")


def load_backend(name: str, model_dir: PathLike, device: Optional[str] = None, config: Any = None,
                 checkpoint: Optional[str] = None, **options: Any) -> DenseBackend:
    """The dense part exported in `model_dir`, served by engine `name` ("onnxruntime", "openvino", "om").

    device: "cpu" (default for onnxruntime/openvino), "cuda[:N]", "tensorrt[:N]", "npu[:N]" (default for om).
    config: a config name/path or Config; its network keys must match the export's (else stale).
    checkpoint: a checkpoint path or shipped name whose sha256 must match the export's; "random" asserts an
    export with random weights; None skips the check. options: threads= (onnxruntime), properties=
    (OpenVINO compile properties). Raises BackendError with one line naming the problem and the fix."""
    kind = _ALIASES.get(str(name).lower())
    if kind is None:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    verification = meta.get("verification") or {}
    if verification.get("passed") is False:
        raise BackendError(f"{model_dir / META_FILE}: the export failed its verification against eager PyTorch "
                           f"(errors in {META_FILE}): fix the model and re-export")
    if config is not None:
        _check_config(model_dir, meta, config)
    if checkpoint is not None:
        _check_checkpoint(model_dir, meta, checkpoint)
    if kind != "openvino" and str(meta.get("model_file") or "").endswith(".xml"):
        raise BackendError(f"{model_dir / META_FILE}: an OpenVINO IR (NNCF int8), not an ONNX graph: run it with the "
                           "openvino backend")
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(model_dir, meta, device or "cpu", **options)
    if kind == "openvino":
        return OpenVINOBackend(model_dir, meta, device or "cpu", **options)
    return OmBackend(model_dir, meta, device or "npu:0", **options)
