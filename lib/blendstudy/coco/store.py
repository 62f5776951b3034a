"""The resumable prediction store: JSON-lines files that survive an interruption.

An evaluation appends one line per image to ``predictions.jsonl`` (the line that marks an image
done), ``per_image_timing.jsonl`` and ``skipped.jsonl``, each flushed and fsynced, and records what
made the predictions in ``run_config.json``; a later run reads them back and continues. A truncated
last line (an interrupted write) is dropped; a corrupt line elsewhere is an error.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = ["CocoRunPaths", "RunMismatchError", "append_jsonl", "check_run_config", "read_jsonl", "rewrite_jsonl",
           "run_paths"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class CocoRunPaths:
    out_dir: str
    predictions_jsonl: str
    timing_jsonl: str
    skipped_jsonl: str
    coco_predictions: str
    run_config: str


def run_paths(out_dir: PathLike, prefix: str = "") -> CocoRunPaths:
    """The files of one run folder; ``prefix`` names one shard's files (e.g. "rank1_")."""
    out = Path(out_dir)
    return CocoRunPaths(
        out_dir=str(out),
        predictions_jsonl=str(out / f"{prefix}predictions.jsonl"),
        timing_jsonl=str(out / f"{prefix}per_image_timing.jsonl"),
        skipped_jsonl=str(out / f"{prefix}skipped.jsonl"),
        coco_predictions=str(out / "coco_predictions.json"),
        run_config=str(out / "run_config.json"),
    )


class RunMismatchError(ValueError):
    """run_coco_evaluation: the output folder holds a run made with other settings or another
    pipeline (run_config.json differs)."""


def check_run_config(path: PathLike, config: Dict[str, Any], on_mismatch: str = "error"
                     ) -> Optional[Dict[str, Any]]:
    """Compare the run_config.json at ``path`` (if any) with ``config``. Same (or none): None.
    Different: RunMismatchError (on_mismatch="error"), or a warning and the old config returned
    (on_mismatch="restart": the caller discards the old predictions)."""
    if on_mismatch not in ("error", "restart"):
        raise ValueError(f"on_mismatch must be 'error' or 'restart', not {on_mismatch!r}")
    p = Path(path)
    if not p.exists():
        return None
    old = json.loads(p.read_text())
    if old == config:
        return None
    if on_mismatch == "error":
        raise RunMismatchError(f"{p}: existing run used {old}, this call asks for {config}; "
                               "use another out_dir or resume=False")
    warnings.warn(f"{p}: the predictions there were made with {old}, not {config}; "
                  "they are discarded and the run starts afresh", stacklevel=3)
    return old


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """Records of a JSON-lines file. A truncated or unparsable LAST line (an interrupted write) is
    dropped and the file rewritten without it; a bad line elsewhere raises ValueError."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete = raw.endswith(b"\n") or raw == b""
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    records: List[Dict[str, Any]] = []
    dropped = False
    for k, line in enumerate(lines):
        last = k == len(lines) - 1
        if not line.strip():
            continue
        try:
            if last and not complete:
                raise ValueError("no trailing newline")
            records.append(json.loads(line.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            if not last:
                raise ValueError(f"{path}:{k + 1}: corrupt line ({exc})") from exc
            dropped = True
    if dropped:
        warnings.warn(f"{path}: dropped a truncated last line (interrupted write)", stacklevel=3)
        rewrite_jsonl(path, records)
    return records


def rewrite_jsonl(path: Path, records: Sequence[Dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def append_jsonl(fh, rec: Dict[str, Any]) -> None:
    fh.write(json.dumps(rec) + "\n")
    fh.flush()
    os.fsync(fh.fileno())
