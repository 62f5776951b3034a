"""The emulated device runtime: which cards this process sees, the current card, and what torch_npu
2.8 does once, at the first device set-up (first ``set_device`` or first npu tensor): read the task
queue level and apply ``CPU_AFFINITY_CONF``.

Sources of the behaviours copied (Ascend/pytorch, branch v2.8.0):
- ``OptionsManager::GetTaskQueueEnable``: ``ASCEND_LAUNCH_BLOCKING=1`` -> 0; else TASK_QUEUE_ENABLE,
  unset -> 1, read once (a function-local static) and fixed afterwards; a value other than 0, 1, 2
  raises "TASK_QUEUE_ENABLE should be 0, 1 or 2".
- ``NPUAffinityController.cpp``: ``parseCPUAffinityConf`` (default range per card = the online cores
  split evenly over the visible cards; ``npuN:a-b`` / ``npuN:c`` override a card's range;
  ``mode:X`` or a bare number set the mode; anything else is ignored with a warning) and
  ``getThreadAffinityInfo`` (mode 0: no binding; if the thread's current mask lacks a core of any
  card's range -- checked as ``start <= core < end`` -- it warns "Thread affinity is already set."
  and binds nothing); then the thread is bound to the card's range (mode 1) or, mode 2, the main
  thread to the first core of the card's range.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from typing import Any, Dict, List, Optional, Tuple

import emulated_ascend

_lock = threading.RLock()
_current: int = 0
_initialized: bool = False
_task_queue: Optional[int] = None
_affinity: Optional[Dict[str, Any]] = None


# --------------------------------------------------------------------------------------------------
# cards


def visible_cards() -> List[int]:
    """Physical card of each logical index: ASCEND_RT_VISIBLE_DEVICES=1,3 -> [1, 3] (npu:0 is card 1);
    ids that do not exist are dropped -- the emulated host's answer (emulated_ascend: what npu-smi shows)."""
    return list(emulated_ascend.visible_cards())


def device_count() -> int:
    return len(visible_cards())


def soc_name() -> str:
    try:
        import emulated_ascend

        return str(emulated_ascend.MACHINE.get("soc_version", "Ascend910B3"))
    except ImportError:
        return "Ascend910B3"


def check_index(index: int) -> int:
    """The index itself when it names a visible card, else RuntimeError as aclrtSetDevice fails."""
    n = device_count()
    if index < 0:
        raise RuntimeError("device id must be positive!")
    if index >= n:
        raise RuntimeError(f"aclrtSetDevice failed: invalid device id {index}, the valid range is [0, {n}) "
                           f"(emulated torch_npu; error code 107001)")
    return index


def current_device() -> int:
    return _current


def set_device(index: int) -> None:
    global _current
    check_index(index)
    with _lock:
        _current = index
    lazy_init(index)


# --------------------------------------------------------------------------------------------------
# the first device set-up


def is_initialized() -> bool:
    return _initialized


def lazy_init(index: Optional[int] = None) -> None:
    """The first device set-up: fixes the task queue level and applies CPU_AFFINITY_CONF (for the
    card being set up). Later calls do nothing."""
    global _initialized, _task_queue, _affinity
    if _initialized:
        return
    with _lock:
        if _initialized:
            return
        _task_queue = _read_task_queue()
        card = _current if index is None else index
        _affinity = _apply_affinity(card)
        _initialized = True


def _read_task_queue() -> int:
    if os.environ.get("ASCEND_LAUNCH_BLOCKING", "").strip() == "1":
        return 0
    raw = os.environ.get("TASK_QUEUE_ENABLE")
    if raw is None:
        return 1
    m = re.match(r"\s*([+-]?\d+)", raw)  # strtol: leading digits, anything else reads as 0
    value = int(m.group(1)) if m else 0
    if value not in (0, 1, 2):
        raise RuntimeError("TASK_QUEUE_ENABLE should be 0, 1 or 2")
    return value


def task_queue_level() -> int:
    """The task queue level this process runs with (0 off, 1 two-stage, 2 level 2), fixed at the first
    device set-up (which this call performs when it has not happened yet)."""
    lazy_init()
    return int(_task_queue or 0)


