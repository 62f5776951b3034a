"""The shapes of the synthetic dataset: their polygons, the rasteriser, the placement of one shape.

Exactness.  Every shape is a polygon (circles and ellipses are dense regular polygons, so
the polygon *is* the geometry) whose vertices lie on a 1/8-pixel grid.  Its pixels are
rasterised with pycocotools' own polygon rasteriser (``frPyObjects``), i.e. the very
routine ``COCO.annToMask`` uses, and the image is painted through exactly that mask with
no anti-aliasing.  PIL's ``ImageDraw.polygon`` was measured to disagree with pycocotools
on ~3% of the pixels of random polygons, hence pycocotools is the rasteriser.  A stored
polygon therefore decodes (``annToMask``) to exactly the painted pixels.

Object areas are drawn from COCO's small / medium / large buckets (< 32**2, 32**2..96**2,
> 96**2 pixels for a 480x640 image, scaled by the image's area for other sizes).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_util

#: The shape classes, in default category order (category id = position + 1).
SHAPES: Tuple[str, ...] = ("circle", "ellipse", "rectangle", "triangle", "hexagon", "star", "ring", "cross")

#: The shapes without a hole (stored as their polygon when nothing covers them).
SIMPLY_CONNECTED = frozenset(SHAPES) - {"ring"}

_REFERENCE_AREA = 480 * 640  # COCO area buckets are defined for images of about this many pixels
_GRID = 8.0  # polygon vertices lie on a 1/8-pixel grid: exact in binary, so shifts are exact

Point = Tuple[float, float]


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> List[Tuple[float, float]]:
    """Vertices of a regular n-gon of circumradius ``radius`` centred at 0 (counter-clockwise)."""
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _poly_area(pts: Sequence[Tuple[float, float]]) -> float:
    """Absolute shoelace area of a simple polygon, in squared input units."""
    s = 0.0
    for (x0, y0), (x1, y1) in zip(pts, list(pts[1:]) + [pts[0]]):
        s += x0 * y1 - x1 * y0
    return abs(s) / 2.0


def _round_vertices(n_est: float) -> int:
    """Vertex count of a circle-like polygon of radius ``n_est`` px: one vertex every ~4 px."""
    return int(min(256, max(16, math.ceil(2 * math.pi * n_est / 4.0))))


def _unit_shape(shape: str, rng: np.random.Generator, radius_px: float
                ) -> Tuple[List[Tuple[float, float]], Optional[List[Tuple[float, float]]]]:
    """Canonical shape (outer polygon, optional hole) of circumradius about 1, before scaling."""
    n_round = _round_vertices(radius_px)
    hole = None
    if shape == "circle":
        outer = _regular(n_round)
    elif shape == "ellipse":
        a = rng.uniform(0.35, 0.65)
        outer = [(x, a * y) for x, y in _regular(n_round)]
    elif shape == "rectangle":
        a = rng.uniform(0.35, 1.0)
        outer = [(-1.0, -a), (1.0, -a), (1.0, a), (-1.0, a)]
    elif shape == "triangle":
        a = rng.uniform(0.7, 1.3)
        outer = [(x, a * y) for x, y in _regular(3, phase=-math.pi / 2)]
    elif shape == "hexagon":
        a = rng.uniform(0.85, 1.0)
        outer = [(x, a * y) for x, y in _regular(6)]
    elif shape == "star":
        a = rng.uniform(0.85, 1.0)
        inner = rng.uniform(0.38, 0.55)
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else inner
            ang = -math.pi / 2 + math.pi * k / 5
            pts.append((r * math.cos(ang), a * r * math.sin(ang)))
        outer = pts
    elif shape == "ring":
        a = rng.uniform(0.75, 1.0)
        inner = rng.uniform(0.45, 0.7)
        outer = [(x, a * y) for x, y in _regular(n_round)]
        hole = [(inner * x, inner * a * y) for x, y in _regular(_round_vertices(radius_px * inner))]
    elif shape == "cross":
        a = rng.uniform(0.8, 1.0)
        t = rng.uniform(0.25, 0.4)
        outer = [(t, 1), (t, t), (1, t), (1, -t), (t, -t), (t, -1),
                 (-t, -1), (-t, -t), (-1, -t), (-1, t), (-t, t), (-t, 1)]
        outer = [(x, a * y) for x, y in outer]
    else:  # pragma: no cover - guarded by SyntheticConfig
        raise ValueError(shape)
    return outer, hole


def _rasterize(polys: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise flat [x0, y0, x1, y1, ...] polygons with pycocotools; return the (H, W) bool union."""
    rles = mask_util.frPyObjects([list(p) for p in polys], height, width)
    with warnings.catch_warnings():
        # pycocotools' decode trips numpy>=2's "__array__ ... copy keyword" DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode(mask_util.merge(rles)).astype(bool)


@dataclass
class Placed:
    """One shape placed on an image: its polygons and its full mask on a crop of the image."""

    shape: str
    category_id: int
    outer: List[float]  # flat image-coordinate polygon
    hole: Optional[List[float]]
    y0: int
    x0: int
    mask: np.ndarray  # full-shape mask on the crop [y0:y0+h, x0:x0+w]
    full_area: int


