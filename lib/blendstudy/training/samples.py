"""Training samples: the synthetic splits, augmented images with their targets, batches.

TrainData reads a COCO split and augments it (random horizontal flip, resize of the shortest edge,
PIL bilinear as at inference); batch_indices makes the order of the samples a pure function of the
step, so a resumed run sees the same batches; collate normalizes and pads them as the model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from blendstudy import ops
from blendstudy.data.coco import CocoDataset
from blendstudy.data.images import read_image
from blendstudy.data.synthetic import synthetic_split
from blendstudy.model.blendmask import BlendMask
from blendstudy.pipeline import resized_shape


@dataclass
class Sample:
    """One augmented training image.

    image: (3, h, w) float32 BGR, resized (not normalized, not padded).
    boxes: (G, 4) float32 xyxy GT boxes in resized-image pixels.
    classes: (G,) int64 contiguous class ids.
    mask_targets: (G, R, R) float32 {0, 1} GT masks cropped to their boxes, resized to R x R.
    sem: (h, w) int64 thing label map of the resized image (0 = background, class + 1).
    """

    image: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor
    mask_targets: torch.Tensor
    sem: torch.Tensor

    def to(self, device: torch.device) -> Sample:
        """This sample with its targets on ``device`` (the image stays: collate moves the batch)."""
        return Sample(self.image, self.boxes.to(device), self.classes.to(device),
                      self.mask_targets.to(device), self.sem.to(device))


def ensure_synthetic(root: Path, split: str, seed: int, num_images: int) -> CocoDataset:
    """The synthetic split (CocoDataset) of the tiny model, generated on first use
    (blendstudy.data.synthetic.synthetic_split names its folder)."""
    ann, image_dir = synthetic_split(root, split, num_images, seed=seed, show_progress=True)
    return CocoDataset(ann, image_dir)


def _ann_mask(coco, ann: Dict[str, Any]) -> np.ndarray:
    return coco.annToMask(ann).astype(bool)


def _mask_targets(masks: np.ndarray, boxes: np.ndarray, resolution: int) -> torch.Tensor:
    """crop_and_resize of the full-resolution (G, h, w) masks in their original-pixel boxes:
    (G, R, R) float {0, 1} (ROIAlignV2 of the binary mask, >= 0.5)."""
    boxes_t = torch.from_numpy(boxes)
    mask_t = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None]
    rois = torch.cat([torch.arange(len(boxes), dtype=torch.float32)[:, None], boxes_t], dim=1)
    r = resolution
    return (ops.roi_align(mask_t, rois, (r, r), 1.0, 0, True)[:, 0] >= 0.5).float()


def _label_map(masks: np.ndarray, classes: Sequence[int], size: Tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 thing label map of the masks (class + 1, later masks on top), resized to
    ``size`` (nh, nw) with PIL nearest."""
    nh, nw = size
    sem = np.zeros(masks.shape[1:], dtype=np.uint8)
    for m, c in zip(masks, classes):
        sem[m] = c + 1
    return np.asarray(Image.fromarray(sem).resize((nw, nh), Image.NEAREST))


class TrainData:
    """Reads a COCO split and produces augmented samples: random horizontal flip, resize of the
    shortest edge to one of ``min_sizes`` (max ``max_size``), PIL bilinear as at inference."""

    def __init__(self, dataset, min_sizes: Sequence[int], max_size: int, resolution: int,
                 flip: bool = True):
        self.ds = dataset
        self.ids = [i for i in dataset.image_ids if any(not a.get("iscrowd", 0)
                                                        for a in dataset.annotations(i))]
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.resolution = int(resolution)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.ids)

    def _read(self, image_id: int) -> Tuple[np.ndarray, np.ndarray, List[int], np.ndarray]:
        """BGR image, (G, h, w) bool masks, contiguous classes and (G, 4) xyxy boxes of the
        non-crowd annotations of ``image_id``."""
        img = read_image(self.ds.image_path(image_id), "BGR")
        anns = [a for a in self.ds.annotations(image_id) if not a.get("iscrowd", 0)]
        masks = np.stack([_ann_mask(self.ds.coco, a) for a in anns])  # (G, h, w)
        classes = [self.ds.category_id_to_contiguous[int(a["category_id"])] for a in anns]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=np.float32)
        return img, masks, classes, boxes

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        """Sample ``index``, augmented with draws from ``rng`` (flip first, then the size)."""
        img, masks, classes, boxes = self._read(self.ids[index])
        h, w = img.shape[:2]
        if self.flip and rng.random() < 0.5:
            img = img[:, ::-1]
            masks = masks[:, :, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        size = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        nh, nw = resized_shape(h, w, size, self.max_size)
        img_r = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), Image.BILINEAR))
        sem_r = _label_map(masks, classes, (nh, nw))
        targets = _mask_targets(masks, boxes, self.resolution)
        scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
        return Sample(image=torch.from_numpy(np.ascontiguousarray(img_r.transpose(2, 0, 1))).float(),
                      boxes=torch.from_numpy(boxes) * scale, classes=torch.tensor(classes, dtype=torch.int64),
                      mask_targets=targets, sem=torch.from_numpy(sem_r.astype(np.int64)))


def batch_indices(n: int, batch_size: int, iteration: int, seed: int) -> List[int]:
    """Indices of step ``iteration``: consecutive slices of per-epoch permutations, a pure
    function of (n, batch, iteration, seed) so a resumed run sees the same batches."""
    out = []
    for k in range(iteration * batch_size, (iteration + 1) * batch_size):
        epoch, pos = divmod(k, n)
        perm = np.random.default_rng([seed, 7919, epoch]).permutation(n)
        out.append(int(perm[pos]))
    return out


def collate(samples: Sequence[Sample], model: BlendMask) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Normalize and zero-pad the images (bottom/right) to the size divisibility: (N, 3, H, W)."""
    m = model.size_divisibility
    hs = [s.image.shape[1] for s in samples]
    ws = [s.image.shape[2] for s in samples]
    ph, pw = ops.ceil_to_multiple(max(hs), m), ops.ceil_to_multiple(max(ws), m)
    mean = model.pixel_mean.cpu()
    std = model.pixel_std.cpu()
    batch = torch.zeros((len(samples), 3, ph, pw))
    for i, s in enumerate(samples):
        batch[i, :, :hs[i], :ws[i]] = (s.image - mean) / std
    return batch, list(zip(hs, ws))
