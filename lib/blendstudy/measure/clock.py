"""The one device-synchronised clock of the study.

Every duration the study reports is taken here: the device is synchronised right before a call
starts and right after it returns, so queued asynchronous device work is charged to the call that
queued it and nothing else is inside the timed window. Durations are in MILLISECONDS.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Tuple, Union

import torch

from blendstudy.device import synchronize

__all__ = ["Stopwatch", "timed_call", "now_ms"]


def now_ms() -> float:
    """A monotonic timestamp in milliseconds (time.perf_counter)."""
    return time.perf_counter() * 1000.0


def timed_call(fn: Callable[[Any], Any], x: Any, device: Union[torch.device, str, None],
               keep: bool = False) -> Union[float, Tuple[float, Any]]:
    """One synchronised call of ``fn(x)``; returns its duration in ms (and the result if ``keep``;
    otherwise the result is dropped right away). ``device`` None: nothing to synchronise."""
    dev = torch.device(device) if device is not None else None
    if dev is not None:
        synchronize(dev)
    t0 = time.perf_counter()
    out = fn(x)
    if dev is not None:
        synchronize(dev)
    ms = (time.perf_counter() - t0) * 1000.0
    return (ms, out) if keep else ms


class Stopwatch:
    """Consecutive synchronised laps: ``lap()`` synchronises the device and returns the ms since
    the previous lap (or the start). The profiler marks stage boundaries with it."""

    def __init__(self, device: Optional[Union[torch.device, str]] = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = torch.device(device) if device is not None else None
        self.clock = clock
        self._sync()
        self._last = self.clock()

    def _sync(self) -> None:
        if self.device is not None:
            synchronize(self.device)

    def lap(self) -> float:
        """Milliseconds since the previous lap, the device synchronised first."""
        self._sync()
        now = self.clock()
        ms = (now - self._last) * 1000.0
        self._last = now
        return ms
