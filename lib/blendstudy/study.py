"""Glue between a params YAML (params/*.yaml) and the library, for the notebooks and the CLI.

`StudyParams.load("params/default.yaml")` reads a params file (with an optional `_BASE_` chain);
`check_paths` names the parameter of any missing path; `benchmark_images` / `validation_dataset`
generate or open the data; `load_study_pipeline` builds the model as the params say.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from blendstudy.data.coco import CocoDataset
from blendstudy.data.images import list_images

REPO_ROOT = Path(__file__).resolve().parents[2]


class ParamsError(ValueError):
    """A params file that cannot be used: the message names the file and the parameter."""


class _Node(dict):
    def __getattr__(self, key: str) -> Any:
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return _Node(value) if isinstance(value, dict) and not isinstance(value, _Node) else value


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_params(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    if path in seen:
        raise ParamsError(f"{path}: _BASE_ cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of parameters")
    base = data.pop("_BASE_", None)
    if base:
        data = _merge(_read_params((path.parent / base).resolve(), seen + (path,)), data)
    return data


class StudyParams(_Node):
    """The params of one study run; attribute access (params.data.val.num_images)."""

    path: Path
    name: str

    @classmethod
    def load(cls, path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> StudyParams:
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = REPO_ROOT / p
        data = _read_params(p.resolve())
        if overrides:
            data = _merge(data, overrides)
        obj = cls(data)
        obj.path = p
        obj.name = p.stem
        return obj

    def get_path(self, dotted: str) -> Optional[Path]:
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if node in (None, ""):
            return None
        path = Path(str(node)).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path


def _param_error(params: StudyParams, dotted: str, problem: str) -> ParamsError:
    return ParamsError(f"{params.path}: parameter {dotted}: {problem}")


def check_paths(params: StudyParams) -> None:
    """Raise ParamsError naming the parameter when a path the params need does not exist."""
    for section in ("benchmark", "val"):
        spec = params.get("data", {}).get(section)
        if not spec:
            continue
        source = spec.get("source", "synthetic")
        if source == "coco":
            for key in ("annotations", "images"):
                path = params.get_path(f"data.{section}.{key}")
                if path is None:
                    raise _param_error(params, f"data.{section}.{key}", "not set (needed for source: coco)")
                if not path.exists():
                    raise _param_error(params, f"data.{section}.{key}", f"{path} does not exist")
        elif source == "folder":
            path = params.get_path(f"data.{section}.images")
            if path is None or not path.exists():
                raise _param_error(params, f"data.{section}.images", f"{path} does not exist")
        elif source != "synthetic":
            raise _param_error(params, f"data.{section}.source", f"unknown source {source!r}")
    weights = params.model.get("weights")
    from blendstudy.predictor import SHIPPED_WEIGHTS

    if weights not in (None, "", "random", "none") and weights not in SHIPPED_WEIGHTS:
        path = params.get_path("model.weights")
        if path is not None and not path.exists() and params.model.get("missing_weights", "error") == "error":
            raise _param_error(params, "model.weights", f"{path} does not exist")


def run_dir(params: StudyParams, out_dir: Optional[Union[str, Path]] = None) -> Path:
    """artifacts/<params name>/ (or out_dir), with results/ and figures/ created."""
    root = Path(out_dir) if out_dir else REPO_ROOT / "artifacts" / params.name
    for sub in ("results", "figures"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _synthetic(spec: Dict[str, Any], default_objects=(1, 6)):
    from blendstudy.data.synthetic import ensure_synthetic_coco

    root = Path(spec.get("root", "artifacts/_data"))
    root = root if root.is_absolute() else REPO_ROOT / root
    sizes = spec.get("image_size", [480, 640])
    size = [tuple(s) for s in sizes] if sizes and isinstance(sizes[0], (list, tuple)) else tuple(sizes)
    all_sizes = [size] if isinstance(size, tuple) else size
    tag = "_".join("x".join(str(v) for v in sz) for sz in all_sizes)  # every size: no folder collisions
    if "objects_per_image" in spec:
        tag += "_obj" + "-".join(str(v) for v in spec["objects_per_image"])
    out = root / f"synthetic_{spec.get('split', 'bench')}_seed{spec.get('seed', 0)}_{spec['num_images']}_{tag}"
    return ensure_synthetic_coco(out, int(spec["num_images"]), seed=int(spec.get("seed", 0)), image_size=size,
                                 objects_per_image=tuple(spec.get("objects_per_image", default_objects)),
                                 split_name=str(spec.get("split", "bench")), show_progress=False)


def open_dataset(params: StudyParams, section: str) -> CocoDataset:
    """The COCO-format dataset of data.<section> (synthetic: generated on first use)."""
    spec = params.data[section]
    source = spec.get("source", "synthetic")
    if source == "synthetic":
        ann_file, image_dir = _synthetic(spec)
        return CocoDataset(ann_file, image_dir)
    if source == "coco":
        check_paths(params)
        return CocoDataset(params.get_path(f"data.{section}.annotations"),
                           params.get_path(f"data.{section}.images"))
    raise _param_error(params, f"data.{section}.source", f"{source!r} has no annotations (use coco or synthetic)")


def benchmark_images(params: StudyParams, limit: Optional[int] = None) -> List[Path]:
    """Image paths of data.benchmark (first num_images / limit)."""
    spec = params.data.benchmark
    n = int(limit or spec.get("num_images") or 0) or None
    if spec.get("source", "synthetic") == "folder":
        check_paths(params)
        paths = list_images([params.get_path("data.benchmark.images")])
    else:
        ds = open_dataset(params, "benchmark")
        paths = [ds.image_path(i) for i in ds.image_ids]
    return paths[:n] if n else paths


def gate_ground_truth(params: StudyParams, loaded) -> Tuple[Optional[CocoDataset], str]:
    """The benchmark images' annotations for the accuracy gate's AP check, or None with the reason:
    AP needs a trained model (not random weights), annotated images (synthetic or coco, not a
    folder) and the model's classes being the dataset's categories."""
    if loaded.random_weights:
        return None, "random weights: no AP check (the instance gate still runs)"
    if params.data.benchmark.get("source", "synthetic") == "folder":
        return None, "data.benchmark is an image folder without annotations: no AP check"
    dataset = open_dataset(params, "benchmark")
    classes = loaded.pipeline.model.proposal_generator.fcos_head.num_classes
    if classes != len(dataset.category_ids):
        return None, (f"the model has {classes} classes, {dataset.ann_file.name} {len(dataset.category_ids)} "
                      "categories: no AP check")
    limit = (params.get("accuracy") or {}).get("max_ap_change", 0.3)
    return dataset, f"AP on {dataset.ann_file.name} (max change {limit} points)"


def accuracy_gates(params: StudyParams, loaded, outputs: Mapping[str, Mapping[str, Any]],
                   pairs: Sequence[Tuple[str, str]]) -> Tuple[Dict[str, Any], Dict[str, bool], str]:
    """The accuracy gate of every (reference, test) pair of runs in `outputs` (run -> image name
    -> Detections) with the params' settings (accuracy.*), AP included where gate_ground_truth
    allows. Returns ({"test vs ref": AccuracyReport}, {"test vs ref": passed}, a note on the AP check)."""
    from blendstudy.accuracy import compare_runs

    a = params.get("accuracy") or {}
    truth, note = gate_ground_truth(params, loaded)
    max_dets = int((params.get("evaluation") or {}).get("max_dets") or 100)
    reports = {f"{test} vs {ref}": compare_runs(outputs[ref], outputs[test], a.get("iou_thresh", 0.5),
                                                a.get("gate_score", 0.3), ground_truth=truth, max_dets=max_dets)
               for ref, test in pairs}
    gates = {k: r.passes_gate(a.get("min_mean_box_iou", 0.99), a.get("max_lost", 0),
                              max_ap_change=a.get("max_ap_change", 0.3)) for k, r in reports.items()}
    return reports, gates, note


def profile_images(params: StudyParams, size, count: int) -> List[Path]:
    """Synthetic pictures of (height, width) `size` for the stage profile."""
    spec = {"root": params.data.benchmark.get("root", "artifacts/_data"), "split": "profile", "seed": 3,
            "num_images": count, "image_size": list(size)}
    _, image_dir = _synthetic(spec)
    return sorted(image_dir.glob("*.png"))[:count]


def load_study_pipeline(params: StudyParams, device: Optional[str] = None, warn_random: bool = False):
    """LoadedPipeline as the params say (model.config / weights / score_thresh, device). A missing
    weights file falls back to random weights when model.missing_weights is "random"."""
    from blendstudy.predictor import SHIPPED_WEIGHTS, load_pipeline

    check_paths(params)
    weights = params.model.get("weights")
    if weights in SHIPPED_WEIGHTS and not SHIPPED_WEIGHTS[weights].exists():
        if params.model.get("missing_weights", "error") != "random":
            raise _param_error(params, "model.weights", f"shipped checkpoint {SHIPPED_WEIGHTS[weights]} is missing")
        weights = None
    elif weights not in (None, "", "random", "none") and weights not in SHIPPED_WEIGHTS:
        path = params.get_path("model.weights")
        if path is not None and not path.exists():
            weights = None
        else:
            weights = str(path)
    config = params.model.config
    cpath = Path(config)
    if not cpath.is_absolute() and (REPO_ROOT / cpath).exists():
        config = str(REPO_ROOT / cpath)
    return load_pipeline(config, weights, device or params.get("device", "auto"),
                         params.model.get("score_thresh"), warn_random=warn_random)


def weights_label(loaded) -> str:
    """What every table says about the weights: the file, or RANDOM in capitals."""
    return "RANDOM weights (accuracy meaningless)" if loaded.random_weights else Path(loaded.weights).name


def apply_environment(params: StudyParams) -> Dict[str, Any]:
    """runtime.env / runtime.cpu_affinity of the params applied to this process (call first in a
    notebook, before torch_npu is imported). Returns what was applied."""
    applied: Dict[str, Any] = {}
    spec = params.get("runtime", {}) or {}
    for k, v in (spec.get("env") or {}).items():
        os.environ[str(k)] = str(v)
        applied[str(k)] = str(v)
    aff = spec.get("cpu_affinity")
    if aff and hasattr(os, "sched_setaffinity"):
        cores: List[int] = []
        for part in str(aff).split(","):
            a, _, b = part.partition("-")
            cores.extend(range(int(a), int(b or a) + 1))
        try:
            os.sched_setaffinity(0, cores)
            applied["cpu_affinity"] = aff
        except OSError as exc:
            print(f"blendstudy: cannot bind to cores {aff}: {exc}", file=sys.stderr)
    return applied
