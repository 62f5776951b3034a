"""The schema of a study's params file (params/*.yaml): one dataclass per section, every default
defined here and nowhere else, and the checks that turn a YAML mapping into them.

Every section reads by attribute (``params.timing.repeats``) and, read-only, as a mapping
(``params.accuracy.get("n_boot")``, ``params.data["val"]``, ``{**params.to_dict()}``). A key the
schema does not know, or a value of the wrong type, is a :class:`ParamsError` of one line naming
the file, the dotted key and what was expected: ``params/x.yaml: timing.repeats: expected an
integer, got 'two'``. What the values mean is documented in params/default.yaml.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Union

import yaml

from blendstudy.config import read_base_chain
from blendstudy.paths import repo_root

__all__ = ["AccuracyParams", "DataSection", "DataSections", "EvaluationParams", "ModelParams", "OfflineParams",
           "ParamsError", "ProfileParams", "ReferenceParams", "RuntimeParams", "Section", "StudyParams",
           "TimingParams", "build", "check_partial", "load_params"]


class ParamsError(ValueError):
    """A params file that cannot be used: the message names the file and the parameter."""


class Section(Mapping):
    """A params section: attribute access, and a read-only mapping of its schema keys."""

    def __getitem__(self, key: str) -> Any:
        if key not in _keys(type(self)):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_keys(type(self)))

    def __len__(self) -> int:
        return len(_keys(type(self)))

    def to_dict(self) -> Dict[str, Any]:
        """The section as plain nested dicts and lists (what a results JSON stores)."""
        return {k: _plain(getattr(self, k)) for k in self}


class DataSections(dict):
    """data: section name -> DataSection, also by attribute (``params.data.benchmark``)."""

    def __getattr__(self, key: str) -> DataSection:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in (value.to_dict() if isinstance(value, Section) else value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _keys(cls: type) -> List[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("schema", True)]


Scalar = Union[str, int, float, bool]
Size = List[int]


@dataclass(eq=True)
class ModelParams(Section):
    config: str = field(default="", metadata={"required": True})
    weights: Optional[str] = None
    missing_weights: Literal["error", "random"] = "error"
    score_thresh: Optional[float] = None
    random_init: Literal["adelaidet", "detecting"] = "adelaidet"  # blendstudy.loading.RANDOM_INITS


@dataclass(eq=True)
class DataSection(Section):
    source: str = "synthetic"  # synthetic | coco | folder (checked where it is used: params.check_paths)
    root: str = "artifacts/_data"
    split: str = "bench"
    seed: int = 0
    num_images: Optional[int] = None
    image_size: Union[Size, List[Size]] = field(default_factory=lambda: [480, 640])
    objects_per_image: Size = field(default_factory=lambda: [1, 6])
    images: Optional[str] = None
    annotations: Optional[str] = None


@dataclass(eq=True)
class TimingParams(Section):
    warmup: int = 3
    repeats: int = 2
    rounds: int = 2
    n_boot: int = 2000
    confidence: float = 0.95


@dataclass(eq=True)
class ProfileParams(Section):
    image_sizes: List[Size] = field(default_factory=lambda: [[800, 1333], [2304, 3840]])
    images: int = 3
    warmup: int = 1
    repeats: int = 2


@dataclass(eq=True)
class AccuracyParams(Section):
    data: str = "benchmark"
    images: Optional[int] = None
    iou_thresh: float = 0.5
    gate_score: float = 0.3
    min_mean_box_iou: float = 0.99
    max_lost: int = 0
    max_ap_change: Optional[float] = 0.3
    n_boot: int = 1000
    confidence: float = 0.95


@dataclass(eq=True)
class RuntimeParams(Section):
    candidates: Union[Literal["auto"], List[Dict[str, Any]]] = "auto"
    max_settings: Optional[int] = None
    images: int = 10
    env: Dict[str, Scalar] = field(default_factory=dict)
    cpu_affinity: Union[None, str, int, Dict[str, Union[str, int]]] = None


@dataclass(eq=True)
class OfflineParams(Section):
    backends: List[str] = field(default_factory=lambda: ["onnxruntime", "openvino"])
    shapes: List[Literal["static", "dynamic"]] = field(default_factory=lambda: ["static", "dynamic"])
    host_recipe: Optional[str] = None
    compare_recipe: Optional[str] = None
    int8: Union[None, bool, str, List[str]] = False  # methods: blendstudy.study.offline_int8.int8_methods
    bf16: Union[bool, Literal["auto"]] = "auto"    # a bf16 OpenVINO variant: blendstudy.study.offline.bf16_plan
    calibration_images: int = 16


@dataclass(eq=True)
class EvaluationParams(Section):
    max_images: Optional[int] = None
    max_dets: int = 100
    score_thresh: Optional[float] = None
    recipe: str = "p4"
    processes: int = 1
    devices: Optional[List[str]] = None
    scaling: Union[bool, List[int]] = False


@dataclass(eq=True)
class ReferenceParams(Section):
    ap: Dict[str, Dict[str, float]] = field(default_factory=dict)
    latency_ms: Dict[str, Dict[str, float]] = field(default_factory=dict)


_NOT_SCHEMA = {"schema": False}


@dataclass(eq=True)
class StudyParams(Section):
    """The params of one study run (load them with blendstudy.study.params.load_params or
    ``StudyParams.load``); ``path`` and ``name`` say which file they came from."""

    model: ModelParams = field(default_factory=ModelParams)
    device: str = "auto"
    data: DataSections = field(default_factory=DataSections)
    timing: TimingParams = field(default_factory=TimingParams)
    profile: ProfileParams = field(default_factory=ProfileParams)
    accuracy: AccuracyParams = field(default_factory=AccuracyParams)
    runtime: RuntimeParams = field(default_factory=RuntimeParams)
    extras: Union[str, List[str]] = field(default_factory=list)  # names resolved where read (blendstudy.optimize)
    offline: OfflineParams = field(default_factory=OfflineParams)
    evaluation: EvaluationParams = field(default_factory=EvaluationParams)
    references: ReferenceParams = field(default_factory=ReferenceParams)
    path: Path = field(default=Path("params.yaml"), compare=False, repr=False, metadata=_NOT_SCHEMA)
    name: str = field(default="params", compare=False, repr=False, metadata=_NOT_SCHEMA)

    @classmethod
    def load(cls, path: Union[str, Path], overrides: Optional[Mapping[str, Any]] = None) -> StudyParams:
        """load_params(path, overrides)."""
        return load_params(path, overrides)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], path: Union[str, Path] = "params.yaml") -> StudyParams:
        """Params given as a mapping (not a file), checked as a file's; ``path`` names them in errors."""
        return build(data, str(path), Path(path), Path(path).stem)


