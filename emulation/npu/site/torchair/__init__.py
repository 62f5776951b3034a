"""Emulated ``torchair`` (blendstudy's test double): torch_npu 2.8 ships TorchAir, whose
``get_npu_backend(compiler_config=CompilerConfig())`` returns the graph-engine backend for
torch.compile. Here it returns the emulated torch_npu's ``npu`` backend (the FX graph run on the CPU)."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["CompilerConfig", "get_npu_backend"]


class CompilerConfig:
    """Accepted and kept; the emulated backend has no graph-engine options."""

    def __init__(self) -> None:
        self.mode = "max-autotune"


def get_npu_backend(compiler_config: Optional[CompilerConfig] = None) -> Any:
    import torch_npu  # noqa: F401  (registers the "npu" backend with dynamo)
    from torch._dynamo.backends.registry import lookup_backend

    return lookup_backend("npu")
