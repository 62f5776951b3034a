"""Writing synthetic datasets: PNG images and a COCO annotation file, and the one naming of splits.

Determinism.  PNGs are written by PIL with fixed parameters and no time stamp, the JSON with
sorted keys, and image ``i`` depends only on (seed, i, config)
(blendstudy.data.synthetic.render).  Same seed and arguments -> byte-identical files (same
numpy / Pillow / zlib builds).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..images import PathLike
from .render import DEFAULT_IMAGE_SIZE, RenderedImage, SyntheticConfig, render_synthetic_image
from .shapes import SHAPES

_FILE_RE = re.compile(r"^\d{6,}\.png$")

ImageSize = Union[Tuple[int, int], Sequence[Tuple[int, int]]]


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


def _normalize_sizes(
    image_size: ImageSize,
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


def _config(image_size: ImageSize, objects_per_image: Union[int, Tuple[int, int]],
            classes: Optional[Sequence[str]], occlusion: bool, min_visible_fraction: float,
            min_visible_pixels: int, noise: int) -> SyntheticConfig:
    """The SyntheticConfig of generate_synthetic_coco's arguments (an int objects_per_image is
    (n, n); classes None is all of SHAPES)."""
    if isinstance(objects_per_image, (int, np.integer)):
        objects_per_image = (int(objects_per_image), int(objects_per_image))
    return SyntheticConfig(
        image_sizes=_normalize_sizes(image_size),
        objects_per_image=(int(objects_per_image[0]), int(objects_per_image[1])),
        classes=tuple(classes) if classes is not None else SHAPES,
        occlusion=bool(occlusion),
        min_visible_fraction=float(min_visible_fraction),
        min_visible_pixels=int(min_visible_pixels),
        noise=int(noise),
    )


def generate_synthetic_coco(
    out_dir: PathLike,
    num_images: int,
    seed: int = 0,
    image_size: ImageSize = DEFAULT_IMAGE_SIZE,
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
    cfg = _config(image_size, objects_per_image, classes, occlusion, min_visible_fraction, min_visible_pixels,
                  noise)
    root = Path(out_dir)
    image_dir, ann_file = _prepare_split(root, split_name, overwrite)
    show = num_images >= 50 if show_progress is None else bool(show_progress)
    images, annotations = _write_images(image_dir, num_images, seed, cfg, split_name, show, png_compress_level)
    _write_json(_coco_dict(images, annotations, cfg, seed, split_name), ann_file)
    return SyntheticDataset(root=root, ann_file=ann_file, image_dir=image_dir, num_images=num_images,
                            num_annotations=len(annotations), seed=int(seed), config=cfg)


def _prepare_split(root: Path, split_name: str, overwrite: bool) -> Tuple[Path, Path]:
    """Check ``split_name``, create the split's folders and, with ``overwrite``, remove its old
    annotation file and ``NNNNNN.png`` images. Returns (image_dir, ann_file)."""
    if not split_name or "/" in split_name or split_name in (".", "..", "annotations"):
        raise ValueError(f"bad split_name {split_name!r}")
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
    return image_dir, ann_file


def _write_images(image_dir: Path, num_images: int, seed: int, cfg: SyntheticConfig, split_name: str,
                  show: bool, png_compress_level: int) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Render and write images 1..num_images as PNGs; returns their COCO image and annotation
    records (annotation ids 1.. in order)."""
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for index in tqdm(range(num_images), desc=f"synthetic {split_name}", unit="img", disable=not show):
        image_id = index + 1
        rendered: RenderedImage = render_synthetic_image(seed, index, cfg)
        height, width = rendered.label_map.shape
        file_name = f"{image_id:06d}.png"
        Image.fromarray(rendered.image, "RGB").save(
            image_dir / file_name, format="PNG", compress_level=int(png_compress_level), optimize=False)
        images.append({"file_name": file_name, "height": int(height), "id": image_id, "width": int(width)})
        for ann in rendered.annotations:
            annotations.append(dict(ann, id=len(annotations) + 1, image_id=image_id))
    return images, annotations


def _coco_dict(images: List[Dict[str, Any]], annotations: List[Dict[str, Any]], cfg: SyntheticConfig,
               seed: int, split_name: str) -> Dict[str, Any]:
    """The COCO dataset dict of a split (categories = cfg.classes, ids 1..K; generation info)."""
    return {
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


def _write_json(dataset: Dict[str, Any], ann_file: Path) -> None:
    """Write ``dataset`` compactly with sorted keys, atomically (a temporary file, then a rename)."""
    tmp = ann_file.with_name(ann_file.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(dataset, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, ann_file)


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
                    image_size: ImageSize = DEFAULT_IMAGE_SIZE,
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
