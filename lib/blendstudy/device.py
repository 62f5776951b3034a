"""The device layer: finding, starting and describing an npu, cuda or cpu device, and what each
cannot run.

The rest of the code says `dev = resolve_device("auto")`, `synchronize(dev)`, `peak_memory_mb(dev)`;
which optimization switches a device cannot run, and why, is said here once (`unsupported_switch`).
Where a computation itself takes a different path on a device type it says so where it computes
(e.g. the CPU's uint8 resize in blendstudy.pipeline, the half dtype in blendstudy.optimize, the cuda
flags of blendstudy.runtime, the kernels of blendstudy.ops). NPU facts are cited from docs/npu.md.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
from functools import lru_cache
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide."""


#: what to source when torch_npu cannot find CANN's libraries (docs/npu.md "Importing and the device")
CANN_SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"


@lru_cache(maxsize=1)
def npu_import_error() -> Optional[str]:
    """None when torch_npu imports, else why not. Any failure means "no npu" (without CANN the
    import raises ImportError: libhccl.so ...), never a crash. torch_npu is imported explicitly:
    blendstudy/__init__.py turned torch's backend autoload off (TORCH_DEVICE_BACKEND_AUTOLOAD=0)."""
    try:
        import torch_npu  # noqa: F401  (registers the 'npu' device and torch.npu)
    except Exception as exc:  # ImportError, OSError, RuntimeError from a broken CANN alike
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def torch_npu_installed() -> bool:
    """torch_npu is installed for this Python (found on the path; not imported)."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch_npu") is not None
    except (ImportError, ValueError):
        return False


def torch_npu_version() -> Optional[str]:
    """The installed torch_npu distribution's version (from its metadata, without importing it; else
    the loaded module's own __version__)."""
    from importlib import metadata

    for name in ("torch_npu", "torch-npu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    loaded = sys.modules.get("torch_npu")  # on the path but not pip-installed (the emulated stack's stand-in)
    return getattr(loaded, "__version__", None) if loaded is not None else None


def npu_load_problem() -> Optional[str]:
    """One line when torch_npu is installed but cannot load (CANN not sourced, broken install), None
    when it loads or is not installed at all (no NPU stack is not a problem)."""
    if not torch_npu_installed():
        return None
    err = npu_import_error()
    if err is None:
        return None
    version = torch_npu_version() or "(unknown version)"
    return f"torch_npu {version} is installed but cannot load: {err}; source {CANN_SET_ENV}"


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


def recompile_limit_knob() -> str:
    """The name of dynamo's per-code recompile limit: `recompile_limit` in newer torch,
    `cache_size_limit` before (~2.6)."""
    import torch._dynamo.config as dcfg

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, name):
            return name
    raise RuntimeError("this torch has neither recompile_limit nor cache_size_limit")


def set_recompile_limit(limit: int) -> str:
    """Set dynamo's per-code recompile limit for the whole process (recompile_limit_knob). Returns the
    name that was set. The study does not: each compiled part runs under its own limit
    (under_recompile_limit)."""
    import torch._dynamo.config as dcfg

    name = recompile_limit_knob()
    setattr(dcfg, name, int(limit))
    return name


def under_recompile_limit(fn: Callable[..., Any], limit: int) -> Callable[..., Any]:
    """``fn`` (a compiled module's forward) called with dynamo's recompile limit at ``limit`` and set
    back afterwards: dynamo reads the limit when a call meets a shape it has no graph for, so each
    compiled part keeps its own limit whatever the process's is."""
    import torch._dynamo.config as dcfg

    name = recompile_limit_knob()

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        saved = getattr(dcfg, name)
        setattr(dcfg, name, int(limit))
        try:
            return fn(*args, **kwargs)
        finally:
            setattr(dcfg, name, saved)

    return call