# --------------------------------------------------------------------------------------------------
# CPU_AFFINITY_CONF


def _online_cores() -> int:
    try:
        return int(os.sysconf("SC_NPROCESSORS_ONLN"))
    except (ValueError, OSError, AttributeError):
        return os.cpu_count() or 1


def parse_affinity_conf(text: Optional[str], cards: Optional[int] = None,
                        cores: Optional[int] = None) -> Tuple[int, List[Tuple[int, int]], List[str]]:
    """(mode, [(start, end) per visible card, inclusive], warnings) as torch_npu 2.8 parses
    CPU_AFFINITY_CONF. A card's default range is its even share of the online cores; when there are
    more cards than cores the share is empty, which torch_npu's unsigned arithmetic turns into a
    range no thread mask contains (so nothing is bound) -- kept here as (0, -1)."""
    n = device_count() if cards is None else cards
    total = _online_cores() if cores is None else cores
    block = total // n if n > 0 and total > 0 else 0
    ranges = [(i * block, (i + 1) * block - 1) for i in range(max(n, 0))]
    notes: List[str] = []
    mode = 0
    text = (text or "").strip()
    if not text:
        return mode, ranges, notes
    if text.isdigit():
        return int(text), ranges, notes
    for option in text.split(","):
        key, sep, value = option.partition(":")
        if not sep:
            if option.isdigit():
                mode = int(option)
            continue
        if key == "mode":
            if value.isdigit():
                mode = int(value)
            else:
                notes.append(f"mode is {value}, should be all digits")
        elif key.startswith("npu") and key[3:].isdigit() and int(key[3:]) < n:
            start, dash, end = value.partition("-")
            if dash and start.isdigit() and end.isdigit():
                ranges[int(key[3:])] = (int(start), int(end))
            elif not dash and value.isdigit():
                ranges[int(key[3:])] = (int(value), int(value))
            else:
                notes.append(f"core range is {value}, should be all digits")
    return mode, ranges, notes


def _apply_affinity(card: int) -> Dict[str, Any]:
    conf = os.environ.get("CPU_AFFINITY_CONF")
    out: Dict[str, Any] = {"conf": conf, "mode": 0, "card": card, "range": None, "bound": None,
                           "reason": "CPU_AFFINITY_CONF unset"}
    if not conf:
        return out
    mode, ranges, notes = parse_affinity_conf(conf)
    for note in notes:
        warnings.warn(f"CPU_AFFINITY_CONF: {note}", stacklevel=3)
    out.update(mode=mode, ranges=[list(r) for r in ranges])
    if mode == 0:
        out["reason"] = "mode 0: no binding"
        return out
    if mode not in (1, 2):
        out["reason"] = f"mode {mode} is not 1 or 2: no binding"
        return out
    if not hasattr(os, "sched_getaffinity"):
        out["reason"] = "no sched_setaffinity on this platform"
        return out
    allowed = set(os.sched_getaffinity(0))
    for start, end in ranges:
        if end < start or any(c not in allowed for c in range(start, end)):
            warnings.warn("CPU_AFFINITY_CONF: Thread affinity is already set.", stacklevel=3)
            out["reason"] = ("Thread affinity is already set: this thread may not use every core of every "
                             "card's range, so torch_npu binds nothing")
            return out
    if card >= len(ranges):
        out["reason"] = f"no range for card {card}"
        return out
    start, end = ranges[card]
    out["range"] = [start, end]
    wanted = list(range(start, end + 1)) if mode == 1 else [start]
    cores = sorted(set(wanted) & allowed)
    if not cores:
        out["reason"] = f"none of cores {start}-{end} is usable by this process"
        return out
    os.sched_setaffinity(0, cores)
    out["bound"] = cores
    out["reason"] = ("mode 1: the thread bound to the card's range" if mode == 1 else
                     "mode 2: the main thread bound to the first core of the card's range")
    return out


def affinity_applied() -> Dict[str, Any]:
    """What CPU_AFFINITY_CONF did at the first device set-up (which this call performs when it has
    not happened yet): {"conf", "mode", "card", "ranges", "range", "bound" (cores or None), "reason"}."""
    lazy_init()
    return dict(_affinity or {})
