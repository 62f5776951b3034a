"""COCO evaluation of a trained model through the real inference path."""

from __future__ import annotations

from typing import Any, Dict, List

from tqdm import tqdm

from blendstudy.coco.convert import detections_to_coco
from blendstudy.coco.evaluate import STAT_NAMES, evaluate_coco
from blendstudy.coco.run import filter_detections
from blendstudy.data.coco import CocoDataset
from blendstudy.data.images import read_image
from blendstudy.model.blendmask import BlendMask
from blendstudy.pipeline import Pipeline


def evaluate(model: BlendMask, cfg: Any, dataset: CocoDataset, max_dets: int = 100,
             show_progress: bool = True) -> Dict[str, Dict[str, float]]:
    """COCO bbox and segm AP (percent) of ``model`` on ``dataset`` through the real inference
    path (Pipeline at the config's test size and score threshold), at most ``max_dets`` per image,
    scored by the study's one COCO evaluation (blendstudy.coco.evaluate)."""
    model.eval()
    pipe = Pipeline.from_config(cfg, model)
    results: List[Dict[str, Any]] = []
    for image_id in tqdm(dataset.image_ids, desc="eval", unit="img", disable=not show_progress):
        det = filter_detections(pipe(read_image(dataset.image_path(image_id), "BGR")), None, max_dets)
        results.extend(detections_to_coco(det, image_id, dataset.contiguous_to_category_id))
    metrics = evaluate_coco(dataset.coco, results, ("bbox", "segm"), max_dets=max_dets,
                            image_ids=dataset.image_ids)
    return {t: {k: round(float(getattr(m, k)), 3) for k in STAT_NAMES[:6]} for t, m in metrics.items()}
