"""The resume store of a single-process run folder (:func:`blendstudy.coco.run.run_coco_evaluation`):
what an earlier, perhaps interrupted, session left done and skipped, what is still to do, and the
COCO results rebuilt from the files at the end.

The files are the prediction store's (:mod:`blendstudy.coco.store`): ``predictions.jsonl`` (its
line marks an image done), ``per_image_timing.jsonl``, ``skipped.jsonl``, ``run_config.json`` and,
written at the end, ``coco_predictions.json``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Set, Tuple

from blendstudy.coco.predict import SkippedImage
from blendstudy.coco.store import CocoRunPaths, read_jsonl, rewrite_jsonl

__all__ = ["ResumeStore"]

Results = List[Dict[str, Any]]  # one image's COCO result dicts


def _first_results(path: Path) -> Tuple[Dict[int, Results], int]:
    """image id -> results of a predictions file (first line of an id kept), and its line count."""
    records = read_jsonl(path)
    done: Dict[int, Results] = {}
    for rec in records:
        done.setdefault(int(rec["image_id"]), rec["results"])
    return done, len(records)


@dataclass
class ResumeStore:
    """One run folder's files as this session found them. ``done``: image id -> COCO results of
    the images predicted earlier (the first predictions line of an id); ``skipped``: the images
    earlier sessions could not read (done too: not retried; delete skipped.jsonl to retry them)."""

    paths: CocoRunPaths
    done: Dict[int, Results] = field(default_factory=dict)
    skipped: List[SkippedImage] = field(default_factory=list)

    @classmethod
    def open(cls, paths: CocoRunPaths, config: Dict[str, Any], fresh: bool) -> ResumeStore:
        """Read the folder back for resuming, or with ``fresh`` delete its jsonl files and
        coco_predictions.json first; then (re)write run_config.json with ``config``. A truncated
        last line is dropped (store.read_jsonl); timing lines of images whose predictions line
        never made it are dropped too (the image is done again)."""
        pred_path, timing_path = Path(paths.predictions_jsonl), Path(paths.timing_jsonl)
        if fresh:
            for p in (pred_path, timing_path, Path(paths.skipped_jsonl), Path(paths.coco_predictions)):
                if p.exists():
                    p.unlink()
        Path(paths.run_config).write_text(json.dumps(config, sort_keys=True) + "\n")
        done, lines = _first_results(pred_path)
        if len(done) != lines:
            warnings.warn(f"{pred_path}: duplicate image ids, first occurrence kept", stacklevel=3)
        timing = read_jsonl(timing_path)
        kept = [r for r in timing if int(r["image_id"]) in done]
        if len(kept) != len(timing):
            rewrite_jsonl(timing_path, kept)
        skipped = [SkippedImage(int(r["image_id"]), str(r["file"]), str(r["reason"]))
                   for r in read_jsonl(Path(paths.skipped_jsonl))]
        return cls(paths, done, skipped)

    def done_ids(self) -> Set[int]:
        """The images predicted or skipped earlier."""
        return set(self.done) | {s.image_id for s in self.skipped}

    def resumed_from(self, ids: Sequence[int]) -> int:
        """How many of ``ids`` are already done; warns about predicted ids not among them (ignored)."""
        done = self.done_ids()
        stray = set(self.done) - set(ids)
        if stray:
            warnings.warn(f"{self.paths.predictions_jsonl}: {len(stray)} image id(s) not in this run's image_ids "
                          "are ignored", stacklevel=3)
        return sum(1 for i in ids if i in done)

    def todo(self, ids: Sequence[int]) -> List[int]:
        """``ids`` not done yet, in order."""
        done = self.done_ids()
        return [i for i in ids if i not in done]

    def write_coco_predictions(self, ids: Sequence[int]) -> Tuple[List[int], Results]:
        """Rebuild from predictions.jsonl (identical bytes whether or not the run was interrupted)
        and write coco_predictions.json: one list of result dicts in the order of ``ids``. Returns
        (the predicted ids among ``ids`` in order, that list)."""
        final, _ = _first_results(Path(self.paths.predictions_jsonl))
        predicted_ids = [i for i in ids if i in final]
        coco_preds = [r for i in predicted_ids for r in final[i]]
        tmp = Path(self.paths.coco_predictions + ".tmp")
        tmp.write_text(json.dumps(coco_preds))
        os.replace(tmp, self.paths.coco_predictions)
        return predicted_ids, coco_preds

    def timing_ms(self, ids: Sequence[int]) -> Tuple[List[float], List[float]]:
        """(first-in-session ms, the other ms) of the timing lines of ``ids``, in file order."""
        id_set = set(ids)
        lines = [r for r in read_jsonl(Path(self.paths.timing_jsonl)) if int(r["image_id"]) in id_set]
        first = [float(r["ms"]) for r in lines if r.get("first_in_session")]
        steady = [float(r["ms"]) for r in lines if not r.get("first_in_session")]
        return first, steady
