"""The device layer: finding, starting and describing an npu, cuda or cpu device, and what each
cannot run.

The rest of the code says `dev = resolve_device("auto")`, `synchronize(dev)`, `peak_memory_mb(dev)`;
which optimization switches a device cannot run, and why, is said here once (`unsupported_switch`).
Where a computation itself takes a different path on a device type it says so where it computes
(e.g. the CPU's uint8 resize in blendstudy.pipeline, the half dtype in blendstudy.optimize, the cuda
flags of blendstudy.runtime, the kernels of blendstudy.ops). NPU facts are cited from docs/npu.md.

Here: device choice (resolve_device, activate), sync, memory, names, the switches a device cannot
run, the compile backend, and environment_info (what a results JSON records about where it ran).
The rest lives beside it and is re-exported here, so ``device.<name>`` reaches it all:
blendstudy.torch_npu_probe (does torch_npu load, its version, the task queue in force),
blendstudy.ascend_host (CANN, npu-smi, the driver, cores and NUMA, CPU_AFFINITY_CONF),
blendstudy.provenance (code fingerprint, git commit, environment lock, effective_runtime) and
blendstudy.recompile_limit (dynamo's recompile limit).
"""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence

import torch

from blendstudy.ascend_host import (
    _command_first_lines,
    allowed_cores,
    cann_version,
    cpu_affinity_conf,
    device_bus_id,
    device_numa_node,
    driver_version,
    format_cores,
    local_cores,
    npu_smi,
    numa_nodes,
    parse_cores,
    parse_npu_smi,
    parse_version_cfg,
    parse_version_info,
    sysfs_root,
)
from blendstudy.provenance import (
    LOCK_DIR,
    LOCK_RECORD,
    RUNTIME_ENV,
    code_fingerprint,
    effective_runtime,
    emulated,
    git_state,
    installed_lock,
)
from blendstudy.recompile_limit import recompile_limit_knob, set_recompile_limit, under_recompile_limit
from blendstudy.torch_npu_probe import (
    CANN_SET_ENV,
    npu_import_error,
    npu_load_problem,
    task_queue_in_force,
    torch_npu_installed,
    torch_npu_version,
)

__all__ = [
    # device choice, sync, memory (here)
    "DeviceError", "activate", "cpu_capability", "cpu_count", "cpu_model", "cuda_available", "current_index",
    "default_compile_backend", "device_name", "environment_info", "npu_available", "peak_memory_mb",
    "reset_peak_memory", "resolve_device", "synchronize", "unsupported_switch",
    # torch_npu in this process (blendstudy.torch_npu_probe)
    "CANN_SET_ENV", "npu_import_error", "npu_load_problem", "task_queue_in_force", "torch_npu_installed",
    "torch_npu_version",
    # the Ascend host (blendstudy.ascend_host)
    "allowed_cores", "cann_version", "cpu_affinity_conf", "device_bus_id", "device_numa_node", "driver_version",
    "format_cores", "local_cores", "npu_smi", "numa_nodes", "parse_cores", "parse_npu_smi", "parse_version_cfg",
    "parse_version_info", "sysfs_root",
    # provenance (blendstudy.provenance) and dynamo's recompile limit (blendstudy.recompile_limit)
    "LOCK_DIR", "LOCK_RECORD", "RUNTIME_ENV", "code_fingerprint", "effective_runtime", "emulated", "git_state",
    "installed_lock", "recompile_limit_knob", "set_recompile_limit", "under_recompile_limit",
]


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide."""


_warned_npu_fallback = False


def _warn_npu_fallback(fallback: str) -> None:
    """Say once per process, on one stderr line, that an installed torch_npu was passed over."""
    global _warned_npu_fallback
    problem = npu_load_problem()
    if problem is None or _warned_npu_fallback:
        return
    _warned_npu_fallback = True
    sys.stderr.write(f"blendstudy: {problem} — continuing on {fallback}\n")
    sys.stderr.flush()


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
    """`auto` = npu if torch_npu imports and has a device, else cuda, else cpu (an installed torch_npu
    that cannot load is reported on one stderr line). Explicit `cpu`, `cuda[:N]`, `npu[:N]`; an
    unavailable one raises DeviceError. The device returned is made current (activate)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if npu_available():
            return activate(torch.device("npu", 0))
        if cuda_available():
            _warn_npu_fallback("cuda")
            return activate(torch.device("cuda", 0))
        _warn_npu_fallback("cpu")
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
            problem = npu_load_problem()
            if problem is not None:
                raise DeviceError(f"device {spec!r} requested but no Ascend NPU is usable: {problem}")
            why = npu_import_error() or "torch.npu.is_available() is False"
            raise DeviceError(f"device {spec!r} requested but no Ascend NPU is usable ({why})")
        count = torch.npu.device_count()  # type: ignore[attr-defined]
    if idx >= count:
        raise DeviceError(f"device {spec!r} requested but only {count} {kind} device(s) exist")
    return activate(torch.device(kind, idx))


