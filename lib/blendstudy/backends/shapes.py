"""Static exports per padded input size (P4's shapes): one fixed-size model for each distinct shape
the pipeline produces, the batch's own shape choosing which runs."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch

from blendstudy.backends.common import BackendError
from blendstudy.backends.engines import DenseBackend
from blendstudy.model.fcos import HeadOutputs

__all__ = ["PerShapeBackend"]


class PerShapeBackend:
    """Callable like a DenseBackend: (1, 3, H, W) batch -> (HeadOutputs, bases) from the fixed-size
    model exported at exactly (H, W). A shape without a model is a BackendError naming the sizes
    there are (a static model is never padded up silently: that would change the detections)."""

    def __init__(self, backends: Mapping[Tuple[int, int], DenseBackend]) -> None:
        if not backends:
            raise BackendError("PerShapeBackend needs at least one fixed-size model")
        self.backends: Dict[Tuple[int, int], DenseBackend] = {tuple(int(v) for v in k): b for k, b in backends.items()}
        first = next(iter(self.backends.values()))
        self.name = first.name
        self.dynamic = False

    @property
    def session_seconds(self) -> float:
        return float(sum(b.session_seconds for b in self.backends.values()))

    def __call__(self, batch: torch.Tensor) -> Tuple[HeadOutputs, torch.Tensor]:
        key = (int(batch.shape[-2]), int(batch.shape[-1]))
        backend = self.backends.get(key)
        if backend is None:
            sizes = ", ".join(f"{h}x{w}" for h, w in sorted(self.backends))
            raise BackendError(f"no {self.name} model exported for a {key[0]}x{key[1]} batch (exported: {sizes}): "
                               "export one per padded size of the images, or use a dynamic export")
        return backend(batch)

    def describe(self) -> Dict[str, Any]:
        parts: List[Dict[str, Any]] = [b.describe() for b in self.backends.values()]
        return {"backend": self.name, "dynamic": False, "input_sizes": [list(k) for k in self.backends],
                "session_seconds": round(self.session_seconds, 3), "models": parts}

    def close(self) -> None:
        for b in self.backends.values():
            b.close()
