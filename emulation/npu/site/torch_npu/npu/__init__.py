"""``torch.npu``: the emulated torch_npu's device module (registered with
``torch._register_device_module("npu", ...)``), mirroring the torch.cuda API the way torch_npu does.

Everything runs on the host: ``synchronize`` has nothing to wait for, events time with the host
clock, streams are placeholders. Memory statistics count the bytes of live npu tensors per card.

The stand-in's own read-backs (no real torch_npu 2.8 has them; prefer real APIs where they exist):
``task_queue_level()``, ``affinity_applied()``, ``physical_device(i)``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Iterator, List, Optional

import torch

from torch_npu import _backend, _runtime
from torch_npu._runtime import affinity_applied, task_queue_level
from torch_npu.npu import utils  # noqa: F401  (torch.npu.utils.get_cann_version)

__all__ = [
    "Event", "Stream", "affinity_applied", "config", "current_device", "current_stream", "default_stream",
    "device", "device_count", "empty_cache", "get_amp_supported_dtype", "get_device_name",
    "get_device_properties", "init", "is_available", "is_bf16_supported", "is_initialized",
    "manual_seed", "manual_seed_all", "max_memory_allocated", "max_memory_reserved", "mem_get_info",
    "memory_allocated", "memory_reserved", "memory_stats", "physical_device", "reset_max_memory_allocated",
    "reset_peak_memory_stats", "set_device", "stream", "synchronize", "task_queue_level", "utils",
]


# --------------------------------------------------------------------------------------------------
# devices


def _index(device: Any = None, optional: bool = True) -> int:
    """Index of `device` (int, "npu:1", torch.device or None = the current card)."""
    if device is None:
        return _runtime.current_device()
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        if device.type not in ("npu", "privateuseone"):
            raise ValueError(f"Expected a npu device, but got: {device}")
        return _runtime.current_device() if device.index is None else int(device.index)
    raise ValueError(f"Expected a npu device, but got: {device!r}")


def is_available() -> bool:
    return _runtime.device_count() > 0


def device_count() -> int:
    return _runtime.device_count()


def physical_device(device: Any = None) -> int:
    """The emulated physical card behind logical index `device` (ASCEND_RT_VISIBLE_DEVICES renumbers)."""
    return _runtime.visible_cards()[_runtime.check_index(_index(device))]


def set_device(device: Any) -> None:
    index = _index(device)
    if index >= 0:
        _runtime.set_device(index)


def current_device() -> int:
    _runtime.lazy_init()
    return _runtime.current_device()


def is_initialized() -> bool:
    return _runtime.is_initialized()


def init() -> None:
    _runtime.lazy_init()


def _lazy_init() -> None:
    _runtime.lazy_init()


def _is_in_bad_fork() -> bool:
    return False


def synchronize(device: Any = None) -> None:
    """Wait for the card's queued work: every kernel here has finished when it returns."""
    _runtime.check_index(_index(device))


def get_device_name(device: Any = None) -> str:
    _runtime.check_index(_index(device))
    return _runtime.soc_name()


class _DeviceProperties:
    def __init__(self, index: int) -> None:
        self.name = _runtime.soc_name()
        self.total_memory = _hbm_bytes()
        self.index = index

    def __repr__(self) -> str:
        return f"_NPUDeviceProperties(name='{self.name}', total_memory={self.total_memory // 2**20}MB)"


def _hbm_bytes() -> int:
    try:
        import emulated_ascend

        return int(emulated_ascend.MACHINE.get("hbm_mb", 65536)) * 2**20
    except ImportError:
        return 65536 * 2**20


def get_device_properties(device: Any = None) -> _DeviceProperties:
    return _DeviceProperties(_runtime.check_index(_index(device)))


class device:
    """Context manager that makes `index` the current card for its body."""

    def __init__(self, device: Any) -> None:
        self.idx = _index(device)
        self.prev = -1

    def __enter__(self) -> None:
        self.prev = _runtime.current_device()
        if self.idx >= 0 and self.idx != self.prev:
            _runtime.set_device(self.idx)

    def __exit__(self, *exc: Any) -> bool:
        if self.prev != self.idx and self.idx >= 0:
            _runtime.set_device(self.prev)
        return False