def _target_area(rng: np.random.Generator, height: int, width: int, size_mix: Sequence[float]) -> float:
    """Draw an object area (pixels): a COCO size bucket with probabilities ``size_mix``
    (small / medium / large, scaled by the image's area), then log-uniform within the bucket."""
    k2 = height * width / _REFERENCE_AREA
    short = min(height, width)
    large_hi = min((0.55 * short) ** 2, 256.0 ** 2 * k2)
    bounds = [(12.0 ** 2 * k2, 32.0 ** 2 * k2), (32.0 ** 2 * k2, 96.0 ** 2 * k2), (96.0 ** 2 * k2, large_hi)]
    mix = np.asarray(size_mix, dtype=np.float64)
    bucket = int(rng.choice(3, p=mix / mix.sum()))
    lo, hi = bounds[bucket]
    hi = max(hi, lo * 1.01)
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _posed_shape(shape: str, rng: np.random.Generator, target: float, height: int, width: int
                 ) -> Tuple[List[Point], Optional[List[Point]]]:
    """Outer polygon and optional hole of ``shape`` centred at 0: scaled to area ``target``,
    rotated by a random angle, shrunk to fit in the image (with a 2-pixel margin) if too big."""
    radius_guess = math.sqrt(target / math.pi)
    outer, hole = _unit_shape(shape, rng, radius_guess)
    unit_area = _poly_area(outer) - (_poly_area(hole) if hole else 0.0)
    scale = math.sqrt(target / unit_area)
    theta = rng.uniform(0.0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)

    def transform(pts):
        return [(scale * (x * c - y * s), scale * (x * s + y * c)) for x, y in pts]

    outer_t = transform(outer)
    hole_t = transform(hole) if hole else None
    xs = [p[0] for p in outer_t]
    ys = [p[1] for p in outer_t]
    bw, bh = max(xs) - min(xs), max(ys) - min(ys)
    fit = min(1.0, (width - 4.0) / bw, (height - 4.0) / bh)
    if fit < 1.0:  # too big for this image: shrink to fit
        outer_t = [(x * fit, y * fit) for x, y in outer_t]
        hole_t = [(x * fit, y * fit) for x, y in hole_t] if hole_t else None
    return outer_t, hole_t


def _on_grid(pts: Sequence[Point], cx: float, cy: float, height: int, width: int) -> List[float]:
    """Flat [x0, y0, ...] polygon of ``pts`` moved by (cx, cy), its vertices rounded to the
    1/8-pixel grid and clipped to the image."""
    flat: List[float] = []
    for x, y in pts:
        flat.append(min(max(round((x + cx) * _GRID) / _GRID, 0.0), width - 1.0))
        flat.append(min(max(round((y + cy) * _GRID) / _GRID, 0.0), height - 1.0))
    return flat


def _rasterize_on_crop(shape: str, category_id: int, outer_f: List[float], hole_f: Optional[List[float]],
                       height: int, width: int) -> Optional[Placed]:
    """Rasterise the placed polygons on their crop (bounding box + 2..3 pixels); None if empty."""
    x0 = max(int(math.floor(min(outer_f[0::2]))) - 2, 0)
    y0 = max(int(math.floor(min(outer_f[1::2]))) - 2, 0)
    x1 = min(int(math.ceil(max(outer_f[0::2]))) + 3, width)
    y1 = min(int(math.ceil(max(outer_f[1::2]))) + 3, height)

    def shift(flat):
        return [v - (x0 if i % 2 == 0 else y0) for i, v in enumerate(flat)]

    # translation by whole pixels of 1/8-grid vertices is exact, so rasterising on the crop
    # gives exactly the pixels pycocotools gives on the whole image (checked by the tests)
    mask = _rasterize([shift(outer_f)], y1 - y0, x1 - x0)
    if hole_f is not None:
        mask &= ~_rasterize([shift(hole_f)], y1 - y0, x1 - x0)
    area = int(mask.sum())
    if area == 0:
        return None
    return Placed(shape, category_id, outer_f, hole_f, y0, x0, mask, area)


def sample_placement(shape: str, category_id: int, rng: np.random.Generator, height: int, width: int,
                     size_mix: Sequence[float]) -> Optional[Placed]:
    """Draw size, aspect, rotation and position of one shape; rasterise it on its crop
    (None when no pixel is inside)."""
    target = _target_area(rng, height, width, size_mix)
    outer_t, hole_t = _posed_shape(shape, rng, target, height, width)
    xs = [p[0] for p in outer_t]
    ys = [p[1] for p in outer_t]
    # centre so that the whole polygon lies in [1, W - 2] x [1, H - 2]
    cx = rng.uniform(1.0 - min(xs), width - 2.0 - max(xs))
    cy = rng.uniform(1.0 - min(ys), height - 2.0 - max(ys))
    outer_f = _on_grid(outer_t, cx, cy, height, width)
    hole_f = _on_grid(hole_t, cx, cy, height, width) if hole_t else None
    return _rasterize_on_crop(shape, category_id, outer_f, hole_f, height, width)
