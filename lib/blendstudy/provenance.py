"""What a result records about how it was made: the code fingerprint (the package's sources), the
checkout's git commit, the environment lock the venv was installed from, whether the Ascend stack is
the emulated one, and what this process reads back about its own runtime (threads, cores, runtime
variables, the NPU task queue). blendstudy.device.environment_info records the lock, the git commit
and whether emulated beside the device's own facts; code_fingerprint names the code in a prediction
run's identity (blendstudy.loading).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Dict, Optional

import torch

from blendstudy.ascend_host import allowed_cores, format_cores
from blendstudy.torch_npu_probe import task_queue_in_force

__all__ = ["LOCK_DIR", "LOCK_RECORD", "RUNTIME_ENV", "code_fingerprint", "effective_runtime", "emulated", "git_state",
           "installed_lock"]


# --------------------------------------------------------------------------------------------------
# what this process runs with


#: runtime variables a measurement records (as present in the environment)
RUNTIME_ENV = ("TASK_QUEUE_ENABLE", "OMP_NUM_THREADS", "CPU_AFFINITY_CONF", "ASCEND_RT_VISIBLE_DEVICES",
               "ASCEND_LAUNCH_BLOCKING", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "CUDA_VISIBLE_DEVICES",
               "TORCH_DEVICE_BACKEND_AUTOLOAD")


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


# --------------------------------------------------------------------------------------------------
# which code, which environment


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


def git_state() -> Dict[str, Any]:
    """The checkout this package runs from: {"git_commit": HEAD (None outside a checkout), "git_dirty":
    whether it has uncommitted changes}; {"git_commit": None} alone when git cannot be run."""
    info: Dict[str, Any] = {}
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
