"""A COCO evaluation split across processes (ranks): who predicts what, their files, the merge.

The run folder holds ``run_config.json`` (what makes the predictions) and a ``shards/`` folder
with one resumable store (:mod:`blendstudy.coco.store`) per rank and world size:
``shards/w<world>_r<rank>_predictions.jsonl``, ``..._per_image_timing.jsonl`` and
``..._skipped.jsonl``. The rules that make it resumable with any number of ranks:

* every image is *done* when a predictions line or a skipped line for it exists in ANY shard
  file of the folder (:func:`done_ids` reads them all);
* the images still to do are sorted and dealt round-robin: rank r of W takes
  ``pending[r::W]`` (:func:`shard_share`), computed once (by rank 0) before anyone writes;
* a rank only ever appends to its own files, named by rank AND world size, so a later run with
  another world size writes new files beside the old ones and never collides with them;
* the merge (:func:`merge_shards`) reads every shard file again and counts how often each image
  was done: every image of the run exactly once, or :class:`IncompleteEvaluationError` naming the
  missing and the repeated ids (nothing partial is evaluated silently).

An earlier single-process run folder (``predictions.jsonl`` beside ``run_config.json``) is
adopted as the shard ``legacy_`` (:func:`adopt_single_process_store`). Latencies in ms.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from blendstudy.coco.run import PredictSession, predict_images
from blendstudy.coco.store import CocoRunPaths, read_jsonl, rewrite_jsonl, run_paths
from blendstudy.errors import UserError
from blendstudy.measure.latency import LatencyStats

__all__ = ["IncompleteEvaluationError", "MergedRun", "SHARD_DIR", "ShardRecords", "PredictSession",
           "adopt_single_process_store", "done_ids", "merge_shards", "pending_ids", "predict_images", "rank_summary",
           "read_shard", "read_shards", "remove_shards", "shard_paths", "shard_prefix", "shard_share", "throughput",
           "write_merged"]

PathLike = Union[str, "os.PathLike[str]"]

#: the folder (inside a run folder) that holds every rank's files
SHARD_DIR = "shards"
_PRED = "predictions.jsonl"
#: how many ids an error message names before it says "... (N in all)"
_NAMED = 20


def shard_prefix(rank: int, world_size: int) -> str:
    """The file prefix of rank ``rank`` of a ``world_size``-rank run: "w2_r1_"."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return f"w{int(world_size)}_r{int(rank)}_"


def shard_paths(out_dir: PathLike, rank: int, world_size: int) -> CocoRunPaths:
    """The files rank ``rank`` of ``world_size`` appends to (in <out_dir>/shards/)."""
    return run_paths(Path(out_dir) / SHARD_DIR, shard_prefix(rank, world_size))


