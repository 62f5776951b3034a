"""Everything that differs between npu, cuda and cpu lives here.

The rest of the code says `dev = resolve_device("auto")`, `synchronize(dev)`, `peak_memory(dev)`
and never branches on the device type itself. NPU facts cited from ../shared/NPU_NOTES.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from typing import Any, Dict, Optional

import torch


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide."""


@lru_cache(maxsize=1)
def npu_import_error() -> Optional[str]:
    """None when torch_npu imports, else why not. Any failure means "no npu" (without CANN the
    import raises ImportError: libhccl.so ...), never a crash."""
    try:
        import torch_npu  # noqa: F401  (registers the 'npu' device and torch.npu)
    except Exception as exc:  # ImportError, OSError, RuntimeError from a broken CANN alike
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def npu_available() -> bool:
    if npu_import_error() is not None:
        return False
    try:
        return bool(torch.npu.is_available())  # type: ignore[attr-defined]
    except Exception:
        return False


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` = npu if torch_npu imports and has a device, else cuda, else cpu.
    Explicit `cpu`, `cuda[:N]`, `npu[:N]`; an unavailable one raises DeviceError."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if npu_available():
            return torch.device("npu", 0)
        if cuda_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind not in ("cpu", "cuda", "npu"):
        raise DeviceError(f"unknown device {spec!r}: use auto, cpu, cuda[:N] or npu[:N]")
    if index and not index.isdigit():
        raise DeviceError(f"bad device index in {spec!r}")
    if kind == "cpu":
        return torch.device("cpu")
    idx = int(index) if index else 0
    if kind == "cuda":
        if not cuda_available():
            raise DeviceError(f"device {spec!r} requested but CUDA is not available on this machine")
        count = torch.cuda.device_count()
    else:
        if not npu_available():
            why = npu_import_error() or "torch.npu.is_available() is False"
            raise DeviceError(f"device {spec!r} requested but no Ascend NPU is usable ({why})")
        count = torch.npu.device_count()  # type: ignore[attr-defined]
    if idx >= count:
        raise DeviceError(f"device {spec!r} requested but only {count} {kind} device(s) exist")
    return torch.device(kind, idx)


def _backend(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.cuda
    if device.type == "npu":
        return torch.npu  # type: ignore[attr-defined]
    return None


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on `device` (no-op on cpu)."""
    be = _backend(device)
    if be is not None:
        be.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    be = _backend(device)
    if be is not None:
        be.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> Optional[float]:
    """Peak device memory allocated since the last reset, in MiB; None where not reported (cpu)."""
    be = _backend(device)
    if be is None:
        return None
    return float(be.max_memory_allocated(device)) / 2**20


def device_name(device: torch.device) -> str:
    be = _backend(device)
    if be is None:
        return cpu_model()
    return str(be.get_device_name(device.index or 0))


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_compile_backend(device: torch.device) -> str:
    """torch.compile backend for the device: "npu" on Ascend (torchair's GE graph, registered once
    torch_npu is imported; inductor is not the NPU's backend), inductor elsewhere."""
    return "npu" if device.type == "npu" else "inductor"


def set_recompile_limit(limit: int) -> str:
    """Raise dynamo's per-code recompile limit; the knob is `recompile_limit` in newer torch and
    `cache_size_limit` before (~2.6). Returns the name that was set."""
    import torch._dynamo.config as dcfg

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, name):
            setattr(dcfg, name, int(limit))
            return name
    raise RuntimeError("this torch has neither recompile_limit nor cache_size_limit")


def cann_version() -> Optional[str]:
    """CANN toolkit version from its version file, None where CANN is absent."""
    root = os.environ.get("ASCEND_TOOLKIT_HOME", "/usr/local/Ascend/ascend-toolkit/latest")
    for rel in ("version.cfg", "compiler/version.info", "arm64-linux/ascend_toolkit_install.info",
                "x86_64-linux/ascend_toolkit_install.info"):
        path = os.path.join(root, rel)
        try:
            with open(path) as fh:
                for line in fh:
                    if "version" in line.lower() and "=" in line:
                        return line.split("=", 1)[1].strip().strip('"[]')
        except OSError:
            continue
    return None


def _command_first_lines(cmd: list, n: int = 12) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return "\n".join(out.stdout.splitlines()[:n])


def code_fingerprint() -> str:
    """sha256 (16 hex digits) over the blendstudy package's Python sources and shipped configs,
    by relative path: changes whenever the code that makes predictions changes, committed or not
    (p5_eval resumes only predictions made by the same code)."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def environment_info(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """What a results JSON records about where it ran."""
    import sys

    info: Dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_npu": None,
        "torch_npu_error": npu_import_error(),
        "cann": cann_version(),
        "npu_smi": None,
        "cuda": torch.version.cuda,
        "nvidia_smi": None,
        "env": {k: os.environ[k] for k in ("TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "OMP_NUM_THREADS",
                                          "ASCEND_RT_VISIBLE_DEVICES", "ASCEND_LAUNCH_BLOCKING",
                                          "CUDA_VISIBLE_DEVICES") if k in os.environ},
    }
    if info["torch_npu_error"] is None:
        import torch_npu

        info["torch_npu"] = getattr(torch_npu, "__version__", "unknown")
        info["npu_smi"] = _command_first_lines(["npu-smi", "info"])
    if cuda_available():
        info["nvidia_smi"] = _command_first_lines(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if device is not None:
        info["device"] = str(device)
        info["device_name"] = device_name(device)
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        info["git_commit"] = commit.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"], capture_output=True,
                               text=True, timeout=5)
        info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info
