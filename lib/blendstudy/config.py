"""Loading of AdelaiDet / detectron2 YAML configs for our plain-PyTorch BlendMask.

detectron2 and AdelaiDet cannot be installed here, so this module re-implements the part of
their config system that inference needs:

* the full default key tree (detectron2 defaults + AdelaiDet additions) ships as data in
  ``configs/defaults.yaml``;
* config files chain through ``_BASE_`` (relative to the including file) and are merged over
  the defaults; unknown keys and values whose type differs from the default are errors;
* detectron2-style overrides (``["KEY", "VALUE", ...]``) or a ``{"KEY": value}`` dict;
* :func:`check_supported` rejects settings our inference code does not implement.

The BlendMask configs of AdelaiDet ship under ``configs/BlendMask/`` and can be loaded by
name, e.g. ``load_config("BlendMask/R_101_3x")``.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import yaml

__all__ = [
    "CONFIGS_DIR",
    "DEFAULTS_PATH",
    "Config",
    "ConfigError",
    "check_supported",
    "list_shipped_configs",
    "load_config",
    "load_defaults",
    "read_base_chain",
    "shipped_config_path",
]

#: Directory holding the shipped YAML configs (package data).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
#: The default key tree (detectron2 defaults merged with AdelaiDet's additions).
DEFAULTS_PATH = CONFIGS_DIR / "defaults.yaml"

_BASE_KEY = "_BASE_"
_SUPPORTED_VERSION = 2

Overrides = Union[Sequence[str], Mapping[str, Any]]
PathLike = Union[str, "os.PathLike[str]"]


class ConfigError(ValueError):
    """A config file, key or value is invalid or unsupported.

    The message always names the file (or source) and, where one is involved, the dotted key.
    ``source`` and ``key`` are also available as attributes (``key`` may be ``None``).
    """

    def __init__(self, message: str, source: Optional[str] = None, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.source = source
        self.key = key


# --------------------------------------------------------------------------------------------
# Config object
# --------------------------------------------------------------------------------------------


def _to_config_value(value: Any) -> Any:
    """Return ``value`` with nested mappings turned into :class:`Config` (lists deep-copied)."""
    if isinstance(value, Mapping):
        return value if isinstance(value, Config) else Config(value)
    if isinstance(value, (list, tuple)):
        return [_to_config_value(v) for v in value]
    return value


def _to_plain(value: Any) -> Any:
    """Return a deep plain-Python copy of ``value`` (dicts and lists only)."""
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


class _Dumper(yaml.SafeDumper):
    """YAML dumper: block-style mappings, flow-style lists, no anchors/aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: List[Any]) -> Any:
    flow = not any(isinstance(v, dict) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _read_only(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("Config is read-only; use Config.with_overrides() or Config.to_dict()")


class Config(dict):
    """A nested, read-only config mapping with attribute access.

    ``cfg.MODEL.FCOS.NUM_CLASSES`` is the same as ``cfg["MODEL"]["FCOS"]["NUM_CLASSES"]``.
    Sub-trees are :class:`Config` as well; sequences are plain lists.  Mutation raises
    ``TypeError``; derive a changed config with :meth:`with_overrides` or work on
    :meth:`to_dict`.
    """

    __slots__ = ()

    def __init__(self, data: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        for key, value in (data or {}).items():
            dict.__setitem__(self, key, _to_config_value(value))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    __setattr__ = _read_only
    __delattr__ = _read_only
    __setitem__ = _read_only
    __delitem__ = _read_only
    __ior__ = _read_only
    clear = _read_only
    pop = _read_only
    popitem = _read_only
    setdefault = _read_only
    update = _read_only

    def __reduce__(self) -> Tuple[Any, Tuple[Dict[str, Any]]]:
        return (type(self), (self.to_dict(),))

    def __copy__(self) -> Config:
        return self

    def __deepcopy__(self, memo: Dict[int, Any]) -> Config:
        return type(self)(self.to_dict())

    def to_dict(self) -> Dict[str, Any]:
        """Return a deep copy of this config as plain nested ``dict``/``list`` objects."""
        return _to_plain(self)

    def dump(self) -> str:
        """Return this config as a YAML string (keys in default order) that loads back."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)

    def with_overrides(self, overrides: Overrides, check: bool = True, source: str = "overrides") -> Config:
        """Return a new :class:`Config` with detectron2-style ``overrides`` applied.

        Keys and types are validated exactly like :func:`load_config` overrides; with ``check``
        the result also goes through :func:`check_supported`.
        """
        tree = self.to_dict()
        _apply_overrides(tree, overrides, source)
        cfg = Config(tree)
        if check:
            check_supported(cfg, source)
        return cfg


# --------------------------------------------------------------------------------------------
# Type checking and merging
# --------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """Return a short type name used in error messages and element checks."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to the type of ``default``, or raise :class:`ConfigError`.

    Rules (a little stricter than yacs): same type required, except that an int is accepted
    for a float (and converted), a tuple for a list, and anything for a ``None`` default.
    Elements of flat lists are checked against the default's first element.
    """
    if default is None:
        return _to_plain(value)
    want, got = _kind(default), _kind(value)
    ok = want == got or (want == "float" and got == "int")
    if not ok:
        raise ConfigError(
            f"{source}: {key}={value!r} has type {got}, expected {want} (default: {default!r})",
            source,
            key,
        )
    if want == "float":
        return float(value)
    if want != "list":
        return value
    flat_default = all(_kind(d) not in ("list", "mapping") for d in default)
    if default and flat_default and len({_kind(d) for d in default}) == 1:
        proto = default[0]
        return [_coerce(v, proto, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return _to_plain(value)


def _decode_string(value: Any, default: Any) -> Any:
    """Return a string value decoded like yacs/detectron2 do; other values unchanged.

    Strings are parsed as Python literals (``"0.3"``, ``"(1, 2)"``, ``"True"``); for bool
    keys ``"true"``/``"false"`` are accepted too.  For string keys the text is kept unless
    it is itself a quoted string literal.
    """
    if not isinstance(value, str):
        return value
    if isinstance(default, bool) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    try:
        decoded = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value
    if isinstance(default, str) and not isinstance(decoded, str):
        return value
    return decoded


def _unknown_key(tree: Mapping[str, Any], key: Any, prefix: str, source: str) -> ConfigError:
    full = f"{prefix}{key}"
    hint = ""
    if isinstance(key, str):
        close = difflib.get_close_matches(key, [k for k in tree if isinstance(k, str)], n=1)
        if close:
            hint = f" (did you mean {prefix}{close[0]}?)"
    return ConfigError(f"{source}: unknown config key {full}{hint}", source, full)


def _merge_into(tree: Dict[str, Any], updates: Mapping[Any, Any], prefix: str, source: str) -> None:
    """Merge ``updates`` into the default-shaped ``tree`` in place, validating every key.

    String values are decoded as Python literals first, as yacs does for both YAML files and
    overrides (upstream configs write tuples as strings, e.g. ``STEPS: (210000, 250000)``).
    """
    for key, value in updates.items():
        if not isinstance(key, str) or key not in tree:
            raise _unknown_key(tree, key, prefix, source)
        full = prefix + key
        current = tree[key]
        if isinstance(current, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{source}: {full}={value!r} must be a mapping of sub-keys, not {_kind(value)}",
                    source,
                    full,
                )
            _merge_into(current, value, full + ".", source)
            continue
        if isinstance(value, Mapping):
            raise ConfigError(
                f"{source}: {full} is a leaf of type {_kind(current)}, got a mapping", source, full
            )
        value = _decode_string(value, current)
        tree[key] = _coerce(value, current, full, source)


def _apply_overrides(tree: Dict[str, Any], overrides: Overrides, source: str) -> None:
    """Apply overrides (``["A.B", "v", ...]`` or ``{"A.B": v}``) to ``tree`` in place."""
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    elif isinstance(overrides, (str, bytes)):
        raise ConfigError(f"{source}: overrides must be a list of KEY VALUE pairs or a dict", source)
    else:
        items = list(overrides)
        if len(items) % 2:
            raise ConfigError(
                f"{source}: override list has odd length {len(items)}; expected KEY VALUE pairs"
                + (f" (last key: {items[-1]})" if items else ""),
                source,
                str(items[-1]) if items else None,
            )
        pairs = list(zip(items[0::2], items[1::2]))
    for key, value in pairs:
        if not isinstance(key, str) or not key or _BASE_KEY in key.split("."):
            raise ConfigError(f"{source}: invalid override key {key!r}", source, str(key))
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge_into(tree, nested, "", source)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _display(path: Path) -> str:
    """Return a short name for ``path``: relative to the shipped configs dir if inside it."""
    try:
        return path.relative_to(CONFIGS_DIR).as_posix()
    except ValueError:
        return str(path)


def _read_yaml(path: Path, display: str) -> Dict[Any, Any]:
    """Return the top-level mapping of a YAML file (``{}`` for an empty file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{display}: config file not found", display) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{display}: cannot read config file: {exc}", display) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{display}: invalid YAML: {exc}", display) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display}: top level of a config must be a mapping, got {_kind(data)}", display)
    return data


@functools.lru_cache(maxsize=1)
def _defaults_tree() -> Dict[str, Any]:
    data = _read_yaml(DEFAULTS_PATH, _display(DEFAULTS_PATH))
    return data


def load_defaults() -> Config:
    """Return the default config: detectron2 defaults merged with AdelaiDet's additions."""
    return Config(_defaults_tree())


def read_base_chain(path: Path, read: Callable[[Path], Dict[Any, Any]], error: Callable[[Path, str], Exception],
                    chain: Tuple[Path, ...] = ()) -> List[Tuple[Path, Dict[Any, Any]]]:
    """The files of ``path``'s ``_BASE_`` chain, bases first: ``[(resolved path, its mapping without
    _BASE_), ...]`` -- the one ``_BASE_`` loader of AdelaiDet configs (here) and of study params files
    (blendstudy.study.params).

    ``_BASE_`` is a file name or a list of them, relative to the including file (``~`` expanded);
    ``read(path)`` returns a file's top-level mapping (raising its own error for a missing file or
    bad YAML); ``error(path, message)`` makes the exception raised, naming the including file, for
    a malformed ``_BASE_``, a cycle or a missing base file. Nothing is merged here.
    """
    path = path.resolve()
    data = dict(read(path))
    base = data.pop(_BASE_KEY, None)
    files: List[Tuple[Path, Dict[Any, Any]]] = []
    if base is not None:
        bases = [base] if isinstance(base, str) else base
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise error(path, f"{_BASE_KEY} must be a file name, got {base!r}")
        for name in bases:
            base_path = Path(os.path.expanduser(name))
            if not base_path.is_absolute():
                base_path = path.parent / base_path
            base_path = base_path.resolve()
            if base_path in chain or base_path == path:
                raise error(path, f"{_BASE_KEY} cycle through {name!r}")
            if not base_path.is_file():
                raise error(path, f"{_BASE_KEY} file {name!r} not found (looked for {base_path})")
            files.extend(read_base_chain(base_path, read, error, chain + (path,)))
    files.append((path, data))
    return files


def _base_error(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{_display(path)}: {message}", _display(path), _BASE_KEY)


def _apply_file(tree: Dict[str, Any], path: Path) -> None:
    """Merge the config file at ``path`` (after its ``_BASE_`` chain) into ``tree``."""
    for file, data in read_base_chain(path, lambda p: _read_yaml(p, _display(p)), _base_error):
        _merge_into(tree, data, "", _display(file))


def shipped_config_path(name: str) -> Path:
    """Return the path of a shipped config such as ``"BlendMask/R_101_3x"`` (``.yaml`` optional).

    Raises :class:`ConfigError` if there is no such shipped config.
    """
    rel = name if name.endswith((".yaml", ".yml")) else name + ".yaml"
    path = (CONFIGS_DIR / rel).resolve()
    if CONFIGS_DIR not in path.parents or not path.is_file() or path == DEFAULTS_PATH:
        raise ConfigError(
            f"{rel}: config file not found (not a shipped config; shipped: "
            f"{', '.join(list_shipped_configs())})",
            rel,
        )
    return path


def _resolve(path_or_name: PathLike) -> Path:
    """Return the config file for a filesystem path or a shipped config name."""
    raw = os.fspath(path_or_name)
    candidate = Path(os.path.expanduser(raw))
    if candidate.is_file():
        return candidate.resolve()
    if not candidate.suffix and candidate.with_suffix(".yaml").is_file():
        return candidate.with_suffix(".yaml").resolve()
    if not candidate.is_absolute():
        try:
            return shipped_config_path(raw)
        except ConfigError:
            pass
    raise ConfigError(
        f"{raw}: config file not found (neither a file nor a shipped config such as 'BlendMask/R_50_1x')",
        raw,
    )


def list_shipped_configs(include_bases: bool = False) -> List[str]:
    """Return the sorted names of the shipped configs, e.g. ``"BlendMask/R_101_3x"``.

    ``_BASE_`` files (``Base-*.yaml``) are left out unless ``include_bases`` is true.
    """
    names = []
    for path in CONFIGS_DIR.rglob("*.yaml"):
        if path.parent == CONFIGS_DIR:  # defaults.yaml
            continue
        if path.name.startswith("Base-") and not include_bases:
            continue
        names.append(path.relative_to(CONFIGS_DIR).with_suffix("").as_posix())
    return sorted(names)


def load_config(path_or_name: PathLike, overrides: Optional[Overrides] = None, check: bool = True) -> Config:
    """Load a detectron2/AdelaiDet YAML config and return the fully merged :class:`Config`.

    ``path_or_name`` is a file path or a shipped name such as ``"BlendMask/R_101_3x"`` (with
    or without ``.yaml``).  ``_BASE_`` chains are followed (relative to the including file),
    then the result is merged over the defaults, then ``overrides`` are applied (detectron2
    style ``["MODEL.FCOS.INFERENCE_TH_TEST", "0.3"]`` or ``{"MODEL.FCOS.INFERENCE_TH_TEST":
    0.3}``).  With ``check`` (default) :func:`check_supported` is applied as well.

    Raises :class:`ConfigError` for a missing file, invalid YAML, unknown keys, type
    mismatches and (with ``check``) unsupported settings.
    """
    path = _resolve(path_or_name)
    display = _display(path)
    tree = copy.deepcopy(_defaults_tree())
    _apply_file(tree, path)
    if overrides:
        _apply_overrides(tree, overrides, f"{display} (overrides)")
    cfg = Config(tree)
    if check:
        check_supported(cfg, f"{display} (with overrides)" if overrides else display)
    return cfg


# --------------------------------------------------------------------------------------------
# What our inference implements
# --------------------------------------------------------------------------------------------

_MISSING = object()


def _lookup(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    """Return a predicate: value equals one of ``allowed`` with the same type (True != 1)."""
    return lambda v: any(type(v) is type(a) and v == a for a in allowed)


def _is_int(lo: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and v >= lo


def _feature_levels(cfg: Mapping[str, Any]) -> Optional[List[str]]:
    """Return FPN output names (p3, p4, ... plus top levels), or None if not derivable."""
    fpn_in = _lookup(cfg, "MODEL.FPN.IN_FEATURES")
    top = _lookup(cfg, "MODEL.FCOS.TOP_LEVELS")
    if not isinstance(fpn_in, list) or type(top) is not int:
        return None
    stages = []
    for name in fpn_in:
        if not (isinstance(name, str) and name.startswith("res") and name[3:].isdigit()):
            return None
        stages.append(int(name[3:]))
    if not stages:
        return []
    last = max(stages)
    return [f"p{s}" for s in sorted(stages)] + [f"p{last + i}" for i in range(1, top + 1)]


def _deform_flags(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 4 and all(type(x) is bool for x in v)


# (dotted key, predicate, reason shown when the predicate fails)
_RULES: List[Tuple[str, Callable[[Any], bool], str]] = [
    ("VERSION", _one_of(_SUPPORTED_VERSION), "only detectron2 config VERSION 2 is understood"),
    ("MODEL.META_ARCHITECTURE", _one_of("BlendMask"), "only the BlendMask meta-architecture is implemented"),
    (
        "MODEL.BACKBONE.NAME",
        _one_of("build_fcos_resnet_fpn_backbone"),
        "only the ResNet-FPN backbone is implemented",
    ),
    ("MODEL.BACKBONE.ANTI_ALIAS", _one_of(False), "anti-aliased (LPF) ResNet is not implemented"),
    ("MODEL.MOBILENET", _one_of(False), "MobileNetV2 backbone is not implemented"),
    ("MODEL.RESNETS.DEPTH", _one_of(18, 34, 50, 101), "supported depths: 18, 34, 50, 101"),
    (
        "MODEL.RESNETS.NORM",
        _one_of("FrozenBN", "BN", "SyncBN"),
        "backbone norm must be FrozenBN, BN or SyncBN (BN/SyncBN act as frozen BN at inference)",
    ),
    ("MODEL.RESNETS.NUM_GROUPS", _is_int(1), "must be an int >= 1"),
    ("MODEL.RESNETS.WIDTH_PER_GROUP", _is_int(1), "must be an int >= 1"),
    ("MODEL.RESNETS.RES5_DILATION", _one_of(1, 2), "supported res5 dilations: 1, 2"),
    (
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
        _deform_flags,
        "needs four booleans, one per stage res2..res5",
    ),
    ("MODEL.RESNETS.DEFORM_MODULATED", _one_of(True, False), "must be a bool"),
    ("MODEL.RESNETS.DEFORM_NUM_GROUPS", _is_int(1), "must be an int >= 1"),
    ("MODEL.RESNETS.DEFORM_INTERVAL", _is_int(1), "must be an int >= 1"),
    ("MODEL.FPN.FUSE_TYPE", _one_of("sum", "avg"), "FPN fuse type must be sum or avg"),
    ("MODEL.FPN.NORM", _one_of("", "GN", "BN", "SyncBN", "FrozenBN"), "unsupported FPN norm"),
    ("MODEL.PROPOSAL_GENERATOR.NAME", _one_of("FCOS"), "only the FCOS proposal generator is implemented"),
    ("MODEL.FCOS.USE_DEFORMABLE", _one_of(False), "deformable FCOS towers are not implemented"),
    (
        "MODEL.FCOS.NORM",
        _one_of("GN", "BN", "SyncBN", "", "none"),
        "FCOS tower norm must be GN, BN, SyncBN or none",
    ),
    ("MODEL.FCOS.TOP_LEVELS", _one_of(0, 1, 2), "FCOS top levels must be 0, 1 or 2"),
    ("MODEL.FCOS.BOX_QUALITY", _one_of("ctrness"), "only centerness box quality is implemented"),
    ("MODEL.BASIS_MODULE.NAME", _one_of("ProtoNet"), "only the ProtoNet basis module is implemented"),
    (
        "MODEL.BASIS_MODULE.NORM",
        _one_of("SyncBN", "BN", "GN", ""),
        "basis module norm must be SyncBN, BN, GN or ''",
    ),
    ("MODEL.TOP_MODULE.NAME", _one_of("conv"), "only the conv top module is implemented"),
    (
        "MODEL.BLENDMASK.POOLER_TYPE",
        _one_of("ROIAlignV2", "ROIAlign"),
        "pooler must be ROIAlignV2 or ROIAlign",
    ),
    (
        "MODEL.BLENDMASK.TOP_INTERP",
        _one_of("bilinear", "nearest"),
        "attention interpolation must be bilinear or nearest",
    ),
    ("MODEL.BLENDMASK.VISUALIZE", _one_of(False), "basis visualization output is not implemented"),
    (
        "MODEL.PANOPTIC_FPN.COMBINE.ENABLED",
        _one_of(False),
        "panoptic (semantic + instance) combination is not implemented",
    ),
    ("INPUT.FORMAT", _one_of("BGR", "RGB"), "input format must be BGR or RGB"),
    ("TEST.AUG.ENABLED", _one_of(False), "test-time augmentation is not implemented"),
]


def check_supported(cfg: Mapping[str, Any], source: str) -> None:
    """Raise :class:`ConfigError` if ``cfg`` uses settings our BlendMask inference lacks.

    ``source`` (usually the config file name) is named in the message together with every
    offending dotted key and value.  Also checks that the FPN/FCOS/basis feature lists are
    consistent.  Returns ``None`` when the config is supported.
    """
    problems: List[Tuple[str, str]] = []

    def add(key: str, value: Any, why: str) -> None:
        problems.append((key, f"{key}={value!r} is not supported ({why})"))

    for key, ok, why in _RULES:
        value = _lookup(cfg, key)
        if value is _MISSING:
            problems.append((key, f"{key} is missing"))
        elif not ok(value):
            add(key, value, why)

    fcos_in = _lookup(cfg, "MODEL.FCOS.IN_FEATURES")
    strides = _lookup(cfg, "MODEL.FCOS.FPN_STRIDES")
    sizes = _lookup(cfg, "MODEL.FCOS.SIZES_OF_INTEREST")
    if isinstance(fcos_in, list) and isinstance(strides, list) and len(fcos_in) != len(strides):
        add("MODEL.FCOS.FPN_STRIDES", strides, f"needs one stride per FCOS.IN_FEATURES {fcos_in}")
    if isinstance(fcos_in, list) and isinstance(sizes, list) and len(sizes) != len(fcos_in) - 1:
        add(
            "MODEL.FCOS.SIZES_OF_INTEREST",
            sizes,
            f"needs len(FCOS.IN_FEATURES) - 1 = {len(fcos_in) - 1} values",
        )
    depth = _lookup(cfg, "MODEL.RESNETS.DEPTH")
    deform_on = _lookup(cfg, "MODEL.RESNETS.DEFORM_ON_PER_STAGE")
    interval = _lookup(cfg, "MODEL.RESNETS.DEFORM_INTERVAL")
    if depth in (18, 34) and _deform_flags(deform_on) and any(deform_on):
        add("MODEL.RESNETS.DEFORM_ON_PER_STAGE", deform_on, "deformable stages need a bottleneck ResNet (50, 101)")
    elif depth in (18, 34) and type(interval) is int and interval > 1:
        add("MODEL.RESNETS.DEFORM_INTERVAL", interval,
            "DEFORM_INTERVAL > 1 selects AdelaiDet's interval ResNet, which has no R18/R34")
    res_out = _lookup(cfg, "MODEL.RESNETS.OUT_FEATURES")
    fpn_in = _lookup(cfg, "MODEL.FPN.IN_FEATURES")
    if isinstance(res_out, list) and isinstance(fpn_in, list):
        missing = [f for f in fpn_in if f not in res_out]
        if missing:
            add("MODEL.FPN.IN_FEATURES", fpn_in, f"{missing} not in RESNETS.OUT_FEATURES {res_out}")
    levels = _feature_levels(cfg)
    if levels is not None:
        for key in ("MODEL.FCOS.IN_FEATURES", "MODEL.BASIS_MODULE.IN_FEATURES"):
            feats = _lookup(cfg, key)
            if isinstance(feats, list) and any(f not in levels for f in feats):
                add(key, feats, f"FPN only produces {levels}")

    if problems:
        raise ConfigError(f"{source}: " + "; ".join(msg for _, msg in problems), source, problems[0][0])
