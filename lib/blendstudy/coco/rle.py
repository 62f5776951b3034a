"""COCO RLE encoding of binary masks (pycocotools)."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_util


def encode_rle(masks: np.ndarray) -> List[Dict[str, Any]]:
    """(N, H, W) bool/uint8 -> list of COCO RLE dicts with `counts` as str (JSON-ready)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    out = []
    for r in rles:
        counts = r["counts"]
        out.append({"size": [int(s) for s in r["size"]],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts})
    return out


def _as_bytes(rles: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """RLEs with `counts` as bytes, as pycocotools' C functions want them."""
    return [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)
             else r["counts"]} for r in rles]


def decode_rle(rles: Sequence[Dict[str, Any]], image_size: Tuple[int, int]) -> np.ndarray:
    """List of COCO RLE dicts -> (N, H, W) bool."""
    h, w = image_size
    if len(rles) == 0:
        return np.zeros((0, h, w), dtype=bool)
    return mask_util.decode(_as_bytes(rles)).transpose(2, 0, 1).astype(bool)