def shard_share(ids: Sequence[int], rank: int, world_size: int) -> List[int]:
    """Rank ``rank``'s part of ``ids``: sorted, then every ``world_size``-th from position ``rank``.
    The parts of all ranks are disjoint and cover ``ids``; sizes differ by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return sorted(dict.fromkeys(int(i) for i in ids))[rank::world_size]


@dataclass
class ShardRecords:
    """One shard's files as read back. ``predictions``: id -> COCO results (first line kept);
    ``timing``: id -> timing line, only for ids whose predictions line exists in THIS shard (a
    timing line without one is an image interrupted in flight: it is done again elsewhere);
    ``skipped``: id -> skipped line; ``counts``: id -> how many predictions + skipped lines."""

    prefix: str
    predictions: Dict[int, List[Dict[str, Any]]] = field(default_factory=dict)
    timing: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    skipped: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    @property
    def done(self) -> List[int]:
        return sorted(self.counts)


def read_shard(folder: PathLike, prefix: str) -> ShardRecords:
    """The shard ``<folder>/<prefix>*.jsonl`` (a truncated last line is dropped: store.read_jsonl)."""
    paths = run_paths(folder, prefix)
    out = ShardRecords(prefix)
    for rec in read_jsonl(Path(paths.predictions_jsonl)):
        i = int(rec["image_id"])
        out.counts[i] += 1
        out.predictions.setdefault(i, rec["results"])
    for rec in read_jsonl(Path(paths.timing_jsonl)):
        i = int(rec["image_id"])
        if i in out.predictions:
            out.timing.setdefault(i, rec)
    for rec in read_jsonl(Path(paths.skipped_jsonl)):
        i = int(rec["image_id"])
        out.counts[i] += 1
        out.skipped.setdefault(i, rec)
    return out


def read_shards(out_dir: PathLike) -> List[ShardRecords]:
    """Every shard of the run folder (each ``shards/<prefix>predictions.jsonl``), by prefix."""
    folder = Path(out_dir) / SHARD_DIR
    if not folder.is_dir():
        return []
    prefixes = sorted(p.name[: -len(_PRED)] for p in folder.glob(f"*{_PRED}") if p.is_file())
    return [read_shard(folder, prefix) for prefix in prefixes]


def done_ids(shards: Sequence[ShardRecords]) -> set:
    """Ids predicted or skipped in any shard."""
    out: set = set()
    for s in shards:
        out.update(s.counts)
    return out


def pending_ids(ids: Sequence[int], shards: Sequence[ShardRecords]) -> List[int]:
    """The ids of ``ids`` no shard has done yet, sorted (what the ranks of this run share)."""
    done = done_ids(shards)
    return sorted({int(i) for i in ids} - done)


def adopt_single_process_store(out_dir: PathLike) -> Optional[str]:
    """An earlier single-process store at the top of ``out_dir`` (predictions.jsonl,
    per_image_timing.jsonl, skipped.jsonl) moved into shards/ as the shard "legacy_" (appended
    to it if that exists); returns the prefix, or None when there was nothing to adopt. Call it
    before anyone writes (the top-level per_image_timing.jsonl / skipped.jsonl are otherwise the
    merge's outputs)."""
    top = run_paths(out_dir)
    if not Path(top.predictions_jsonl).is_file():
        return None
    dest = run_paths(Path(out_dir) / SHARD_DIR, "legacy_")
    Path(dest.out_dir).mkdir(parents=True, exist_ok=True)
    for src, dst in ((top.predictions_jsonl, dest.predictions_jsonl), (top.timing_jsonl, dest.timing_jsonl),
                     (top.skipped_jsonl, dest.skipped_jsonl)):
        if not Path(src).is_file():
            continue
        records = read_jsonl(Path(dst)) + read_jsonl(Path(src))
        rewrite_jsonl(Path(dst), records)
        os.unlink(src)
    return "legacy_"


def remove_shards(out_dir: PathLike) -> None:
    """Delete every shard of the run folder (a restart after a change of pipeline)."""
    shutil.rmtree(Path(out_dir) / SHARD_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------- one rank's work
def rank_summary(session: PredictSession, **info: Any) -> Dict[str, Any]:
    """One row of the per-rank table: ``info`` (rank, device, cores, ...) then what the session
    did: images predicted and skipped, predict-loop seconds, images/s over that loop, the first
    call and the steady latency (mean, P50, P90 of the calls after the first)."""
    steady = session.ms[1:]
    stats = LatencyStats.from_samples(steady) if steady else None
    after_first = session.loop_s - session.ms[0] / 1000.0 if session.ms else 0.0
    return {**info, "shard": session.prefix, "share": session.share, "images": session.processed,
            "skipped": len(session.skipped), "stopped early": session.stopped, "loop_s": session.loop_s,
            "images_per_s": session.processed / session.loop_s if session.processed and session.loop_s > 0 else None,
            "images_per_s_after_first": len(steady) / after_first if steady and after_first > 0 else None,
            "first_call_ms": session.ms[0] if session.ms else None,
            "mean_ms": stats.mean if stats else None, "p50_ms": stats.p50 if stats else None,
            "p90_ms": stats.p90 if stats else None}


def throughput(ranks: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Total throughput of the ranks' predict loops run side by side: images predicted in this
    session over the slowest rank's loop (the parallel phase), the same without each rank's first
    call (compilation, warm-up: ``after_first``), and the per-rank spread."""
    images = sum(int(r.get("images") or 0) for r in ranks)
    loop = max((float(r.get("loop_s") or 0.0) for r in ranks), default=0.0)
    later = sum(max(int(r.get("images") or 0) - 1, 0) for r in ranks)
    later_s = max((float(r.get("loop_s") or 0.0) - float(r.get("first_call_ms") or 0.0) / 1000.0 for r in ranks),
                  default=0.0)
    per_rank = [r.get("images_per_s") for r in ranks if r.get("images_per_s")]
    return {"processes": len(ranks), "images": images, "parallel_s": loop,
            "images_per_s": images / loop if images and loop > 0 else None,
            "images_per_s_after_first": later / later_s if later and later_s > 0 else None,
            "slowest_rank_images_per_s": min(per_rank) if per_rank else None,
            "fastest_rank_images_per_s": max(per_rank) if per_rank else None}


# ---------------------------------------------------------------------------- the merge
def _named(ids: Sequence[int]) -> str:
    ids = sorted(ids)
    text = ", ".join(str(i) for i in ids[:_NAMED])
    return text + (f", ... ({len(ids)} in all)" if len(ids) > _NAMED else "")


class IncompleteEvaluationError(UserError):
    """The shards of a run do not hold every image exactly once: ``missing`` ids were done by no
    shard (a rank that crashed or stopped, or a shard file rank 0 cannot read), ``duplicated``
    ids (-> the shards that hold them) more than once. Nothing is evaluated."""

    def __init__(self, message: str, missing: Sequence[int] = (), duplicated: Optional[Dict[int, List[str]]] = None
                 ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.duplicated = dict(duplicated or {})


@dataclass
class MergedRun:
    """Every shard of a run folder merged against the run's ``ids``: ``predicted`` ids in the
    order of ``ids``, their COCO results and timing lines, the ``skipped`` records, ``missing``
    ids (done by no shard), ``duplicated`` ids (-> prefixes of the shards that did them, more
    than once in all) and ``stray`` ids (done, but not part of this run: ignored)."""

    ids: List[int]
    predicted: List[int]
    results: Dict[int, List[Dict[str, Any]]]
    timing: List[Dict[str, Any]]
    skipped: List[Dict[str, Any]]
    missing: List[int]
    duplicated: Dict[int, List[str]]
    stray: List[int]
    shards: List[str]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.duplicated

    def coco_results(self) -> List[Dict[str, Any]]:
        """The COCO results of every predicted image, in the order of ``ids``."""
        return [r for i in self.predicted for r in self.results[i]]

    def steady_ms(self) -> List[float]:
        """predict() times of the images that were not the first of their session."""
        return [float(t["ms"]) for t in self.timing if not t.get("first_in_session")]

    def first_call_ms(self) -> List[float]:
        return [float(t["ms"]) for t in self.timing if t.get("first_in_session")]

    def check(self) -> None:
        """Raise IncompleteEvaluationError naming the missing and repeated ids, if any."""
        if self.complete:
            return
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} of {len(self.ids)} image(s) were never predicted (ids "
                         f"{_named(self.missing)}): run the same command again to predict them")
        if self.duplicated:
            where = "; ".join(f"{i} in {', '.join(self.duplicated[i])}" for i in sorted(self.duplicated)[:_NAMED])
            parts.append(f"{len(self.duplicated)} image(s) were done more than once ({where}): two jobs wrote "
                         f"into this folder at the same time? delete one of the shard files named")
        raise IncompleteEvaluationError("; ".join(parts) + "; nothing was evaluated", self.missing, self.duplicated)


def merge_shards(ids: Sequence[int], shards: Sequence[ShardRecords]) -> MergedRun:
    """Merge the shards of a run for the images ``ids`` (see MergedRun); pure."""
    order = list(dict.fromkeys(int(i) for i in ids))
    wanted = set(order)
    where: Dict[int, List[str]] = {}
    results: Dict[int, List[Dict[str, Any]]] = {}
    timing: Dict[int, Dict[str, Any]] = {}
    skipped: Dict[int, Dict[str, Any]] = {}
    for s in shards:
        for i, n in s.counts.items():
            where.setdefault(i, []).extend([s.prefix.rstrip("_")] * n)
        for i, res in s.predictions.items():
            results.setdefault(i, res)
            if i in s.timing:
                timing.setdefault(i, s.timing[i])
        for i, rec in s.skipped.items():
            skipped.setdefault(i, rec)
    predicted = [i for i in order if i in results]
    return MergedRun(
        ids=order, predicted=predicted, results={i: results[i] for i in predicted},
        timing=[timing[i] for i in predicted if i in timing],
        skipped=[skipped[i] for i in order if i in skipped and i not in results],
        missing=[i for i in order if i not in where],
        duplicated={i: w for i, w in sorted(where.items()) if i in wanted and len(w) > 1},
        stray=sorted(set(where) - wanted), shards=[s.prefix for s in shards])


def write_merged(out_dir: PathLike, merged: MergedRun) -> CocoRunPaths:
    """The merged outputs at the top of the run folder: coco_predictions.json (one list in the
    order of the run's ids: the same bytes however many ranks made it), per_image_timing.jsonl
    and skipped.jsonl (every shard's lines, in id order)."""
    paths = run_paths(out_dir)
    tmp = Path(paths.coco_predictions + ".tmp")
    tmp.write_text(json.dumps(merged.coco_results()))
    os.replace(tmp, paths.coco_predictions)
    rewrite_jsonl(Path(paths.timing_jsonl), merged.timing)
    rewrite_jsonl(Path(paths.skipped_jsonl), merged.skipped)
    return paths
