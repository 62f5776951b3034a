"""The ``npu`` torch.compile backend of the emulated torch_npu.

torch_npu registers ``npu`` with dynamo (TorchAir's graph engine behind it). Here the captured FX
graph is run as it is, op by op on the npu tensors -- dynamo's ``eager`` backend behaviour: capture,
guards, one graph per input shape with ``dynamic=False`` and the recompile limit all work as with
the real backend; only the graph engine's compilation and fusions are missing (inductor cannot
generate code for this device).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any, Callable, List, Optional

import torch

_REGISTRY = "torch._dynamo.backends.registry"
_registered = False


def npu_backend(gm: torch.fx.GraphModule, example_inputs: List[Any], **kwargs: Any) -> Callable[..., Any]:
    """The FX graph's own forward, run on whatever device its inputs live on."""
    return gm.forward


def _register_into(registry: Any) -> None:
    global _registered
    if "npu" not in registry._COMPILER_FNS:
        registry.register_backend(compiler_fn=npu_backend, name="npu")
    _registered = True


class _RegisterWhenDynamoLoads(importlib.abc.MetaPathFinder):
    """Registers the backend right after dynamo's backend registry is imported, so that importing
    torch_npu does not import dynamo (about 1.5 s) in processes that never compile."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if name != _REGISTRY:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _register_into(module)

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def register() -> None:
    """Register the backend now if dynamo is loaded, else as soon as it is."""
    if _registered:
        return
    if _REGISTRY in sys.modules:
        _register_into(sys.modules[_REGISTRY])
    elif not any(isinstance(f, _RegisterWhenDynamoLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenDynamoLoads())
