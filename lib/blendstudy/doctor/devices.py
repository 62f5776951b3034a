"""What the doctor finds on this machine (Python, torch, torch_npu, CANN, driver, cards, NUMA) and its
checks of the device and the host: the device resolves and is made current, threads, core binding
against the device's NUMA node, channels_last, dynamo's recompile knob, a compile backend."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from typing import List, Optional

import torch

from blendstudy import device as devmod
from blendstudy.doctor.base import FAIL, PASS, SKIP, Check, Found, _one_line


def _find(device_spec: str) -> tuple:
    """(Found, resolved device or None, DeviceError line or None)."""
    err: Optional[str] = None
    dev: Optional[torch.device] = None
    try:
        dev = devmod.resolve_device(device_spec)
    except devmod.DeviceError as exc:
        err = str(exc)
    npu_installed = devmod.torch_npu_installed()
    npu_loaded = npu_installed and devmod.npu_import_error() is None
    npu_names: List[str] = []
    npu_count = 0
    if npu_loaded:
        try:
            npu_count = int(torch.npu.device_count())  # type: ignore[attr-defined]
        except Exception:
            npu_count = 0
    smi = devmod.npu_smi() if (npu_installed or shutil.which("npu-smi")) else None
    if smi and smi["cards"]:
        npu_names = [str(c["name"]) for c in smi["cards"]]
        npu_count = npu_count or len(npu_names)
    elif npu_count and dev is not None and dev.type == "npu":
        npu_names = [devmod.device_name(dev)]  # torch_npu names the current device only
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda_names = [torch.cuda.get_device_name(i) for i in range(cuda_count)]
    numa = {node: devmod.format_cores(cores) for node, cores in devmod.numa_nodes().items()}
    node = devmod.device_numa_node(dev) if dev is not None and dev.type != "cpu" else None
    found = Found(
        python=platform.python_version(), executable=sys.executable, platform=platform.platform(),
        machine=platform.machine(), torch=torch.__version__, torch_cuda=torch.version.cuda,
        torch_npu=devmod.torch_npu_version() if npu_installed else None,
        torch_npu_error=devmod.npu_import_error() if npu_installed else None,
        cann=devmod.cann_version(), driver=devmod.driver_version() if (npu_installed or smi) else None,
        npu_count=npu_count, npu_names=npu_names, cuda_count=cuda_count, cuda_names=cuda_names, numa=numa,
        affinity=devmod.format_cores(devmod.allowed_cores()), device=str(dev) if dev is not None else None,
        device_numa_node=node,
        device_local_cores=devmod.format_cores(devmod.local_cores(dev)) if dev is not None else "")
    return found, dev, err


def _check_device(spec: str, dev: Optional[torch.device], err: Optional[str]) -> Check:
    if dev is None:
        return Check("device_resolves", FAIL, err or f"{spec!r} did not resolve")
    return Check("device_resolves", PASS, f"{spec!r} -> {dev}")


def _check_omp() -> Check:
    name = "omp_threads_effective"
    raw = os.environ.get("OMP_NUM_THREADS")
    threads = torch.get_num_threads()
    if not raw:
        return Check(name, SKIP, f"OMP_NUM_THREADS not set; torch uses {threads} threads")
    try:
        want = int(raw)
    except ValueError:
        return Check(name, FAIL, f"OMP_NUM_THREADS={raw!r} is not a number")
    if want != threads:
        return Check(name, FAIL, f"OMP_NUM_THREADS={want} but torch uses {threads} threads: it was set after torch "
                                 "started (set it before the process starts, or torch.set_num_threads)")
    return Check(name, PASS, f"OMP_NUM_THREADS={want} = torch.get_num_threads()")


def _check_binding(dev: Optional[torch.device], found: Found) -> Check:
    name = "core_binding_numa_local"
    if dev is None or dev.type == "cpu":
        return Check(name, SKIP, "cpu device: no device NUMA node")
    node = found.device_numa_node
    if node is None:
        return Check(name, SKIP, f"{dev}'s NUMA node is unknown (no sysfs numa_node for its PCI slot)")
    node_cores = set(devmod.numa_nodes().get(node, []))
    allowed = set(devmod.allowed_cores())
    online = set().union(*[set(c) for c in devmod.numa_nodes().values()]) if found.numa else allowed
    node_txt = devmod.format_cores(sorted(node_cores))
    if allowed >= online:
        return Check(name, SKIP, f"not bound (all {len(allowed)} cores); {dev} is on NUMA node {node}: bind with "
                                 f"taskset -c {node_txt} or CPU_AFFINITY_CONF")
    outside = sorted(allowed - node_cores)
    if outside:
        return Check(name, FAIL, f"bound to {found.affinity}, {len(outside)} core(s) outside {dev}'s NUMA node "
                                 f"{node} ({node_txt})")
    return Check(name, PASS, f"bound to {found.affinity}, inside {dev}'s NUMA node {node} ({node_txt})")


def _check_set_device(spec: str, dev: Optional[torch.device]) -> Check:
    """The study's way to a device (resolve_device) makes it current, so that work without an index --
    TorchAir's graph engine, tensors made as device="npu" -- lands on it. Checked from another current
    device when there is one (else it could not fail): resolve again, then where an index-less tensor lands."""
    name = "set_device_called"
    if dev is None or dev.type == "cpu":
        return Check(name, SKIP, "cpu device")
    be = devmod._backend(dev)
    want = dev.index or 0
    count = int(be.device_count())
    if count > 1:
        be.set_device((want + 1) % count)  # start from another current device
    devmod.resolve_device(spec)
    current = devmod.current_index(dev)
    landed = torch.empty(1, device=dev.type).device.index
    if current != want or landed != want:
        return Check(name, FAIL, f"after resolve_device({spec!r}) the current {dev.type} device is {current} and an "
                                 f"index-less tensor lands on {dev.type}:{landed}, not {want}: "
                                 f"blendstudy.device.activate({dev}) must run before anything compiles")
    return Check(name, PASS, f"resolve_device({spec!r}) makes {dev} current (index-less work lands there)"
                 + ("" if count > 1 else "; one device only"))


def _check_channels_last(dev: Optional[torch.device]) -> Check:
    name = "channels_last"
    if dev is None:
        return Check(name, SKIP, "no device")
    why = devmod.unsupported_switch(dev, "channels_last")
    if why:
        return Check(name, SKIP, f"unsupported on {dev.type}, the switch is skipped: {why}")
    return Check(name, PASS, f"channels_last supported on {dev.type}")


def _check_recompile_knob() -> Check:
    import torch._dynamo.config as dcfg

    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, knob):
            return Check("recompile_limit_knob", PASS, f"torch._dynamo.config.{knob} = {getattr(dcfg, knob)}")
    return Check("recompile_limit_knob", FAIL, "torch._dynamo.config has neither recompile_limit nor cache_size_limit")


def _check_compile_backend(dev: Optional[torch.device]) -> Check:
    name = "compile_backend"
    if dev is None:
        return Check(name, SKIP, "no device")
    backend = devmod.default_compile_backend(dev)
    if dev.type == "npu":
        try:
            import torchair  # torch_npu 2.8 ships it (torch_npu.dynamo.torchair), importable once torch_npu is

            torchair.get_npu_backend  # noqa: B018  (the attribute access performs the lazy import)
        except Exception as exc:
            return Check(name, FAIL, f"torchair not importable: {_one_line(exc)}")
        return Check(name, PASS, "npu: torchair importable (get_npu_backend)")
    if dev.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return Check(name, FAIL, "inductor on cuda needs triton, which is not installed")
        return Check(name, PASS, "inductor: triton installed")
    cc = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cc is None:
        return Check(name, FAIL, f"{backend} on cpu needs a C++ compiler, none on PATH")
    return Check(name, PASS, f"{backend}: C++ compiler {cc}")

