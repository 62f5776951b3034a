"""A study's params file (params/*.yaml): reading it, checking its paths, and what it names.

`StudyParams.load("params/default.yaml")` reads a params file (with an optional `_BASE_` chain);
`check_paths` names the parameter of any missing path; `open_dataset` / `benchmark_images` /
`profile_images` generate or open the data; `resolve_weights` says which checkpoint the params
mean; `runtime_for` gives the fixed runtime (env, cores) of a device.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from blendstudy.data.coco import CocoDataset
from blendstudy.data.images import list_images
from blendstudy.data.synthetic import synthetic_split
from blendstudy.device import parse_cores
from blendstudy.paths import SHIPPED_WEIGHTS, repo_root


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
            p = repo_root() / p
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
        return path if path.is_absolute() else repo_root() / path


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
    if weights not in (None, "", "random", "none") and weights not in SHIPPED_WEIGHTS:
        path = params.get_path("model.weights")
        if path is not None and not path.exists() and params.model.get("missing_weights", "error") == "error":
            raise _param_error(params, "model.weights", f"{path} does not exist")


def run_dir(params: StudyParams, out_dir: Optional[Union[str, Path]] = None) -> Path:
    """artifacts/<params name>/ (or out_dir), with results/ and figures/ created."""
    root = Path(out_dir) if out_dir else repo_root() / "artifacts" / params.name
    for sub in ("results", "figures"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _synthetic(spec: Dict[str, Any]):
    root = Path(spec.get("root", "artifacts/_data"))
    sizes = spec.get("image_size", [480, 640])
    size = [tuple(x) for x in sizes] if sizes and isinstance(sizes[0], (list, tuple)) else tuple(sizes)
    return synthetic_split(root if root.is_absolute() else repo_root() / root, str(spec.get("split", "bench")),
                           int(spec["num_images"]), seed=int(spec.get("seed", 0)), image_size=size,
                           objects_per_image=tuple(spec.get("objects_per_image", (1, 6))))


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


def profile_images(params: StudyParams, size, count: int) -> List[Path]:
    """Synthetic images of (height, width) `size` for the stage profile."""
    spec = {"root": params.data.benchmark.get("root", "artifacts/_data"), "split": "profile", "seed": 3,
            "num_images": count, "image_size": list(size)}
    _, image_dir = _synthetic(spec)
    return sorted(image_dir.glob("*.png"))[:count]


def resolve_weights(params: StudyParams) -> Optional[str]:
    """The checkpoint the params mean (model.weights): a path, a shipped checkpoint's path, or None
    for random weights -- also when the file is missing and model.missing_weights is "random"
    (with "error", the default, a missing file raises ParamsError naming model.weights)."""
    check_paths(params)
    weights = params.model.get("weights")
    if weights in (None, "", "random", "none"):
        return None
    if weights in SHIPPED_WEIGHTS:
        if SHIPPED_WEIGHTS[weights].exists():
            return str(SHIPPED_WEIGHTS[weights])
        if params.model.get("missing_weights", "error") != "random":
            raise _param_error(params, "model.weights", f"shipped checkpoint {SHIPPED_WEIGHTS[weights]} is missing")
        return None
    path = params.get_path("model.weights")
    return str(path) if path is not None and path.exists() else None


def resolve_config(params: StudyParams) -> str:
    """model.config as a shipped name or a path (relative paths against the repository root)."""
    config = str(params.model.config)
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
    spec = params.get("runtime", {}) or {}
    env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    aff = spec.get("cpu_affinity")
    if isinstance(aff, dict):
        key = str(device)
        aff = aff.get(key, aff.get(key.split(":")[0], aff.get("default")))
    cores = parse_cores(str(aff)) if aff not in (None, "") else None
    return env, cores
