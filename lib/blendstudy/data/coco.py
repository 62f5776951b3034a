"""COCO-format datasets (pycocotools) and plain image folders."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from pycocotools.coco import COCO

from .images import PathLike, list_images

__all__ = ["CocoDataset", "DatasetError", "ImageFolder"]


class DatasetError(ValueError):
    """A dataset's annotation file or image folder is missing or malformed; the message names it."""


class CocoDataset:
    """A COCO instance-segmentation annotation file plus the folder holding its images.

    Attributes:
        ann_file: the annotation JSON (Path).
        image_dir: the image folder (Path); ``file_name`` entries are relative to it.
        coco: the ``pycocotools.coco.COCO`` object (index already built).
        image_ids: all image ids, sorted ascending.
        category_ids: COCO category ids, sorted ascending.
        class_names: category names, index = contiguous id.
        category_id_to_contiguous: COCO category id -> contiguous id 0..K-1 (sorted-id order,
            detectron2's convention).
        contiguous_to_category_id: the inverse mapping.
    """

    def __init__(self, ann_file: PathLike, image_dir: PathLike) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        if not self.ann_file.is_file():
            raise DatasetError(f"{self.ann_file}: annotation file not found")
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image directory not found")
        try:
            with open(self.ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{self.ann_file}: malformed JSON ({exc})") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self.ann_file}: cannot read ({type(exc).__name__}: {exc})") from exc
        _validate(self.ann_file, data)

        with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress messages
            coco = COCO()
            coco.dataset = data
            try:
                coco.createIndex()
            except (KeyError, TypeError) as exc:
                raise DatasetError(f"{self.ann_file}: malformed COCO entries ({exc!r})") from exc
        self.coco = coco
        self.image_ids: List[int] = sorted(int(i) for i in coco.imgs)
        self.category_ids: List[int] = sorted(int(c) for c in coco.cats)
        self.class_names: List[str] = [str(coco.cats[c]["name"]) for c in self.category_ids]
        self.category_id_to_contiguous: Dict[int, int] = {c: i for i, c in enumerate(self.category_ids)}
        self.contiguous_to_category_id: Dict[int, int] = {i: c for i, c in enumerate(self.category_ids)}

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.image_ids)

    def __repr__(self) -> str:
        return (f"CocoDataset(ann_file={str(self.ann_file)!r}, images={len(self)}, "
                f"categories={len(self.category_ids)})")

    def image_info(self, image_id: int) -> Dict[str, Any]:
        """Return a copy of the COCO ``images`` entry (id, file_name, height, width in pixels, ...)."""
        try:
            return dict(self.coco.imgs[image_id])
        except KeyError:
            raise KeyError(f"{self.ann_file}: no image with id {image_id}") from None

    def image_path(self, image_id: int) -> Path:
        """Return the image file of ``image_id``: ``image_dir / file_name`` (not checked to exist)."""
        return self.image_dir / self.image_info(image_id)["file_name"]

    def annotations(self, image_id: int) -> List[Dict[str, Any]]:
        """Return the annotation dicts of ``image_id`` (crowd ones included), in annotation-id order."""
        if image_id not in self.coco.imgs:
            raise KeyError(f"{self.ann_file}: no image with id {image_id}")
        anns = self.coco.imgToAnns.get(image_id, [])
        return sorted(anns, key=lambda a: a["id"])

    def subset(self, n: Optional[int] = None) -> List[int]:
        """Return the first ``n`` image ids in ascending order (all of them when ``n`` is None).

        Deterministic: it depends only on the annotation file.  ``n`` larger than the dataset
        gives every id; a negative ``n`` raises ValueError.
        """
        if n is None:
            return list(self.image_ids)
        if n < 0:
            raise ValueError(f"subset size must be >= 0 or None, got {n}")
        return self.image_ids[:n]


def _validate(ann_file: Path, data: Any) -> None:
    """Raise DatasetError unless ``data`` has the top-level shape of a COCO instances file."""
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_file}: missing or non-list {key!r}")
    if not isinstance(data.get("annotations", []), list):
        raise DatasetError(f"{ann_file}: 'annotations' must be a list")
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "file_name"} <= set(img):
            raise DatasetError(f"{ann_file}: image entry without 'id'/'file_name': {str(img)[:80]}")
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not {"id", "name"} <= set(cat):
            raise DatasetError(f"{ann_file}: category entry without 'id'/'name': {str(cat)[:80]}")


class ImageFolder:
    """Images of one or more folders/files, in :func:`list_images` order.

    Iterating yields ``(name, path)`` with ``name`` the file name (e.g. ``"cat.jpg"``).
    """

    def __init__(self, inputs: Union[PathLike, Sequence[PathLike]]) -> None:
        self.paths: List[Path] = list_images(inputs)

    def __len__(self) -> int:
        """Return the number of image files."""
        return len(self.paths)

    def __iter__(self) -> Iterator[Tuple[str, Path]]:
        for p in self.paths:
            yield p.name, p

    def __repr__(self) -> str:
        return f"ImageFolder({len(self)} images)"
