"""Data layer: image reading, COCO datasets, image folders and the synthetic shapes dataset."""

from .bad_images import write_bad_images
from .coco import CocoDataset, DatasetError, ImageFolder
from .images import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image
from .synthetic import (
    DEFAULT_IMAGE_SIZE,
    SHAPES,
    RenderedImage,
    SyntheticConfig,
    SyntheticDataset,
    generate_synthetic_coco,
    render_synthetic_image,
)

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "IMAGE_EXTENSIONS",
    "SHAPES",
    "CocoDataset",
    "DatasetError",
    "ImageFolder",
    "ImageReadError",
    "RenderedImage",
    "SyntheticConfig",
    "SyntheticDataset",
    "generate_synthetic_coco",
    "list_images",
    "read_image",
    "render_synthetic_image",
    "write_bad_images",
]