# --------------------------------------------------------------------------------------------------
# memory


def memory_allocated(device: Any = None) -> int:
    return _backend.STATS.allocated.get(_index(device), 0)


def max_memory_allocated(device: Any = None) -> int:
    return _backend.STATS.peak.get(_index(device), 0)


def memory_reserved(device: Any = None) -> int:
    return memory_allocated(device)


def max_memory_reserved(device: Any = None) -> int:
    return max_memory_allocated(device)


def reset_peak_memory_stats(device: Any = None) -> None:
    _backend.STATS.reset_peak(_index(device))


def reset_max_memory_allocated(device: Any = None) -> None:
    reset_peak_memory_stats(device)


def empty_cache() -> None:
    """Nothing is cached: freed npu memory goes straight back to the host allocator."""


def memory_stats(device: Any = None) -> Dict[str, int]:
    return {"allocated_bytes.all.current": memory_allocated(device),
            "allocated_bytes.all.peak": max_memory_allocated(device),
            "reserved_bytes.all.current": memory_reserved(device),
            "reserved_bytes.all.peak": max_memory_reserved(device)}


def mem_get_info(device: Any = None) -> tuple:
    total = _hbm_bytes()
    return total - memory_allocated(device), total


# --------------------------------------------------------------------------------------------------
# streams and events


class Stream:
    """A placeholder stream of a card: work is done when it is issued."""

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any) -> None:
        self.device = torch.device("npu", _index(device))
        self.priority = priority

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait_event(self, event: Event) -> None:
        pass

    def wait_stream(self, stream: Stream) -> None:
        pass

    def record_event(self, event: Optional[Event] = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stream) and other.device == self.device

    def __hash__(self) -> int:
        return hash(("npu-stream", self.device))

    def __repr__(self) -> str:
        return f"<torch_npu.npu.Stream device={self.device} (emulated)>"


def current_stream(device: Any = None) -> Stream:
    return Stream(device)


def default_stream(device: Any = None) -> Stream:
    return Stream(device)


@contextlib.contextmanager
def stream(s: Optional[Stream]) -> Iterator[None]:
    yield


class Event:
    """A timing event: ``record`` takes the host clock (all earlier work has finished by then)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.enable_timing = enable_timing
        self._t: Optional[float] = None

    def record(self, stream: Optional[Stream] = None) -> None:
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait(self, stream: Optional[Stream] = None) -> None:
        pass

    def elapsed_time(self, end_event: Event) -> float:
        """Milliseconds from this event to `end_event`."""
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self._t is None or end_event._t is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return (end_event._t - self._t) * 1000.0


# --------------------------------------------------------------------------------------------------
# random numbers, amp, config


def manual_seed(seed: int) -> None:
    """npu random numbers are drawn by the CPU kernels from torch's CPU generator, which
    torch.manual_seed seeds; nothing of its own to seed here."""


def manual_seed_all(seed: int) -> None:
    manual_seed(seed)


def seed() -> None:
    pass


def seed_all() -> None:
    pass


def initial_seed() -> int:
    return torch.initial_seed()


def get_amp_supported_dtype() -> List[torch.dtype]:
    return [torch.float16, torch.bfloat16]


def is_bf16_supported() -> bool:
    return True


_autocast = {"enabled": False, "dtype": torch.float16}


def is_autocast_enabled() -> bool:
    return bool(_autocast["enabled"])


def set_autocast_enabled(enabled: bool) -> None:
    _autocast["enabled"] = bool(enabled)


def get_autocast_dtype() -> torch.dtype:
    return _autocast["dtype"]


def set_autocast_dtype(dtype: torch.dtype) -> None:
    _autocast["dtype"] = dtype


class _Config:
    """torch.npu.config: torch_npu's switches (kept, no effect on the host)."""

    def __init__(self) -> None:
        self.allow_internal_format = False


config = _Config()
