"""Deterministic synthetic COCO-format instance-segmentation data ("shapes"), and bad-image fixtures.

Each image is a smooth random colour field plus pixel noise, with 1..N filled shapes
(:data:`SHAPES`) painted on it in random colours (independent of the class), positions,
sizes, rotations and aspect ratios.  Object areas are drawn from COCO's small / medium /
large buckets (< 32**2, 32**2..96**2, > 96**2 pixels for a 480x640 image, scaled by the
image's area for other sizes).

Exactness.  Every shape is a polygon (circles and ellipses are dense regular polygons, so
the polygon *is* the geometry) whose vertices lie on a 1/8-pixel grid.  Its pixels are
rasterised with pycocotools' own polygon rasteriser (``frPyObjects``), i.e. the very
routine ``COCO.annToMask`` uses, and the image is painted through exactly that mask with
no anti-aliasing.  PIL's ``ImageDraw.polygon`` was measured to disagree with pycocotools
on ~3% of the pixels of random polygons, hence pycocotools is the rasteriser.  A stored
polygon therefore decodes (``annToMask``) to exactly the painted pixels.

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
spawn_key=(i,))))`` so it does not depend on how many images are generated; PNGs are
written by PIL with fixed parameters and no time stamp, the JSON with sorted keys.  Same
seed and arguments -> byte-identical files (same numpy / Pillow / zlib builds).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

from blendstudy.masks import encode_rle

from .images import PathLike

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "SHAPES",
    "RenderedImage",
    "SyntheticConfig",
    "SyntheticDataset",
    "generate_synthetic_coco",
    "render_synthetic_image",
    "write_bad_images",
]

#: The shape classes, in default category order (category id = position + 1).
SHAPES: Tuple[str, ...] = ("circle", "ellipse", "rectangle", "triangle", "hexagon", "star", "ring", "cross")

#: Default image size, (height, width) in pixels.
DEFAULT_IMAGE_SIZE: Tuple[int, int] = (480, 640)

_REFERENCE_AREA = 480 * 640  # COCO area buckets are defined for images of about this many pixels
_SIMPLY_CONNECTED = frozenset(SHAPES) - {"ring"}
_GRID = 8.0  # polygon vertices lie on a 1/8-pixel grid: exact in binary, so shifts are exact
_FILE_RE = re.compile(r"^\d{6,}\.png$")


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


@dataclass(frozen=True)
class SyntheticDataset:
    """Where a generated dataset lies, and how to re-render any of its images.

    Attributes:
        root: the output folder.
        ann_file: ``root/annotations/instances_<split>.json``.
        image_dir: ``root/<split>`` holding ``<image_id:06d>.png``.
        num_images, num_annotations: counts written.
        seed, config: the generation parameters.
    """

    root: Path
    ann_file: Path
    image_dir: Path
    num_images: int
    num_annotations: int
    seed: int
    config: SyntheticConfig

    def render(self, index: int) -> RenderedImage:
        """Re-render image ``index`` (0-based; image id = index + 1) in memory."""
        return render_synthetic_image(self.seed, index, self.config)


# ----------------------------------------------------------------------------------------------
# geometry


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
class _Placed:
    shape: str
    category_id: int
    outer: List[float]  # flat image-coordinate polygon
    hole: Optional[List[float]]
    y0: int
    x0: int
    mask: np.ndarray  # full-shape mask on the crop [y0:y0+h, x0:x0+w]
    full_area: int


def _sample_placement(shape: str, category_id: int, rng: np.random.Generator, height: int, width: int,
                      cfg: SyntheticConfig) -> Optional[_Placed]:
    """Draw size, aspect, rotation and position of one shape; rasterise it on its crop."""
    k2 = height * width / _REFERENCE_AREA
    short = min(height, width)
    large_hi = min((0.55 * short) ** 2, 256.0 ** 2 * k2)
    bounds = [(12.0 ** 2 * k2, 32.0 ** 2 * k2), (32.0 ** 2 * k2, 96.0 ** 2 * k2), (96.0 ** 2 * k2, large_hi)]
    mix = np.asarray(cfg.size_mix, dtype=np.float64)
    bucket = int(rng.choice(3, p=mix / mix.sum()))
    lo, hi = bounds[bucket]
    hi = max(hi, lo * 1.01)
    target = math.exp(rng.uniform(math.log(lo), math.log(hi)))

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
        xs = [p[0] for p in outer_t]
        ys = [p[1] for p in outer_t]
    # centre so that the whole polygon lies in [1, W - 2] x [1, H - 2]
    cx = rng.uniform(1.0 - min(xs), width - 2.0 - max(xs))
    cy = rng.uniform(1.0 - min(ys), height - 2.0 - max(ys))

    def place(pts):
        flat: List[float] = []
        for x, y in pts:
            flat.append(min(max(round((x + cx) * _GRID) / _GRID, 0.0), width - 1.0))
            flat.append(min(max(round((y + cy) * _GRID) / _GRID, 0.0), height - 1.0))
        return flat

    outer_f = place(outer_t)
    hole_f = place(hole_t) if hole_t else None
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
    return _Placed(shape, category_id, outer_f, hole_f, y0, x0, mask, area)


# ----------------------------------------------------------------------------------------------
# rendering


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


def _paint(rng: np.random.Generator, canvas: np.ndarray, p: _Placed, noise: int) -> None:
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
    lo, hi = cfg.objects_per_image
    n_objects = int(rng.integers(lo, hi + 1))

    placed: List[_Placed] = []
    visible: List[int] = []  # visible pixel count per placed object
    for _ in range(n_objects):
        cls = int(rng.integers(len(cfg.classes)))
        shape = cfg.classes[cls]
        for _try in range(cfg.max_tries):
            cand = _sample_placement(shape, cls + 1, rng, height, width, cfg)
            if cand is None or cand.full_area < cfg.min_visible_pixels:
                continue
            h, w = cand.mask.shape
            under = label[cand.y0:cand.y0 + h, cand.x0:cand.x0 + w][cand.mask]
            covered = np.bincount(under, minlength=len(placed) + 1)[1:]
            if covered.any():
                if not cfg.occlusion:
                    continue
                ok = True
                for j in np.flatnonzero(covered):
                    keep = max(cfg.min_visible_pixels,
                               math.ceil(cfg.min_visible_fraction * placed[j].full_area))
                    if visible[j] - int(covered[j]) < keep:
                        ok = False
                        break
                if not ok:
                    continue
                for j in np.flatnonzero(covered):
                    visible[j] -= int(covered[j])
            _paint(rng, canvas, cand, cfg.noise)
            label[cand.y0:cand.y0 + h, cand.x0:cand.x0 + w][cand.mask] = len(placed) + 1
            placed.append(cand)
            visible.append(cand.full_area)
            break

    annotations: List[Dict[str, Any]] = []
    for k, p in enumerate(placed, start=1):
        h, w = p.mask.shape
        vis = label[p.y0:p.y0 + h, p.x0:p.x0 + w] == k
        area = int(vis.sum())
        assert area == visible[k - 1], "visible-pixel bookkeeping is out of sync"
        rows = np.flatnonzero(vis.any(axis=1))
        cols = np.flatnonzero(vis.any(axis=0))
        bbox = [int(p.x0 + cols[0]), int(p.y0 + rows[0]),
                int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        if area == p.full_area and p.shape in _SIMPLY_CONNECTED:
            segmentation: Any = [list(p.outer)]
        else:
            full = np.zeros((height, width), dtype=bool)
            full[p.y0:p.y0 + h, p.x0:p.x0 + w] = vis
            segmentation = encode_rle(full[None])[0]
        annotations.append({"area": area, "bbox": bbox, "category_id": p.category_id, "iscrowd": 0,
                            "segmentation": segmentation})
    return RenderedImage(image=canvas, label_map=label, annotations=annotations,
                         shapes=[p.shape for p in placed], full_areas=[p.full_area for p in placed])


# ----------------------------------------------------------------------------------------------
# dataset writer


def _normalize_sizes(
    image_size: Union[Tuple[int, int], Sequence[Tuple[int, int]]],
) -> Tuple[Tuple[int, int], ...]:
    """Accept one (h, w) pair or a sequence of pairs; return a tuple of (int, int) pairs."""
    seq = list(image_size)
    if len(seq) == 2 and all(isinstance(v, (int, np.integer)) for v in seq):
        return ((int(seq[0]), int(seq[1])),)
    out = []
    for hw in seq:
        h, w = hw
        out.append((int(h), int(w)))
    return tuple(out)


def generate_synthetic_coco(
    out_dir: PathLike,
    num_images: int,
    seed: int = 0,
    image_size: Union[Tuple[int, int], Sequence[Tuple[int, int]]] = DEFAULT_IMAGE_SIZE,
    objects_per_image: Union[int, Tuple[int, int]] = (1, 6),
    classes: Optional[Sequence[str]] = None,
    occlusion: bool = True,
    split_name: str = "train",
    *,
    min_visible_fraction: float = 0.3,
    min_visible_pixels: int = 32,
    noise: int = 8,
    overwrite: bool = False,
    show_progress: Optional[bool] = None,
    png_compress_level: int = 1,
) -> SyntheticDataset:
    """Write a deterministic synthetic COCO instance-segmentation dataset.

    Layout: ``out_dir/<split_name>/<image_id:06d>.png`` (RGB, 8 bit) and
    ``out_dir/annotations/instances_<split_name>.json`` (written last, atomically).  Image
    ids are 1..num_images, annotation ids 1.. in order; categories are ``classes`` with ids
    1..K and supercategory ``"shape"``.

    Args:
        out_dir: output folder (created).
        num_images: number of images (>= 0).
        seed: master seed; image i depends only on (seed, i, config).
        image_size: one (height, width) in pixels, or a sequence of them from which each
            image draws one uniformly (e.g. ``[(480, 640), (2304, 3840)]``).
        objects_per_image: inclusive (min, max) objects attempted per image, or an int.
        classes: shape names from :data:`SHAPES`; None -> all of them.
        occlusion: let later objects partly cover earlier ones.
        split_name: names the image folder and the annotation file.
        min_visible_fraction, min_visible_pixels: the occlusion acceptance thresholds.
        noise: per-pixel uniform noise amplitude (0..255 levels); 0 gives much smaller PNGs.
        overwrite: replace an existing dataset of this split (its ``NNNNNN.png`` files are
            removed first); if False an existing annotation file raises FileExistsError.
        show_progress: tqdm bar on stderr; None -> only for 50 images or more.
        png_compress_level: zlib level of the PNGs (1 = fast; any fixed value is deterministic).

    Returns:
        :class:`SyntheticDataset` with ``ann_file`` and ``image_dir``.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if isinstance(objects_per_image, (int, np.integer)):
        objects_per_image = (int(objects_per_image), int(objects_per_image))
    cfg = SyntheticConfig(
        image_sizes=_normalize_sizes(image_size),
        objects_per_image=(int(objects_per_image[0]), int(objects_per_image[1])),
        classes=tuple(classes) if classes is not None else SHAPES,
        occlusion=bool(occlusion),
        min_visible_fraction=float(min_visible_fraction),
        min_visible_pixels=int(min_visible_pixels),
        noise=int(noise),
    )
    if not split_name or "/" in split_name or split_name in (".", "..", "annotations"):
        raise ValueError(f"bad split_name {split_name!r}")
    root = Path(out_dir)
    image_dir = root / split_name
    ann_file = root / "annotations" / f"instances_{split_name}.json"
    if ann_file.exists() and not overwrite:
        raise FileExistsError(f"{ann_file}: dataset already exists (pass overwrite=True to replace it)")
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        if ann_file.exists():
            ann_file.unlink()
        for old in image_dir.iterdir():
            if old.is_file() and _FILE_RE.match(old.name):
                old.unlink()

    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    show = num_images >= 50 if show_progress is None else bool(show_progress)
    for index in tqdm(range(num_images), desc=f"synthetic {split_name}", unit="img", disable=not show):
        image_id = index + 1
        rendered = render_synthetic_image(seed, index, cfg)
        height, width = rendered.label_map.shape
        file_name = f"{image_id:06d}.png"
        Image.fromarray(rendered.image, "RGB").save(
            image_dir / file_name, format="PNG", compress_level=int(png_compress_level), optimize=False)
        images.append({"file_name": file_name, "height": int(height), "id": image_id, "width": int(width)})
        for ann in rendered.annotations:
            annotations.append(dict(ann, id=len(annotations) + 1, image_id=image_id))

    dataset = {
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(cfg.classes)],
        "images": images,
        "info": {
            "config": cfg.to_dict(),
            "description": "blendstudy synthetic shapes (instance segmentation)",
            "generator": "blendstudy.data.synthetic.generate_synthetic_coco",
            "seed": int(seed),
            "split": split_name,
            "version": "1",
        },
        "licenses": [],
    }
    tmp = ann_file.with_name(ann_file.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(dataset, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, ann_file)
    return SyntheticDataset(root=root, ann_file=ann_file, image_dir=image_dir, num_images=num_images,
                            num_annotations=len(annotations), seed=int(seed), config=cfg)


# ----------------------------------------------------------------------------------------------
# bad / odd image files for reader tests


def write_bad_images(out_dir: PathLike) -> Dict[str, Path]:
    """Write small bad or unusual image files (deterministic content) into ``out_dir``.

    Returns a dict name -> path:

    * ``missing``: ``does_not_exist.jpg`` (not created).
    * ``empty``: 0-byte ``empty.jpg``.
    * ``truncated``: ``truncated.png``, the first half of a valid 64x48 noisy RGB PNG.
    * ``not_image``: ``not_an_image.jpg``, a text file.
    * ``gray``: ``gray.png``, mode "L", 24x32, pixel (y, x) = 8 * x (0..248).
    * ``rgba``: ``rgba.png``, mode "RGBA", 16x16: colour (10, 20, 30) with alpha 0 on the
      left half, (200, 100, 50) with alpha 128 on the right half.
    * ``palette``: ``palette.png``, mode "P", 16x16, left half palette colour (255, 0, 0),
      right half (0, 0, 255).
    * ``gray16``: ``gray16.png``, 16-bit ("I;16"), 1x6 values [0, 100, 255, 256, 1000, 65535].
    * ``exif_rotated``: ``exif_rotated.jpg``, stored 40 (H) x 60 (W) with quadrants
      top-left red, top-right green, bottom-left blue, bottom-right white and EXIF
      orientation 6; viewed upright it is 60 x 40 with top-left blue, top-right red,
      bottom-left white, bottom-right green (JPEG: compare with a tolerance).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {"missing": out / "does_not_exist.jpg"}

    paths["empty"] = out / "empty.jpg"
    paths["empty"].write_bytes(b"")

    rng = np.random.Generator(np.random.PCG64(12345))
    noisy = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    full = out / "full_for_truncation.png"
    Image.fromarray(noisy, "RGB").save(full, format="PNG", compress_level=1)
    data = full.read_bytes()
    full.unlink()
    paths["truncated"] = out / "truncated.png"
    paths["truncated"].write_bytes(data[: len(data) // 2])

    paths["not_image"] = out / "not_an_image.jpg"
    paths["not_image"].write_text("this is plain text, not a JPEG\n", encoding="utf-8")

    gray = np.tile((np.arange(32, dtype=np.uint8) * 8)[None, :], (24, 1))
    paths["gray"] = out / "gray.png"
    Image.fromarray(gray, "L").save(paths["gray"], format="PNG")

    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (10, 20, 30, 0)
    rgba[:, 8:] = (200, 100, 50, 128)
    paths["rgba"] = out / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(paths["rgba"], format="PNG")

    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    pal_idx = np.zeros((16, 16), dtype=np.uint8)
    pal_idx[:, 8:] = 1
    pal.frombytes(pal_idx.tobytes())
    paths["palette"] = out / "palette.png"
    pal.save(paths["palette"], format="PNG")

    g16 = np.array([[0, 100, 255, 256, 1000, 65535]], dtype=np.uint16)
    paths["gray16"] = out / "gray16.png"
    Image.fromarray(g16).save(paths["gray16"], format="PNG")

    quad = np.zeros((40, 60, 3), dtype=np.uint8)
    quad[:20, :30] = (255, 0, 0)
    quad[:20, 30:] = (0, 255, 0)
    quad[20:, :30] = (0, 0, 255)
    quad[20:, 30:] = (255, 255, 255)
    exif = Image.Exif()
    exif[274] = 6
    paths["exif_rotated"] = out / "exif_rotated.jpg"
    Image.fromarray(quad, "RGB").save(paths["exif_rotated"], format="JPEG", quality=95, exif=exif.tobytes())
    return paths


def ensure_synthetic_coco(out_dir: PathLike, num_images: int, seed: int = 0, split_name: str = "train",
                          **kwargs: Any) -> Tuple[Path, Path]:
    """(ann_file, image_dir) of a synthetic dataset, generated only if not already complete there
    (the annotations file is written last and atomically, so its presence means complete).
    The folder name should encode the arguments: a different request must use a different folder."""
    out = Path(out_dir)
    ann = out / "annotations" / f"instances_{split_name}.json"
    if not ann.exists():
        generate_synthetic_coco(out, num_images, seed=seed, split_name=split_name, overwrite=True, **kwargs)
    return ann, out / split_name


def synthetic_split(root: PathLike, split: str, num_images: int, seed: int = 0,
                    image_size: Union[Tuple[int, int], Sequence[Tuple[int, int]]] = DEFAULT_IMAGE_SIZE,
                    objects_per_image: Tuple[int, int] = (1, 6), show_progress: bool = False) -> Tuple[Path, Path]:
    """(ann_file, image_dir) of the synthetic split named by its arguments, generated on first use
    under ``root``. The ONE naming of synthetic splits (study params, CLI, training, tests):
    ``synthetic_<split>_seed<seed>_<n>_<HxW[_HxW...]>[_obj<lo>-<hi>]``, so a different request
    never reuses another's folder. Image i depends only on (seed, i, sizes, objects)."""
    sizes = [tuple(image_size)] if isinstance(image_size[0], int) else [tuple(s) for s in image_size]
    tag = "_".join("x".join(str(v) for v in sz) for sz in sizes)
    if tuple(objects_per_image) != (1, 6):
        tag += "_obj" + "-".join(str(v) for v in objects_per_image)
    out = Path(root) / f"synthetic_{split}_seed{seed}_{int(num_images)}_{tag}"
    size_arg = sizes[0] if len(sizes) == 1 else sizes
    return ensure_synthetic_coco(out, int(num_images), seed=int(seed), image_size=size_arg,
                                 objects_per_image=tuple(objects_per_image), split_name=split,
                                 show_progress=show_progress)
