"""The emulated Ascend stack, for tests and demos: active only when ``BLENDSTUDY_EMULATE=npu``.

No machine this project runs on has an NPU, so the NPU code paths run against a test double kept in
the checkout's ``emulation/npu/`` (see its README): a stand-in ``torch_npu`` on PyTorch's PrivateUse1
device (tensors really on ``npu:N``, every kernel run on the CPU), ``torchair`` and ``ais_bench``
stand-ins, a CANN toolkit tree (8.5.0, aarch64-linux), and ``npu-smi`` / ``atc`` commands. It
proves code paths, never speed: every result made under it says ``emulated``.

``import blendstudy`` calls :func:`activate` when the variable is set, before anything imports
torch: the stand-ins go first on ``sys.path`` and ``PYTHONPATH``, the commands on ``PATH``, CANN's
variables point at the tree, and sysfs is read from an emulated one (NUMA nodes and the cards' PCI
slots). Every worker process and torchrun rank inherits the variable and so activates it too.
Without the variable nothing here runs and nothing of ``emulation/`` is imported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List

__all__ = ["EMULATED_BANNER", "EMULATED_NOTE", "EMULATE_VAR", "SYSFS_VAR", "activate", "emulated", "emulation_root",
           "says_emulated"]

#: the variable that turns the emulation on (its one value: "npu")
EMULATE_VAR = "BLENDSTUDY_EMULATE"
#: the first line of every report, and a line under every notebook's header, made on the emulated stack
EMULATED_BANNER = ("EMULATED NPU: this run went through the NPU code paths on an emulated Ascend stack "
                   "(blendstudy.emulation); every kernel ran on the CPU, so no latency in it is an NPU's")
#: what every table (a first column) and every figure (each title) made on the emulated stack says
EMULATED_NOTE = "emulated NPU: CPU timings, not an NPU's"
#: where blendstudy.device reads sysfs (default /sys); the emulation points it at its own tree
SYSFS_VAR = "BLENDSTUDY_SYSFS"


def emulated() -> bool:
    """True when this process runs on the emulated Ascend stack."""
    return os.environ.get(EMULATE_VAR, "").strip().lower() == "npu"


def says_emulated(table: Callable[..., Any]) -> Callable[..., Any]:
    """A table builder (returning a pandas DataFrame) whose tables, on the emulated stack, start with
    a column saying so (EMULATED_NOTE); unchanged elsewhere."""
    @functools.wraps(table)
    def build(*args: Any, **kwargs: Any) -> Any:
        df = table(*args, **kwargs)
        if emulated() and "emulated" not in df.columns:
            df.insert(0, "emulated", EMULATED_NOTE)
        return df

    return build


def emulation_root() -> Path:
    """The checkout's emulation/npu folder (the emulation exists in a source checkout only)."""
    return Path(__file__).resolve().parents[2] / "emulation" / "npu"


def _prepend(var: str, entry: str) -> None:
    parts = [p for p in os.environ.get(var, "").split(os.pathsep) if p]
    if entry not in parts:
        os.environ[var] = os.pathsep.join([entry, *parts])


def _machine_cores() -> List[int]:
    """Every core of the machine (as sysfs lists them, whatever this process is bound to)."""
    return list(range(os.cpu_count() or 1))


def _sysfs(machine: Dict, cores: List[int]) -> Path:
    """An emulated sysfs: this machine's cores split into machine.json's NUMA nodes, and card i's
    PCI slot on node i mod nodes (so neighbouring cards get different core ranges). Written once per
    layout under the temp folder; the real /sys is never touched."""
    nodes = max(1, min(int(machine["numa_nodes"]), len(cores)))
    per = -(-len(cores) // nodes)
    layout = {"nodes": [cores[i * per:(i + 1) * per] for i in range(nodes)],
              "cards": {bus.lower(): i % nodes for i, bus in enumerate(machine["bus_ids"])}}
    key = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"blendstudy-emulated-sysfs-{key}"
    if (root / "complete").is_file():
        return root
    for n, node_cores in enumerate(layout["nodes"]):
        d = root / "devices" / "system" / "node" / f"node{n}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpulist").write_text(",".join(str(c) for c in node_cores) + "\n")
    for bus, node in layout["cards"].items():
        d = root / "bus" / "pci" / "devices" / bus
        d.mkdir(parents=True, exist_ok=True)
        (d / "numa_node").write_text(f"{node}\n")
    (root / "complete").write_text("ok\n")
    return root


def activate() -> None:
    """Put the emulated Ascend stack in place for this process and every process it starts
    (idempotent). A BLENDSTUDY_EMULATE value other than npu, or a checkout without
    emulation/npu, stops here in one line."""
    value = os.environ.get(EMULATE_VAR, "").strip().lower()
    if value != "npu":
        raise RuntimeError(f"{EMULATE_VAR}={value!r}: the only emulated device is 'npu'")
    root = emulation_root()
    if not (root / "site" / "torch_npu").is_dir():
        raise RuntimeError(f"{EMULATE_VAR}=npu: {root} is missing (the emulation ships with the source checkout)")
    site = str(root / "site")
    if site not in sys.path:
        sys.path.insert(0, site)
    _prepend("PYTHONPATH", site)
    _prepend("PATH", str(root / "bin"))
    toolkit = str(root / "cann" / "ascend-toolkit" / "latest")
    os.environ["ASCEND_TOOLKIT_HOME"] = toolkit
    os.environ["ASCEND_HOME_PATH"] = toolkit
    os.environ["BLENDSTUDY_EMULATE_PYTHON"] = sys.executable
    machine = json.loads((root / "machine.json").read_text())
    os.environ.setdefault(SYSFS_VAR, str(_sysfs(machine, _machine_cores())))
