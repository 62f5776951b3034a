"""Rendering of one synthetic image: background, shapes placed under the occlusion rule, annotations.

Each image is a smooth random colour field plus pixel noise, with 1..N filled shapes
(blendstudy.data.synthetic.shapes) painted on it in random colours (independent of the class),
positions, sizes, rotations and aspect ratios.

Segmentation format.  An object that no later object covers (not a single pixel) and that
is simply connected is stored as its exact polygon; a ``ring`` (it has a hole) and any
occluded object are stored as compressed RLE (``counts`` a str) of the *visible* mask.

Occlusion rule.  Objects are placed one after the other, later ones on top.  A candidate
placement is accepted only if every earlier object keeps at least ``min_visible_fraction``
of its own pixels and at least ``min_visible_pixels`` pixels visible (and the candidate has
at least ``min_visible_pixels`` pixels); otherwise a new placement is drawn, up to
``max_tries`` times, after which the object is skipped.  So every painted object is
annotated and no annotation is hidden below the threshold.  With ``occlusion=False`` a
candidate must not touch any earlier object at all.  ``area`` is the visible pixel count
and ``bbox`` the tight ``[x, y, w, h]`` box of the visible pixels (integers, pixels).

Determinism.  Image ``i`` uses ``numpy.random.Generator(PCG64(SeedSequence(seed,
spawn_key=(i,))))`` so it does not depend on how many images are generated.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from blendstudy.coco.rle import encode_rle

from .shapes import SHAPES, SIMPLY_CONNECTED, Placed, sample_placement

#: Default image size, (height, width) in pixels.
DEFAULT_IMAGE_SIZE: Tuple[int, int] = (480, 640)


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything (besides seed and index) that determines a synthetic image.

    Attributes:
        image_sizes: candidate (height, width) sizes in pixels; each image draws one.
        objects_per_image: inclusive (min, max) number of objects *attempted* per image.
        classes: shape names (subset of :data:`SHAPES`); category ids are 1.. in this order.
        occlusion: allow later objects to cover earlier ones (see the module docstring).
        min_visible_fraction: an object must keep this fraction of its pixels visible.
        min_visible_pixels: and at least this many visible pixels.
        size_mix: probabilities of the small / medium / large area buckets.
        max_tries: placements tried per object before it is skipped.
        noise: amplitude (0..255 levels) of the uniform per-pixel noise on background and objects.
    """

    image_sizes: Tuple[Tuple[int, int], ...] = (DEFAULT_IMAGE_SIZE,)
    objects_per_image: Tuple[int, int] = (1, 6)
    classes: Tuple[str, ...] = SHAPES
    occlusion: bool = True
    min_visible_fraction: float = 0.3
    min_visible_pixels: int = 32
    size_mix: Tuple[float, float, float] = (0.4, 0.35, 0.25)
    max_tries: int = 30
    noise: int = 8

    def __post_init__(self) -> None:
        if not self.image_sizes:
            raise ValueError("image_sizes must not be empty")
        for h, w in self.image_sizes:
            if int(h) < 32 or int(w) < 32:
                raise ValueError(f"image size must be at least 32x32, got {(h, w)}")
        lo, hi = self.objects_per_image
        if not 0 <= lo <= hi or hi > 1000:
            raise ValueError(
                f"objects_per_image must be 0 <= min <= max <= 1000, got {self.objects_per_image}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be non-empty and unique, got {self.classes}")
        unknown = [c for c in self.classes if c not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape classes {unknown}; known: {list(SHAPES)}")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise ValueError("min_visible_fraction must be in [0, 1]")
        if len(self.size_mix) != 3 or min(self.size_mix) < 0 or sum(self.size_mix) <= 0:
            raise ValueError(f"size_mix must be 3 non-negative weights, got {self.size_mix}")

    def to_dict(self) -> Dict[str, Any]:
        """Return a JSON-ready dict of the fields (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class RenderedImage:
    """One rendered image.

    Attributes:
        image: (H, W, 3) uint8 RGB image.
        label_map: (H, W) uint16; 0 = background, k = the painted, visible pixels of
            ``annotations[k - 1]`` (exactly what its segmentation decodes to).
        annotations: COCO annotation dicts without ``id`` / ``image_id`` (category_id,
            segmentation, area, bbox, iscrowd), in painting order (bottom first).
        shapes: the shape name of each annotation.
        full_areas: pixel count of each object's whole shape (before occlusion).
    """

    image: np.ndarray
    label_map: np.ndarray
    annotations: List[Dict[str, Any]] = field(default_factory=list)
    shapes: List[str] = field(default_factory=list)
    full_areas: List[int] = field(default_factory=list)


def _image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: PCG64 seeded by SeedSequence(seed, spawn_key=(index,))."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(int(index),))))


def _background(rng: np.random.Generator, height: int, width: int, noise: int) -> np.ndarray:
    """Smooth random colour field (2 bilinear-upsampled random grids) + uniform noise; (H, W, 3) uint8."""
    gh, gw = (int(v) for v in rng.integers(2, 6, size=2))
    coarse = rng.integers(0, 256, size=(gh, gw, 3), dtype=np.uint8)
    fh, fw = (int(v) for v in rng.integers(6, 16, size=2))
    fine = rng.integers(0, 256, size=(fh, fw, 3), dtype=np.uint8)
    bilinear = Image.Resampling.BILINEAR
    a = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), bilinear), np.int16)
    b = np.asarray(Image.fromarray(fine, "RGB").resize((width, height), bilinear), np.int16)
    bg = a + (b - 128) // 4  # coarse colour drift plus finer, weaker blotches
    if noise > 0:
        bg += rng.integers(-noise, noise + 1, size=(height, width, 3), dtype=np.int16)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """Random RGB colour (float64, 0..255), >= 90 away from the mean colour ``under`` it if possible."""
    mean = under.reshape(-1, 3).mean(axis=0) if under.size else np.full(3, 128.0)
    best, best_d = None, -1.0
    for _ in range(20):
        colour = rng.integers(0, 256, size=3).astype(np.float64)
        d = float(np.linalg.norm(colour - mean))
        if d > best_d:
            best, best_d = colour, d
        if d >= 90.0:
            break
    return best


def _paint(rng: np.random.Generator, canvas: np.ndarray, p: Placed, noise: int) -> None:
    """Paint ``p`` into ``canvas`` through its exact mask: random colour + linear shading + noise."""
    h, w = p.mask.shape
    view = canvas[p.y0:p.y0 + h, p.x0:p.x0 + w]
    colour = _pick_colour(rng, view[p.mask])
    amp = rng.uniform(0.0, 40.0)
    ang = rng.uniform(0.0, 2 * math.pi)
    extent = max(h, w) / 2.0
    yy, xx = np.mgrid[0:h, 0:w]
    shade = ((xx - w / 2.0) * math.cos(ang) + (yy - h / 2.0) * math.sin(ang)) * (amp / extent)
    tex = colour[None, None, :] + shade[:, :, None]
    if noise > 0:
        tex = tex + rng.integers(-noise, noise + 1, size=(h, w, 3))
    view[p.mask] = np.clip(np.rint(tex[p.mask]), 0, 255).astype(np.uint8)


def _occlusion_allows(covered: np.ndarray, placed: List[Placed], visible: List[int], cfg: SyntheticConfig) -> bool:
    """Whether a candidate covering ``covered[j]`` pixels of each earlier object j may be placed:
    it covers nothing, or occlusion is allowed and every object keeps enough pixels visible."""
    if not covered.any():
        return True
    if not cfg.occlusion:
        return False
    for j in np.flatnonzero(covered):
        keep = max(cfg.min_visible_pixels, math.ceil(cfg.min_visible_fraction * placed[j].full_area))
        if visible[j] - int(covered[j]) < keep:
            return False
    return True


def _place_objects(rng: np.random.Generator, cfg: SyntheticConfig, canvas: np.ndarray, label: np.ndarray
                   ) -> Tuple[List[Placed], List[int]]:
    """Draw the objects of one image and paint the accepted ones into ``canvas`` and ``label``
    (k = the pixels of object k, 1-based). Returns the objects and their visible pixel counts."""
    height, width = label.shape
    lo, hi = cfg.objects_per_image
    n_objects = int(rng.integers(lo, hi + 1))
    placed: List[Placed] = []
    visible: List[int] = []  # visible pixel count per placed object
    for _ in range(n_objects):
        cls = int(rng.integers(len(cfg.classes)))
        shape = cfg.classes[cls]
        for _try in range(cfg.max_tries):
            cand = sample_placement(shape, cls + 1, rng, height, width, cfg.size_mix)
            if cand is None or cand.full_area < cfg.min_visible_pixels:
                continue
            h, w = cand.mask.shape
            under = label[cand.y0:cand.y0 + h, cand.x0:cand.x0 + w][cand.mask]
            covered = np.bincount(under, minlength=len(placed) + 1)[1:]
            if not _occlusion_allows(covered, placed, visible, cfg):
                continue
            for j in np.flatnonzero(covered):
                visible[j] -= int(covered[j])
            _paint(rng, canvas, cand, cfg.noise)
            label[cand.y0:cand.y0 + h, cand.x0:cand.x0 + w][cand.mask] = len(placed) + 1
            placed.append(cand)
            visible.append(cand.full_area)
            break
    return placed, visible


def _annotation(p: Placed, k: int, label: np.ndarray, visible: int) -> Dict[str, Any]:
    """The COCO annotation of object ``k`` (1-based; ``visible`` pixels left in ``label``):
    its polygon when nothing covers it and it has no hole, else the RLE of its visible mask."""
    h, w = p.mask.shape
    vis = label[p.y0:p.y0 + h, p.x0:p.x0 + w] == k
    area = int(vis.sum())
    assert area == visible, "visible-pixel bookkeeping is out of sync"
    rows = np.flatnonzero(vis.any(axis=1))
    cols = np.flatnonzero(vis.any(axis=0))
    bbox = [int(p.x0 + cols[0]), int(p.y0 + rows[0]),
            int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
    if area == p.full_area and p.shape in SIMPLY_CONNECTED:
        segmentation: Any = [list(p.outer)]
    else:
        full = np.zeros(label.shape, dtype=bool)
        full[p.y0:p.y0 + h, p.x0:p.x0 + w] = vis
        segmentation = encode_rle(full[None])[0]
    return {"area": area, "bbox": bbox, "category_id": p.category_id, "iscrowd": 0,
            "segmentation": segmentation}


def render_synthetic_image(seed: int, index: int, config: Optional[SyntheticConfig] = None) -> RenderedImage:
    """Render image ``index`` of the synthetic dataset with ``seed`` and ``config``.

    Pure function of its arguments (see the module docstring for the rules).

    Returns:
        :class:`RenderedImage` with the RGB image, the label map of visible pixels and the
        COCO annotations (pixel units).
    """
    cfg = config or SyntheticConfig()
    rng = _image_rng(seed, index)
    height, width = (int(v) for v in cfg.image_sizes[int(rng.integers(len(cfg.image_sizes)))])
    canvas = _background(rng, height, width, cfg.noise)
    label = np.zeros((height, width), dtype=np.uint16)
    placed, visible = _place_objects(rng, cfg, canvas, label)
    annotations = [_annotation(p, k, label, visible[k - 1]) for k, p in enumerate(placed, start=1)]
    return RenderedImage(image=canvas, label_map=label, annotations=annotations,
                         shapes=[p.shape for p in placed], full_areas=[p.full_area for p in placed])