def _toolkit_roots() -> List[str]:
    roots = [os.environ.get(v, "") for v in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")]
    roots.append("/usr/local/Ascend/ascend-toolkit/latest")
    out: List[str] = []
    for r in roots:
        if r and r not in out:
            out.append(r)
    return out


def parse_version_cfg(text: str) -> Optional[str]:
    """CANN's product version from a toolkit `version.cfg`: lines like
    `runtime_running_version=[7.3.0.1.231:8.0.RC2]` -> "8.0.RC2" (the part after the colon; docs/npu.md).
    `*_running_version` first, then `*_installed_version`, then any other `*version` key."""
    found: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or "version" not in key or not value:
            continue
        m = re.search(r"\[\s*([^\]:]*):([^\]]+)\]", value)
        version = m.group(2).strip() if m else value.strip('"[] ')
        if version:
            found.setdefault(key, version)
    for suffix in ("_running_version", "_installed_version", "version"):
        for key, version in found.items():
            if key.endswith(suffix):
                return version
    return None


def parse_version_info(text: str) -> Optional[str]:
    """The `version=` (any case) value of a CANN `.info` file (`compiler/version.info`,
    `aarch64-linux/ascend_toolkit_install.info`, the driver's `version.info`)."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "version" and value.strip():
            return value.strip().strip('"')
    return None


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def cann_version() -> Optional[str]:
    """CANN toolkit version, None where CANN is absent. torch_npu's own
    `torch_npu.npu.utils.get_cann_version()` when torch_npu is already loaded (not imported here),
    else the toolkit's files under $ASCEND_TOOLKIT_HOME / $ASCEND_HOME_PATH /
    /usr/local/Ascend/ascend-toolkit/latest: version.cfg, compiler/version.info,
    <arch>-linux/ascend_toolkit_install.info (the arch folder is aarch64-linux or x86_64-linux)."""
    mod = sys.modules.get("torch_npu")
    if mod is not None and npu_import_error() is None:
        try:
            from torch_npu.npu.utils import get_cann_version  # torch_npu 2.8: returns a str

            version = str(get_cann_version()).strip()
            if version and version.lower() not in ("unknown", "not known", "none"):
                return version
        except Exception:
            pass
    for root in _toolkit_roots():
        text = _read(os.path.join(root, "version.cfg"))
        version = parse_version_cfg(text) if text else None
        if version:
            return version
        for rel in ("compiler/version.info", "aarch64-linux/ascend_toolkit_install.info",
                    "x86_64-linux/ascend_toolkit_install.info"):
            text = _read(os.path.join(root, rel))
            version = parse_version_info(text) if text else None
            if version:
                return version
    return None


def parse_npu_smi(text: str) -> Dict[str, Any]:
    """`npu-smi info`'s table: {"driver": "24.1.rc2" | None, "cards": [{"npu": 0, "name": "910B3",
    "health": "OK", "bus_id": "0000:C1:00.0"}, ...]}. Each card is two rows: `| 0  910B3 | OK | ...`
    then `| 0 (chip) | 0000:C1:00.0 | ...`."""
    out: Dict[str, Any] = {"driver": None, "cards": []}
    m = re.search(r"Version:\s*([0-9][\w.\-]*)", text)
    if m:
        out["driver"] = m.group(1)
    card: Optional[Dict[str, Any]] = None
    for line in text.splitlines():
        if "Process id" in line or "Process name" in line:
            break  # the process table follows the cards
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2:
            continue
        first = cells[0].split()
        is_bus = re.match(r"^[0-9a-fA-F]{4}:", cells[1]) is not None
        if len(first) >= 2 and first[0].isdigit() and not first[1].isdigit() and not is_bus:
            card = {"npu": int(first[0]), "name": first[1], "health": cells[1].split()[0] if cells[1] else None,
                    "bus_id": None}
            out["cards"].append(card)
        elif card is not None and len(first) == 1 and first[0].isdigit():
            bus = re.match(r"^([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])", cells[1])
            if bus and card["bus_id"] is None:
                card["bus_id"] = bus.group(1)
    return out


@lru_cache(maxsize=1)
def npu_smi() -> Optional[Dict[str, Any]]:
    """parse_npu_smi of `npu-smi info` on this machine, None where npu-smi is absent or fails."""
    text = _command_first_lines(["npu-smi", "info"], n=10_000)
    return parse_npu_smi(text) if text else None


def driver_version() -> Optional[str]:
    """Ascend driver version: `npu-smi info`'s header, else /usr/local/Ascend/driver/version.info."""
    smi = npu_smi()
    if smi and smi.get("driver"):
        return str(smi["driver"])
    text = _read("/usr/local/Ascend/driver/version.info")
    return parse_version_info(text) if text else None


# --------------------------------------------------------------------------------------------------
# cores and NUMA


def parse_cores(text: str) -> List[int]:
    """"144-167,170" -> [144, ..., 167, 170] (sorted, unique); "" -> []. ValueError on a bad range."""
    cores = set()
    for part in "".join(str(text).split()).split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad core range {part!r} in {text!r}: use e.g. 0-23,48-71")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"bad core range {part!r} in {text!r}: end before start")
        cores.update(range(a, b + 1))
    return sorted(cores)


def _runs(cores: Sequence[int]) -> List[List[int]]:
    runs: List[List[int]] = []
    for c in sorted(set(int(c) for c in cores)):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return runs


def format_cores(cores: Sequence[int]) -> str:
    """[144, ..., 167, 170] -> "144-167,170" (the form taskset -c and the params use)."""
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in _runs(cores))


