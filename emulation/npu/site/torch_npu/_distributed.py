"""The ``hccl`` torch.distributed backend of the emulated torch_npu: gloo underneath.

torch_npu registers ``hccl`` for the ``npu`` device (``Backend.register_backend("hccl", ...,
devices=["npu"])``). Here a Python process group runs each collective with gloo on CPU tensors that
alias the npu tensors' memory (so results land in the npu tensors), waiting for it before returning.
Barrier, broadcast, all_reduce, all_gather (list and single-tensor), reduce_scatter (list), send and
recv are provided; objects go through a gloo group of the caller's own, as with the real stack.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, List

import torch
import torch.distributed as dist

from torch_npu import _backend

_registered = False


def _host(t: Any) -> Any:
    if isinstance(t, torch.Tensor):
        return _backend.cpu_alias(t) if _backend.is_npu(t) else t
    if isinstance(t, (list, tuple)):
        return [_host(x) for x in t]
    return t


class ProcessGroupHCCL(dist.ProcessGroup):
    """A process group named hccl whose collectives are gloo's on host aliases of npu tensors."""

    def __init__(self, store: Any, rank: int, size: int, timeout: timedelta) -> None:
        super().__init__(rank, size)
        self._gloo = dist.ProcessGroupGloo(store, rank, size, timeout)

    def getBackendName(self) -> str:
        return "hccl"

    def _done(self, work: Any) -> Any:
        work.wait()
        return work

    def barrier(self, opts: Any = None) -> Any:
        return self._done(self._gloo.barrier(dist.BarrierOptions()))

    def broadcast(self, tensors: List[torch.Tensor], opts: Any) -> Any:
        return self._done(self._gloo.broadcast(_host(tensors), opts))

    def allreduce(self, tensors: List[torch.Tensor], opts: Any) -> Any:
        return self._done(self._gloo.allreduce(_host(tensors), opts))

    def allgather(self, output_tensors: List[List[torch.Tensor]], input_tensors: List[torch.Tensor],
                  opts: Any) -> Any:
        return self._done(self._gloo.allgather(_host(output_tensors), _host(input_tensors), opts))

    def _allgather_base(self, output: torch.Tensor, input: torch.Tensor, opts: Any) -> Any:
        return self._done(self._gloo._allgather_base(_host(output), _host(input), opts))

    def reduce_scatter(self, output_tensors: List[torch.Tensor], input_tensors: List[List[torch.Tensor]],
                       opts: Any) -> Any:
        return self._done(self._gloo.reduce_scatter(_host(output_tensors), _host(input_tensors), opts))

    def send(self, tensors: List[torch.Tensor], dst: int, tag: int) -> Any:
        return self._done(self._gloo.send(_host(tensors), dst, tag))

    def recv(self, tensors: List[torch.Tensor], src: int, tag: int) -> Any:
        return self._done(self._gloo.recv(_host(tensors), src, tag))


def _create(store: Any, rank: int, size: int, timeout: timedelta) -> ProcessGroupHCCL:
    return ProcessGroupHCCL(store, rank, size, timeout)


def register() -> None:
    global _registered
    if _registered or not dist.is_available():
        return
    if "HCCL" not in dist.Backend._plugins:
        dist.Backend.register_backend("hccl", _create, devices=["npu"])
    dist.is_hccl_available = lambda: True  # type: ignore[attr-defined]  (as torch_npu does)
    _registered = True
