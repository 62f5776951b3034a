"""Deterministic synthetic COCO-format instance-segmentation data ("shapes").

Each image is a smooth random colour field plus pixel noise, with 1..N filled shapes
(:data:`SHAPES`) painted on it in random colours, positions, sizes, rotations and aspect ratios,
with exact masks (the painted pixels are what the annotations decode to) and controlled
occlusion. Same seed and arguments -> byte-identical files. The rules, module by module:

  shapes   the shape polygons, the rasteriser (pycocotools') and the placement of one shape
  render   one image: background, the occlusion rule, the annotations (render_synthetic_image)
  writer   a dataset on disk (generate_synthetic_coco) and the one naming of splits (synthetic_split)

``write_bad_images`` (bad image files for the reader's tests) lives in blendstudy.data.bad_images
and is importable from here too.
"""

from ..bad_images import write_bad_images
from .render import DEFAULT_IMAGE_SIZE, RenderedImage, SyntheticConfig, render_synthetic_image
from .shapes import SHAPES
from .writer import SyntheticDataset, ensure_synthetic_coco, generate_synthetic_coco, synthetic_split

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "SHAPES",
    "RenderedImage",
    "SyntheticConfig",
    "SyntheticDataset",
    "ensure_synthetic_coco",
    "generate_synthetic_coco",
    "render_synthetic_image",
    "synthetic_split",
    "write_bad_images",
]