def sysfs_root(sys_root: Optional[str] = None) -> str:
    """Where sysfs is read: ``sys_root`` when given, else $BLENDSTUDY_SYSFS (the emulated Ascend
    stack's own tree, blendstudy.emulation), else /sys."""
    return sys_root or os.environ.get("BLENDSTUDY_SYSFS") or "/sys"


def numa_nodes(sys_root: Optional[str] = None) -> Dict[int, List[int]]:
    """{node: cores} from <sysfs>/devices/system/node/node*/cpulist; {} where not exposed."""
    base = os.path.join(sysfs_root(sys_root), "devices", "system", "node")
    nodes: Dict[int, List[int]] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return nodes
    for name in names:
        if not re.fullmatch(r"node\d+", name):
            continue
        text = _read(os.path.join(base, name, "cpulist"))
        if text is None:
            continue
        try:
            nodes[int(name[4:])] = parse_cores(text.strip())
        except ValueError:
            continue
    return dict(sorted(nodes.items()))


def _pci_numa_node(bus_id: str, sys_root: Optional[str] = None) -> Optional[int]:
    text = _read(os.path.join(sysfs_root(sys_root), "bus", "pci", "devices", bus_id.lower(), "numa_node"))
    try:
        node = int(text.strip()) if text else -1
    except ValueError:
        return None
    return node if node >= 0 else None


def _physical_index(device: torch.device) -> int:
    """The card a process-local index names: ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES renumber."""
    var = "ASCEND_RT_VISIBLE_DEVICES" if device.type == "npu" else "CUDA_VISIBLE_DEVICES"
    idx = device.index or 0
    visible = [v.strip() for v in os.environ.get(var, "").split(",") if v.strip()]
    if idx < len(visible) and visible[idx].isdigit():
        return int(visible[idx])
    return idx


def device_bus_id(device: torch.device) -> Optional[str]:
    """The device's PCI address ("0000:c1:00.0"), None where unknown or cpu.
    npu: `npu-smi info`'s Bus-Id of the card with the physical index (910B: one chip per card);
    cuda: torch's device properties (pci_domain_id/pci_bus_id/pci_device_id), else nvidia-smi."""
    if device.type == "npu":
        smi = npu_smi()
        if not smi:
            return None
        cards = sorted(smi["cards"], key=lambda c: c["npu"])
        phys = _physical_index(device)
        return cards[phys]["bus_id"].lower() if phys < len(cards) and cards[phys]["bus_id"] else None
    if device.type == "cuda":
        try:
            props = torch.cuda.get_device_properties(device.index or 0)
            return f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        except Exception:
            pass
        text = _command_first_lines(["nvidia-smi", "--query-gpu=pci.bus_id", "--format=csv,noheader",
                                     "-i", str(_physical_index(device))])
        if text:  # "00000000:3B:00.0": an 8-digit domain
            dom, _, rest = text.strip().partition(":")
            return f"{int(dom, 16):04x}:{rest}".lower() if rest else None
    return None


def device_numa_node(device: torch.device, sys_root: Optional[str] = None) -> Optional[int]:
    """The NUMA node the device's PCI slot hangs off (sysfs numa_node of device_bus_id), None where
    unknown (cpu, no npu-smi/nvidia-smi, a single-node machine reporting -1)."""
    bus = device_bus_id(device)
    return _pci_numa_node(bus, sys_root) if bus else None


