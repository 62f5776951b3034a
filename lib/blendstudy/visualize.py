"""Draw detections on an image (PIL only): translucent masks, boxes, class and score labels."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from blendstudy.structures import Detections


def _palette(i: int) -> tuple:
    rng = np.random.default_rng(i * 7919 + 1)
    return tuple(int(c) for c in rng.integers(60, 255, size=3))


def draw_detections(image_bgr: np.ndarray, det: Detections, class_names: Optional[Sequence[str]] = None,
                    score_min: float = 0.3, alpha: float = 0.45) -> Image.Image:
    """RGB PIL image with the detections scoring >= score_min drawn over the BGR input."""
    rgb = image_bgr[:, :, ::-1].astype(np.float32)
    keep = [i for i in range(len(det)) if float(det.scores[i]) >= score_min]
    masks = det.full_masks().cpu().numpy() if keep and (det.masks is not None or det.raw_masks is not None) \
        else None
    for rank, i in enumerate(keep):
        if masks is not None:
            colour = np.array(_palette(int(det.classes[i]) * 31 + rank), dtype=np.float32)
            m = masks[i]
            rgb[m] = rgb[m] * (1 - alpha) + colour * alpha
    out = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for rank, i in enumerate(keep):
        colour = _palette(int(det.classes[i]) * 31 + rank)
        x0, y0, x1, y1 = (float(v) for v in det.boxes[i])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        cls = int(det.classes[i])
        name = class_names[cls] if class_names and cls < len(class_names) else str(cls)
        draw.text((x0 + 2, max(0.0, y0 - 11)), f"{name} {float(det.scores[i]):.2f}", fill=colour)
    return out


def save_visualization(image_bgr: np.ndarray, det: Detections, path: Union[str, Path],
                       class_names: Optional[Sequence[str]] = None, score_min: float = 0.3) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_detections(image_bgr, det, class_names, score_min).save(path)
    return path
