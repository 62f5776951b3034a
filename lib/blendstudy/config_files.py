"""Reading AdelaiDet / detectron2 YAML configs into the default key tree (blendstudy.config builds
the :class:`~blendstudy.config.Config` object from it and checks what our inference implements).

* the full default key tree (detectron2 defaults + AdelaiDet additions) ships as data in
  ``configs/defaults.yaml`` (read once);
* config files chain through ``_BASE_`` (:func:`read_base_chain`, relative to the including file,
  the one ``_BASE_`` loader, study params files included) and are merged over the defaults;
  unknown keys and values whose type differs from the default are errors (:class:`ConfigError`);
* detectron2-style overrides (``["KEY", "VALUE", ...]``) or a ``{"KEY": value}`` dict are merged
  the same way;
* shipped configs are found by name (``"BlendMask/R_101_3x"``) under ``configs/``.
"""

from __future__ import annotations

import ast
import difflib
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import yaml

__all__ = ["CONFIGS_DIR", "DEFAULTS_PATH", "ConfigError", "Overrides", "PathLike", "list_shipped_configs",
           "read_base_chain", "shipped_config_path"]

#: Directory holding the shipped YAML configs (package data).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


#: The default key tree (detectron2 defaults merged with AdelaiDet's additions).
DEFAULTS_PATH = CONFIGS_DIR / "defaults.yaml"


_BASE_KEY = "_BASE_"


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


def _to_plain(value: Any) -> Any:
    """Return a deep plain-Python copy of ``value`` (dicts and lists only)."""
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value

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
