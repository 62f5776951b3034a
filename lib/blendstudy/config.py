"""Loading of AdelaiDet / detectron2 YAML configs for our plain-PyTorch BlendMask.

detectron2 and AdelaiDet cannot be installed here, so this module and blendstudy.config_files
re-implement the part of their config system that inference needs:

* the full default key tree (detectron2 defaults + AdelaiDet additions) ships as data in
  ``configs/defaults.yaml``;
* config files chain through ``_BASE_`` (relative to the including file) and are merged over
  the defaults; unknown keys and values whose type differs from the default are errors;
* detectron2-style overrides (``["KEY", "VALUE", ...]``) or a ``{"KEY": value}`` dict;
* :func:`check_supported` rejects settings our inference code does not implement.

The reading and merging (YAML, ``_BASE_``, the defaults, overrides, shipped names) is
blendstudy.config_files, re-exported here; this module holds the read-only :class:`Config`,
:func:`load_config` / :func:`load_defaults`, and :func:`check_supported`.

The BlendMask configs of AdelaiDet ship under ``configs/BlendMask/`` and can be loaded by
name, e.g. ``load_config("BlendMask/R_101_3x")``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

from blendstudy.config_files import (
    CONFIGS_DIR,
    DEFAULTS_PATH,
    ConfigError,
    Overrides,
    PathLike,
    _apply_file,
    _apply_overrides,
    _defaults_tree,
    _display,
    _resolve,
    _to_plain,
    list_shipped_configs,
    read_base_chain,
    shipped_config_path,
)

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

_SUPPORTED_VERSION = 2

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
# Loading
# --------------------------------------------------------------------------------------------


def load_defaults() -> Config:
    """Return the default config: detectron2 defaults merged with AdelaiDet's additions."""
    return Config(_defaults_tree())


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