def activate(device: torch.device) -> torch.device:
    """Make `device` the current device of its kind (no-op on cpu) and return it. Call it before
    anything compiles: TorchAir's graph engine starts on the current NPU (docs/npu.md "Devices,
    formats, versions")."""
    if device.type == "npu":
        torch.npu.set_device(device.index or 0)  # type: ignore[attr-defined]  # torch_npu mirrors torch.cuda
    elif device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
    return device


def current_index(device: torch.device) -> Optional[int]:
    """The current device index of `device`'s kind (None on cpu or when it cannot be read)."""
    be = _backend(device)
    if be is None:
        return None
    try:
        return int(be.current_device())
    except Exception:
        return None


#: switches a device cannot run, with why (blendstudy.optimize skips them with this reason)
_UNSUPPORTED: Dict[str, Dict[str, str]] = {
    # docs/npu.md "Devices, formats, versions": torch_npu creates contiguous tensors only
    "npu": {"channels_last": "torch_npu creates contiguous NPU tensors only (\"Only c10::MemoryFormat::Contiguous "
                             "is supported for creating a npu tensor\")"},
}


#: switches that compute in bfloat16 on a CPU (blendstudy.optimize.half_dtype)
_BF16_SWITCHES = ("half", "mixed_half", "half_towers")


def cpu_capability() -> str:
    """The vector ISA torch's CPU kernels dispatch to here ("AVX512", "AVX2", "DEFAULT", ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch: no such query
        return "unknown"


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                                       "amx_bf16")) -> List[str]:
    """The ``wanted`` instruction-set flags /proc/cpuinfo announces (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in wanted if f in flags]


def no_native_bf16(device: Any) -> Optional[str]:
    """Why an offline runtime cannot compute bfloat16 natively on ``device`` (a CPU without
    AVX512_BF16 or AMX-BF16 instructions: OpenVINO's CPU plugin then keeps float32), or None when it can.
    Only the CPU is judged here; an accelerator's runtime decides its own precision."""
    if getattr(device, "type", str(device)) != "cpu":
        return "bf16 offline variants are a CPU-runtime setting (OpenVINO's inference precision)"
    if {"avx512_bf16", "amx_bf16"} & set(cpu_flags()):
        return None
    return "this CPU announces neither AVX512_BF16 nor AMX-BF16: OpenVINO would run float32"


def unsupported_switch(device: Any, switch: str) -> Optional[str]:
    """Why `device` cannot run the optimization `switch` (usefully), or None when it can. On a CPU
    without AVX-512 the bf16 switches are skipped: oneDNN emulates bf16 convolutions there, several
    times slower than float32 (README, "What we found")."""
    kind = getattr(device, "type", str(device))
    why = _UNSUPPORTED.get(kind, {}).get(switch)
    if why is None and kind == "cpu" and switch in _BF16_SWITCHES and not cpu_capability().startswith("AVX512"):
        why = (f"this CPU's torch kernels are {cpu_capability()} (no AVX-512): bfloat16 convolutions are "
               "emulated, several times slower than float32")
    return why


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


def environment_info(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """What a results JSON records about where it ran; ``emulated`` is True on the emulated Ascend
    stack (blendstudy.emulation), whose latencies are the CPU's, not an NPU's; ``lock`` is the
    environment lock the interpreter's venv was installed from (installed_lock)."""
    info: Dict[str, Any] = {
        "emulated": emulated(),
        "lock": installed_lock(),
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
        "env": {k: os.environ[k] for k in RUNTIME_ENV if k in os.environ},
    }
    if info["torch_npu_error"] is None:
        import torch_npu

        info["torch_npu"] = getattr(torch_npu, "__version__", "unknown")
        info["npu_smi"] = _command_first_lines(["npu-smi", "info"])
        info["npu_driver"] = driver_version()
        info["cann"] = cann_version()  # torch_npu's own answer, now that it is loaded
    if cuda_available():
        info["nvidia_smi"] = _command_first_lines(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if device is not None:
        info["device"] = str(device)
        info["device_name"] = device_name(device)
    info.update(git_state())
    return info
