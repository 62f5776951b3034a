"""dynamo's per-code recompile limit: its name in this torch, set for the whole process, or held at a
compiled part's own value for each of its calls (the study's way: blendstudy.transforms.compile_module).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

__all__ = ["recompile_limit_knob", "set_recompile_limit", "under_recompile_limit"]


def recompile_limit_knob() -> str:
    """The name of dynamo's per-code recompile limit: `recompile_limit` in newer torch,
    `cache_size_limit` before (~2.6)."""
    import torch._dynamo.config as dcfg

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, name):
            return name
    raise RuntimeError("this torch has neither recompile_limit nor cache_size_limit")


def set_recompile_limit(limit: int) -> str:
    """Set dynamo's per-code recompile limit for the whole process (recompile_limit_knob). Returns the
    name that was set. The study does not: each compiled part runs under its own limit
    (under_recompile_limit)."""
    import torch._dynamo.config as dcfg

    name = recompile_limit_knob()
    setattr(dcfg, name, int(limit))
    return name


def under_recompile_limit(fn: Callable[..., Any], limit: int) -> Callable[..., Any]:
    """``fn`` (a compiled module's forward) called with dynamo's recompile limit at ``limit`` and set
    back afterwards: dynamo reads the limit when a call meets a shape it has no graph for, so each
    compiled part keeps its own limit whatever the process's is."""
    import torch._dynamo.config as dcfg

    name = recompile_limit_knob()

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        saved = getattr(dcfg, name)
        setattr(dcfg, name, int(limit))
        try:
            return fn(*args, **kwargs)
        finally:
            setattr(dcfg, name, saved)

    return call