# ---------------------------------------------------------------------------- checking values
_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, List):
        return f"a list of ({_describe(args[0])})" if args and args[0] is not Any else "a list"
    if origin in (dict, Dict) or tp is DataSections or dataclasses.is_dataclass(tp):
        return "a mapping"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _error(source: str, key: str, tp: Any, value: Any) -> ParamsError:
    return ParamsError(f"{source}: {key}: expected {_describe(tp)}, got {value!r}")


@functools.cache
def _hints(cls: type) -> Dict[str, Any]:
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in _keys(cls)}


def _check(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` as type ``tp`` (an int for a float becomes a float); ParamsError naming ``key``.
    Mappings of a section are checked key by key but may be partial (one file of a _BASE_ chain)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        for arg in args:
            try:
                return _check(value, arg, key, source)
            except ParamsError:
                continue
        raise _error(source, key, tp, value)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _error(source, key, tp, value)
    if dataclasses.is_dataclass(tp) or tp is DataSections or origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise _error(source, key, tp, value)
        return _check_mapping(value, tp, key, source)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise _error(source, key, tp, value)
        return [_check(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is float and type(value) is int:
        return float(value)
    if type(value) is not tp:
        raise _error(source, key, tp, value)
    return value


def _check_mapping(value: Mapping, tp: Any, key: str, source: str) -> Dict[str, Any]:
    prefix = f"{key}." if key else ""
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        unknown = [k for k in value if k not in hints]
        if unknown:
            raise ParamsError(f"{source}: {prefix}{unknown[0]}: unknown key (known: {', '.join(hints)})")
        return {k: _check(v, hints[k], f"{prefix}{k}", source) for k, v in value.items()}
    item = DataSection if tp is DataSections else typing.get_args(tp)[1]
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise ParamsError(f"{source}: {prefix}{k!r}: expected a string key, got {k!r}")
        out[k] = _check(v, item, f"{prefix}{k}", source)
    return out


def check_partial(data: Mapping, source: str) -> Dict[str, Any]:
    """One params file's (or the overrides') mapping, every key known and every value of its type;
    keys may be missing (a _BASE_ file or the including file gives them). Raises ParamsError."""
    return _check_mapping(data, StudyParams, "", source)


def _section(tp: Any, value: Any) -> Any:
    """A checked (complete or partial) value as the schema's object, defaults for missing keys."""
    if tp is DataSections:
        return DataSections({k: _section(DataSection, v) for k, v in value.items()})
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        hints = _hints(tp)
        return tp(**{k: _section(hints[k], v) for k, v in value.items()})
    return value


def build(data: Mapping, source: str, path: Path, name: str) -> StudyParams:
    """The StudyParams of a merged params mapping (checked here again), with ``path`` and ``name``;
    ParamsError naming ``source`` for a bad or missing required value."""
    checked = check_partial(data, source)
    params = _section(StudyParams, checked)
    for section in _keys(StudyParams):
        value = getattr(params, section)
        if not isinstance(value, Section):
            continue
        for f in dataclasses.fields(value):
            if f.metadata.get("required") and getattr(value, f.name) == f.default:
                raise ParamsError(f"{source}: {section}.{f.name}: required, not set")
    params.path, params.name = path, name
    return params


# ---------------------------------------------------------------------------- files
def _display(path: Path) -> str:
    """``path`` as error messages name it: relative to the repository root when inside it."""
    try:
        return path.relative_to(repo_root()).as_posix()
    except ValueError:
        return str(path)


def _read(path: Path) -> Dict[Any, Any]:
    if not path.is_file():
        raise ParamsError(f"{_display(path)}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{_display(path)}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{_display(path)}: expected a mapping of parameters")
    return data


def _merge(base: Dict[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """``over`` merged over ``base``: mappings key by key, anything else (lists too) replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _chain(path: Path) -> List[Tuple[Path, Dict[Any, Any]]]:
    return read_base_chain(path, _read, lambda p, message: ParamsError(f"{_display(p)}: {message}"))


def load_params(path: Union[str, Path], overrides: Optional[Mapping[str, Any]] = None) -> StudyParams:
    """The params of a params file: its ``_BASE_`` chain (blendstudy.config.read_base_chain; each
    file checked against the schema, then merged over its base: mappings key by key), then
    ``overrides`` (a nested mapping, checked too), missing keys at their schema defaults. A
    relative ``path`` that does not exist here is taken against the repository root. Raises
    ParamsError (one line: file, key, what was expected)."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = repo_root() / p
    data: Dict[str, Any] = {}
    for file, part in _chain(p):
        data = _merge(data, check_partial(part, _display(file)))
    if overrides:
        data = _merge(data, check_partial(overrides, f"{_display(p.resolve())} (overrides)"))
    return build(data, _display(p.resolve()), p, p.stem)
