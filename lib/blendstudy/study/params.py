"""A study's params file (params/*.yaml): reading it, checking its paths, and what it names.

`StudyParams.load("params/default.yaml")` reads a params file (with an optional `_BASE_` chain) into
the typed schema of blendstudy.study.params_schema (every default there);
`check_paths` names the parameter of any missing path; `open_dataset` / `benchmark_images` /
`profile_images` generate or open the data; `resolve_weights` says which checkpoint the params
mean; `runtime_for` gives the fixed runtime (env, cores) of a device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from blendstudy.data.coco import CocoDataset
from blendstudy.data.images import list_images
from blendstudy.data.synthetic import synthetic_split
from blendstudy.device import parse_cores
from blendstudy.paths import SHIPPED_WEIGHTS, repo_root
from blendstudy.study.params_schema import DataSection, ParamsError, StudyParams, load_params

__all__ = ["DataSection", "ParamsError", "StudyParams", "benchmark_images", "check_paths", "load_params",
           "open_dataset", "profile_images", "resolve_config", "resolve_weights", "run_dir", "runtime_for",
           "weights_label"]


def _path(value: Optional[str]) -> Optional[Path]:
    """A path parameter's value as a path (relative: against the repository root); None when unset."""
    if value in (None, ""):
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else repo_root() / path


def _param_error(params: StudyParams, dotted: str, problem: str) -> ParamsError:
    return ParamsError(f"{params.path}: parameter {dotted}: {problem}")


def check_paths(params: StudyParams) -> None:
    """Raise ParamsError naming the parameter when a path the params need does not exist."""
    for section in ("benchmark", "val"):
        spec = params.data.get(section)
        if spec is None:
            continue
        if spec.source == "coco":
            for key in ("annotations", "images"):
                path = _path(spec[key])
                if path is None:
                    raise _param_error(params, f"data.{section}.{key}", "not set (needed for source: coco)")
                if not path.exists():
                    raise _param_error(params, f"data.{section}.{key}", f"{path} does not exist")
        elif spec.source == "folder":
            path = _path(spec.images)
            if path is None or not path.exists():
                raise _param_error(params, f"data.{section}.images", f"{path} does not exist")
        elif spec.source != "synthetic":
            raise _param_error(params, f"data.{section}.source", f"unknown source {spec.source!r}")
    weights = params.model.weights
    if weights not in (None, "", "random", "none") and weights not in SHIPPED_WEIGHTS:
        path = _path(weights)
        if path is not None and not path.exists() and params.model.missing_weights == "error":
            raise _param_error(params, "model.weights", f"{path} does not exist")


def run_dir(params: StudyParams, out_dir: Optional[Union[str, Path]] = None) -> Path:
    """artifacts/<params name>/ (or out_dir), with results/ and figures/ created."""
    root = Path(out_dir) if out_dir else repo_root() / "artifacts" / params.name
    for sub in ("results", "figures"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _synthetic(params: StudyParams, section: str, spec: DataSection):
    if spec.num_images is None:
        raise _param_error(params, f"data.{section}.num_images", "not set (needed for source: synthetic)")
    root = Path(spec.root)
    sizes = spec.image_size
    size = [tuple(x) for x in sizes] if sizes and isinstance(sizes[0], (list, tuple)) else tuple(sizes)
    return synthetic_split(root if root.is_absolute() else repo_root() / root, spec.split, spec.num_images,
                           seed=spec.seed, image_size=size, objects_per_image=tuple(spec.objects_per_image))


def open_dataset(params: StudyParams, section: str) -> CocoDataset:
    """The COCO-format dataset of data.<section> (synthetic: generated on first use)."""
    spec = params.data[section]
    if spec.source == "synthetic":
        ann_file, image_dir = _synthetic(params, section, spec)
        return CocoDataset(ann_file, image_dir)
    if spec.source == "coco":
        check_paths(params)
        return CocoDataset(_path(spec.annotations), _path(spec.images))
    raise _param_error(params, f"data.{section}.source", f"{spec.source!r} has no annotations (use coco or synthetic)")


def benchmark_images(params: StudyParams, limit: Optional[int] = None) -> List[Path]:
    """Image paths of data.benchmark (first num_images / limit)."""
    spec = params.data.benchmark
    n = int(limit or spec.num_images or 0) or None
    if spec.source == "folder":
        check_paths(params)
        paths = list_images([_path(spec.images)])
    else:
        ds = open_dataset(params, "benchmark")
        paths = [ds.image_path(i) for i in ds.image_ids]
    return paths[:n] if n else paths


def profile_images(params: StudyParams, size, count: int) -> List[Path]:
    """Synthetic images of (height, width) `size` for the stage profile (under data.benchmark's root)."""
    spec = DataSection(root=params.data.benchmark.root, split="profile", seed=3, num_images=count,
                       image_size=list(size))
    _, image_dir = _synthetic(params, "benchmark", spec)
    return sorted(image_dir.glob("*.png"))[:count]


def resolve_weights(params: StudyParams) -> Optional[str]:
    """The checkpoint the params mean (model.weights): a path, a shipped checkpoint's path, or None
    for random weights -- also when the file is missing and model.missing_weights is "random"
    (with "error", the default, a missing file raises ParamsError naming model.weights)."""
    check_paths(params)
    weights = params.model.weights
    if weights in (None, "", "random", "none"):
        return None
    if weights in SHIPPED_WEIGHTS:
        if SHIPPED_WEIGHTS[weights].exists():
            return str(SHIPPED_WEIGHTS[weights])
        if params.model.missing_weights != "random":
            raise _param_error(params, "model.weights", f"shipped checkpoint {SHIPPED_WEIGHTS[weights]} is missing")
        return None
    path = _path(weights)
    return str(path) if path is not None and path.exists() else None


def resolve_config(params: StudyParams) -> str:
    """model.config as a shipped name or a path (relative paths against the repository root)."""
    config = params.model.config
    cpath = Path(config)
    if not cpath.is_absolute() and (repo_root() / cpath).exists():
        return str(repo_root() / cpath)
    return config


def weights_label(weights: Optional[str]) -> str:
    """What every table says about the weights: the file, or RANDOM in capitals."""
    return "RANDOM weights (accuracy meaningless)" if weights is None else Path(weights).name


def runtime_for(params: StudyParams, device: str) -> Tuple[Dict[str, str], Optional[List[int]]]:
    """The params' fixed runtime for ``device`` ("npu:1", "cpu", ...): runtime.env and the cores of
    runtime.cpu_affinity -- a range for every device ("144-167"), or one per device
    ({"npu:1": "144-167", "npu:2": "96-119", "default": ...}, as the seed bound each card's process
    to its NUMA-local cores). Returns (env, cores or None)."""
    spec = params.runtime
    env = {str(k): str(v) for k, v in spec.env.items()}
    aff = spec.cpu_affinity
    if isinstance(aff, dict):
        key = str(device)
        aff = aff.get(key, aff.get(key.split(":")[0], aff.get("default")))
    cores = parse_cores(str(aff)) if aff not in (None, "") else None
    return env, cores
