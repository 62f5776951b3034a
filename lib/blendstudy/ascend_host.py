"""Facts of an Ascend host, read without torch_npu where they can be: the CANN toolkit's version
(version.cfg and the .info files), `npu-smi info` (cards, bus ids, driver version), the cores and NUMA
nodes of sysfs with the node a device's PCI slot hangs off (device_numa_node also reads cuda's), and
the CPU_AFFINITY_CONF string torch_npu binds its threads by. Core lists are written as taskset -c
writes them ("0-23,48-71": parse_cores / format_cores). NPU facts are cited from docs/npu.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import lru_cache
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from blendstudy.torch_npu_probe import npu_import_error

__all__ = ["allowed_cores", "cann_version", "cpu_affinity_conf", "device_bus_id", "device_numa_node",
           "driver_version", "format_cores", "local_cores", "npu_smi", "numa_nodes", "parse_cores", "parse_npu_smi",
           "parse_version_cfg", "parse_version_info", "sysfs_root"]


def _command_first_lines(cmd: list, n: int = 12) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return "\n".join(out.stdout.splitlines()[:n])


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------
# CANN and the driver


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
