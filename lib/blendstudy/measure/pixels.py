"""How far two pipelines' resized images are apart, grey level by grey level (P0's question)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

__all__ = ["PixelDifference", "resize_difference", "resize_difference_summary"]


@dataclass
class PixelDifference:
    """One image's resized pixels, one pipeline against another (P0's row), in grey levels (0-255):
    mean, 99th percentile and max of |a - b| over all pixels and channels; differs: the share
    (0-1) of values that differ at all; size: the resized image's "WxH"."""

    image: str
    size: str
    mean: float
    p99: float
    max: float
    differs: float


def resize_difference(reference: Any, candidate: Any, images: Mapping[str, np.ndarray]) -> List[PixelDifference]:
    """Per image (a :class:`PixelDifference` each), how far two pipelines' resized images
    (`Pipeline.resize`, before normalisation) are apart, in grey levels (0-255): mean, 99th
    percentile and max of |a - b| over all pixels and channels, and the share of values that
    differ at all. Both must resize to the same size (they share the model's min/max size)."""
    rows: List[PixelDifference] = []
    for name, image in images.items():
        a = reference.resize(image).float().cpu()
        b = candidate.resize(image).float().cpu()
        if a.shape != b.shape:
            raise ValueError(f"{name}: resized to {tuple(a.shape)} by one pipeline and {tuple(b.shape)} by the other")
        d = (a - b).abs().flatten().numpy()
        rows.append(PixelDifference(name, f"{a.shape[-1]}x{a.shape[-2]}", float(d.mean()), float(np.percentile(d, 99)),
                                    float(d.max()), float((d > 0).mean())))
    return rows


def resize_difference_summary(rows: Sequence[PixelDifference]) -> List[Dict[str, Any]]:
    """resize_difference's rows summed up over the images: the mean and the largest per-image
    value of each measure (mean, p99, max |a - b| in grey levels; share of values that differ)."""
    if not rows:
        return []
    keys = ("mean", "p99", "max", "differs")
    return [{"over images": how, "images": len(rows), **{k: float(fn([getattr(r, k) for r in rows])) for k in keys}}
            for how, fn in (("mean", np.mean), ("max", np.max))]