def allowed_cores() -> List[int]:
    """The cores this process may run on (its affinity mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def local_cores(device: torch.device, sys_root: Optional[str] = None) -> List[int]:
    """The device's NUMA node's cores that this process may use; all allowed cores when the node is
    unknown (cpu, no topology) or the intersection is empty."""
    allowed = allowed_cores()
    node = device_numa_node(device, sys_root) if device.type != "cpu" else None
    if node is None:
        return allowed
    local = sorted(set(numa_nodes(sys_root).get(node, [])) & set(allowed))
    return local or allowed


def cpu_affinity_conf(mode: int, ranges_per_npu: Optional[Mapping[int, Union[str, Sequence[int]]]] = None) -> str:
    """CPU_AFFINITY_CONF for torch_npu 2.8's own core binding, custom form `mode:1,npu0:0-23,npu1:24-47`
    (torch_npu reads the mode as `mode:N` or as a bare leading value, Ascend's documented `1,npu0:0-23`;
    each card takes ONE contiguous range). mode 0 off, 1 coarse (all of a card's threads on its
    range), 2 fine (hot threads on their own cores). torch_npu binds only when the thread may run on
    every core of the range: a process already confined elsewhere (taskset) keeps its binding."""
    if int(mode) not in (0, 1, 2):
        raise ValueError(f"CPU_AFFINITY_CONF mode must be 0, 1 or 2, not {mode!r}")
    parts = [f"mode:{int(mode)}"]
    for npu, cores in sorted((ranges_per_npu or {}).items()):
        ids = parse_cores(cores) if isinstance(cores, str) else sorted(set(int(c) for c in cores))
        runs = _runs(ids)
        if len(runs) != 1:
            raise ValueError(f"npu{npu}: torch_npu takes one contiguous core range, not {format_cores(ids) or 'none'}")
        parts.append(f"npu{int(npu)}:{runs[0][0]}-{runs[0][1]}")
    return ",".join(parts)


# --------------------------------------------------------------------------------------------------
# what this process runs with


#: runtime variables a measurement records (as present in the environment)
RUNTIME_ENV = ("TASK_QUEUE_ENABLE", "OMP_NUM_THREADS", "CPU_AFFINITY_CONF", "ASCEND_RT_VISIBLE_DEVICES",
               "ASCEND_LAUNCH_BLOCKING", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "CUDA_VISIBLE_DEVICES",
               "TORCH_DEVICE_BACKEND_AUTOLOAD")


def task_queue_in_force() -> Optional[Dict[str, Any]]:
    """The NPU task queue level this process runs with, None unless torch_npu is loaded: read back
    from torch_npu where it offers that (``torch.npu.task_queue_level()``: the emulated stack's). torch_npu
    2.8 has no Python API that reads it back (its C++ reads TASK_QUEUE_ENABLE at the first stream
    set-up): then this reads the environment as torch_npu left it -- its import sets TASK_QUEUE_ENABLE=0 in an
    interactive interpreter (sys.ps1: every Jupyter kernel) -- and ASCEND_LAUNCH_BLOCKING=1, which
    turns the queue off whatever TASK_QUEUE_ENABLE says (docs/npu.md "Runtime knobs")."""
    if "torch_npu" not in sys.modules or npu_import_error() is not None:
        return None
    level = getattr(getattr(torch, "npu", None), "task_queue_level", None)
    if callable(level):  # a torch_npu that reads its level back (the emulated stack's: blendstudy.emulation)
        return {"value": int(level()), "source": "torch.npu.task_queue_level() (read back from torch_npu)"}
    if os.environ.get("ASCEND_LAUNCH_BLOCKING") == "1":
        return {"value": 0, "source": "ASCEND_LAUNCH_BLOCKING=1"}
    raw = os.environ.get("TASK_QUEUE_ENABLE")
    if raw is None or raw.strip() == "":
        return {"value": 1, "source": "default (TASK_QUEUE_ENABLE unset)"}
    try:
        value: Any = int(raw)
    except ValueError:
        value = raw
    source = "TASK_QUEUE_ENABLE after torch_npu import"
    if hasattr(sys, "ps1") and raw.strip() == "0":
        source += " (torch_npu sets 0 in interactive interpreters)"
    return {"value": value, "source": source}


def effective_runtime() -> Dict[str, Any]:
    """What THIS process reads back about its own runtime: pid, interactive or not, torch's intra-op
    threads, the cores it may run on, the runtime variables present, and on an NPU the task queue
    level in force (task_queue_in_force)."""
    cores = allowed_cores()
    return {
        "pid": os.getpid(),
        "interactive": hasattr(sys, "ps1"),
        "torch_threads": torch.get_num_threads(),
        "cpu_affinity": cores,
        "cpu_affinity_ranges": format_cores(cores),
        "env": {k: os.environ[k] for k in RUNTIME_ENV if k in os.environ},
        "task_queue": task_queue_in_force(),
    }


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


def emulated() -> bool:
    """True when this process runs on the emulated Ascend stack (BLENDSTUDY_EMULATE=npu, or the
    emulation's stand-in torch_npu is loaded): its latencies are no device's."""
    from blendstudy import emulation

    return emulation.emulated() or bool(getattr(sys.modules.get("torch_npu"), "EMULATED", False))


#: the file `make venv` writes into the venv's root naming the lock it installed (env/install_profile.py)
LOCK_RECORD = "blendstudy-lock.json"
#: the checkout's locks (env/locks/), when this package runs from a source checkout
LOCK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "env", "locks")


def installed_lock(prefix: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The environment lock `make venv` installed into this interpreter's environment (``prefix``, default
    sys.prefix): {"lock": its file name, "sha256": its sha256 when installed, "profile": ..., "current":
    whether the checkout's env/locks/ still holds that file unchanged (None without a checkout)}; None
    when the environment was not installed from a lock."""
    import hashlib
    import json

    try:
        with open(os.path.join(prefix or sys.prefix, LOCK_RECORD)) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record.get("lock"):
        return None
    out = {"lock": record["lock"], "sha256": record.get("sha256"), "profile": record.get("profile"), "current": None}
    path = os.path.join(LOCK_DIR, os.path.basename(str(record["lock"])))
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            out["current"] = hashlib.sha256(fh.read()).hexdigest() == out["sha256"]
    return out


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
