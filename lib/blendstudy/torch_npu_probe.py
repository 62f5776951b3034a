"""torch_npu in this process: whether it is installed, whether it loads (the one import probe the
device layer asks before choosing an npu), its version, the one-line problem when it is installed but
cannot load, and the task queue level it runs with. Nothing here needs torch_npu to be installed.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Any, Dict, Optional

import torch

__all__ = ["CANN_SET_ENV", "npu_import_error", "npu_load_problem", "task_queue_in_force", "torch_npu_installed",
           "torch_npu_version"]

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
