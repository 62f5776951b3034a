"""The doctor's checks of the Ascend stack: the autoload guard, torch_npu (loads; installed beside
which torch), CANN sourced, the task queue not forced off, the form of CPU_AFFINITY_CONF."""

from __future__ import annotations

import os
import sys
from typing import Optional

import torch

from blendstudy import device as devmod
from blendstudy.doctor.base import FAIL, PASS, SKIP, Check, Found, _dist_version, load_detect_profile

__all__ = ["cann_home_problem"]


def _check_autoload_guard() -> Check:
    value = os.environ.get("TORCH_DEVICE_BACKEND_AUTOLOAD")
    installed = devmod.torch_npu_installed()
    if value == "0":
        return Check("torch_autoload_guard", PASS, "TORCH_DEVICE_BACKEND_AUTOLOAD=0 (set by blendstudy before "
                                                   "torch): torch_npu is imported explicitly")
    if installed:
        return Check("torch_autoload_guard", FAIL, f"TORCH_DEVICE_BACKEND_AUTOLOAD={value or 'unset'}: `import "
                                                   "torch` loads torch_npu itself and raises when it cannot")
    return Check("torch_autoload_guard", SKIP, f"TORCH_DEVICE_BACKEND_AUTOLOAD={value or 'unset'}; no torch_npu "
                                               "installed, nothing to autoload")


def _check_torch_npu() -> Check:
    if not devmod.torch_npu_installed():
        return Check("torch_npu_loads", SKIP, "torch_npu not installed")
    problem = devmod.npu_load_problem()
    if problem is not None:
        return Check("torch_npu_loads", FAIL, problem)
    import torch_npu

    return Check("torch_npu_loads", PASS, f"torch_npu {getattr(torch_npu, '__version__', '?')} loads beside "
                                          f"torch {torch.__version__}")


def _check_torch_npu_deps() -> Check:
    name = "torch_npu_deps"
    have = devmod.torch_npu_version()
    if have is None:
        return Check(name, SKIP, "torch_npu not installed")
    torch_dist = _dist_version("torch")
    try:
        from importlib import metadata

        wants = [r for r in (metadata.requires("torch_npu") or metadata.requires("torch-npu") or [])
                 if r.replace(" ", "").lower().startswith("torch==")]
    except Exception:
        wants = []
    want = wants[0].replace(" ", "").split("==", 1)[1].split(";")[0] if wants else None
    if want and "+cpu" in want and torch_dist is not None and torch_dist != want:
        return Check(name, PASS, f"torch_npu {have} installed with --no-deps beside torch {torch_dist}: its wheel asks "
                                 f"for torch=={want}, which PyPI does not carry (same code; its CUDA libraries "
                                 "stay unused)")
    return Check(name, PASS, f"torch_npu {have} beside torch {torch_dist} as its wheel requires")


def _check_cann(profile: Optional[str], found: Found) -> Check:
    if profile != "npu" and not devmod.torch_npu_installed():
        return Check("cann_sourced", SKIP, f"profile {profile}: CANN not needed")
    problems = []
    for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        if os.environ.get(var):
            problem = cann_home_problem(os.environ[var])
            if problem is None:
                return Check("cann_sourced", PASS, f"{var}={os.environ[var]} (CANN {found.cann or 'version unknown'})")
            problems.append(f"{var}: {problem}")
    why = "; ".join(problems) if problems else "CANN's environment is not set"
    return Check("cann_sourced", FAIL, f"{why}: source {devmod.CANN_SET_ENV}")


def cann_home_problem(path: str) -> Optional[str]:
    """None when ``path`` is a CANN toolkit folder, else why not (env/detect_profile.py's rule)."""
    detect = load_detect_profile()
    if detect is not None:
        return detect.cann_home_problem(path)
    return None if os.path.isfile(os.path.join(path, "version.cfg")) else f"{path} holds no version.cfg"


def _check_task_queue(dev: Optional[torch.device]) -> Check:
    name = "task_queue_not_forced_off"
    if dev is None or dev.type != "npu":
        return Check(name, SKIP, "not an NPU")
    tq = devmod.task_queue_in_force()
    if tq is None:
        return Check(name, SKIP, "torch_npu not loaded")
    if tq["value"] == 0:
        why = ("interactive interpreter (a Jupyter kernel): latency measured here runs with the queue off; "
               "measure in a worker process") if hasattr(sys, "ps1") else tq["source"]
        return Check(name, FAIL, f"task queue 0 ({why})")
    return Check(name, PASS, f"task queue {tq['value']} ({tq['source']})")


def _check_affinity_conf() -> Check:
    name = "cpu_affinity_conf_form"
    raw = os.environ.get("CPU_AFFINITY_CONF")
    if not raw:
        return Check(name, SKIP, "CPU_AFFINITY_CONF not set")
    items = [i.strip() for i in raw.split(",") if i.strip()]
    modes = [i for i in items if i.isdigit()] + [i.split(":", 1)[1] for i in items if i.startswith("mode:")]
    if not modes:
        return Check(name, FAIL, f"CPU_AFFINITY_CONF={raw}: no mode (0 off, 1 coarse, 2 fine), so torch_npu binds "
                                 "nothing: write it first, e.g. 1,npu0:0-23 (Ascend's CPU_AFFINITY_CONF reference)")
    if modes[-1] not in ("0", "1", "2"):
        return Check(name, FAIL, f"CPU_AFFINITY_CONF={raw}: mode {modes[-1]} is not 0, 1 or 2")
    return Check(name, PASS, f"CPU_AFFINITY_CONF={raw} (mode {modes[-1]})")

