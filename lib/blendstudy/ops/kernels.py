"""Which kernels compute nms / roi_align: ours in plain PyTorch ("native", the default) or
torchvision's ("torchvision", where a working torchvision is importable).

The choice is an argument of each op (``impl=``), passed down by the caller: there is no
process-wide switch. Tests check both give the same answers (tests/test_ops.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

#: the kernel implementations an op's ``impl`` argument accepts
IMPLS = ("native", "torchvision")


@lru_cache(maxsize=1)
def torchvision_ops() -> Optional[object]:
    """torchvision.ops if torchvision imports (a CUDA build with CPU torch raises: then None)."""
    try:
        import torchvision.ops as tv_ops

        tv_ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)  # the import can succeed yet the op fail
    except Exception:
        return None
    return tv_ops


def kernels_for(impl: str) -> Optional[object]:
    """None for "native" (the caller computes in plain PyTorch), torchvision.ops for "torchvision".
    Raises ValueError for another name, RuntimeError when torchvision's kernels do not work here."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
    if impl == "native":
        return None
    tv = torchvision_ops()
    if tv is None:
        raise RuntimeError("impl='torchvision': torchvision.ops is not importable or its kernels fail here")
    return tv
