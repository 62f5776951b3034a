"""Peak memory of the measuring process (seed 004's column): the device's high-water mark where the
device reports one, the process's resident-set high-water mark (ru_maxrss) on a CPU. A process's
ru_maxrss only grows, so each backend is measured in a fresh worker of its own."""

from __future__ import annotations

import resource
import sys
from typing import Dict, Optional

import torch

from blendstudy.device import peak_memory_mb

__all__ = ["peak_rss_mb", "process_memory"]


def peak_rss_mb() -> float:
    """The resident-set high-water mark of this process, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024.0


def process_memory(device: torch.device) -> Dict[str, Optional[float]]:
    """{"peak_rss_mb": this process's resident high-water mark, "peak_device_mb": the device's peak
    allocation since its last reset (None on a CPU)} -- MiB."""
    return {"peak_rss_mb": peak_rss_mb(), "peak_device_mb": peak_memory_mb(device)}
