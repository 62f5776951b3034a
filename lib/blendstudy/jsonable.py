"""Typed records to JSON and back: one encoder and one decoder for every record of the study.

``to_jsonable`` turns dataclasses (with the derived properties a class lists in ``JSON_VIEWS``),
numpy/torch values, paths and tables into plain JSON values;
``from_jsonable(T, data)`` rebuilds a value of type ``T`` (a dataclass, ``List[...]``,
``Dict[str, ...]``, ``Optional[...]``) from such JSON, using the dataclasses' type hints.
Non-finite floats are written as null and read back as NaN where the field is a float.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
import sys
import typing
from functools import cache
from typing import Any, Dict, Mapping

import numpy as np

__all__ = ["to_jsonable", "from_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """A JSON-ready copy of ``obj``: dataclasses -> dicts (recursively), numpy / torch scalars and
    arrays -> Python numbers and lists, Paths and devices -> str, NaN / inf -> None, sets -> sorted
    lists, DataFrames -> list of row dicts; anything else unknown -> str(obj)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        # read-only properties a record names for its readers (derived from its fields; from_jsonable
        # skips them as unknown keys and the record derives them again)
        out.update({name: to_jsonable(getattr(obj, name)) for name in getattr(obj, "JSON_VIEWS", ())})
        return out
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if "pandas" in sys.modules:
        pd = sys.modules["pandas"]
        if isinstance(obj, pd.DataFrame):
            return to_jsonable(obj.to_dict(orient="records"))
        if isinstance(obj, pd.Series):
            return to_jsonable(obj.to_dict())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if isinstance(obj, torch.Tensor):
            return to_jsonable(obj.detach().cpu().tolist())
    return str(obj)


@cache
def _hints(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def from_jsonable(tp: Any, data: Any) -> Any:
    """A value of type ``tp`` rebuilt from ``data`` (what to_jsonable wrote). Unknown keys of a
    dataclass are ignored (older or newer files stay readable); missing ones take their default."""
    if tp is Any or data is None and tp is not float:
        return data
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if data is None:
            return None
        options = [a for a in args if a is not type(None)]
        return from_jsonable(options[0], data) if len(options) == 1 else data
    if origin in (list, tuple, collections.abc.Sequence):
        inner = args[0] if args else Any
        values = [from_jsonable(inner, v) for v in data]
        return tuple(values) if origin is tuple else values
    if origin in (dict, collections.abc.Mapping):
        inner = args[1] if len(args) == 2 else Any
        return {k: from_jsonable(inner, v) for k, v in data.items()}
    if tp is float:
        return float("nan") if data is None else float(data)
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, Mapping):
            raise TypeError(f"{tp.__name__}: expected a mapping, got {type(data).__name__}")
        hints = _hints(tp)
        kwargs = {f.name: from_jsonable(hints.get(f.name, Any), data[f.name])
                  for f in dataclasses.fields(tp) if f.init and f.name in data}
        return tp(**kwargs)
    return data
