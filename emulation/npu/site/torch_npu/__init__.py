"""Emulated ``torch_npu`` (blendstudy's test double for Huawei's Ascend Extension for PyTorch 2.8).

No machine this project runs on has an Ascend NPU. This package stands in for torch_npu so the
study's NPU code paths run for real: ``import torch_npu`` (after ``import torch``) renames PyTorch's
PrivateUse1 device to ``npu`` and registers ``torch.npu``, and tensors then really live on
``npu:N`` -- real device tensors as far as torch, autograd and dynamo can tell, whose memory is host
memory and whose every kernel is PyTorch's CPU kernel (see ``_backend``). It emulates CODE PATHS,
NEVER SPEED: nothing timed under it is an NPU's latency. It must not import blendstudy.

torch_npu 2.8 behaviours copied (sources: Ascend/pytorch branch v2.8.0 and Ascend's docs):
- ``import torch_npu`` in an interactive interpreter (``hasattr(sys, "ps1")``: every REPL and
  Jupyter kernel) sets ``TASK_QUEUE_ENABLE=0`` and warns (torch_npu/__init__.py);
- the task queue level is read once, at the first device set-up (first ``set_device`` or npu
  tensor): ``ASCEND_LAUNCH_BLOCKING=1`` -> 0, unset -> 1, then fixed (OptionsManager). Real
  torch_npu 2.8 has no Python read-back; this stand-in's own is ``torch.npu.task_queue_level()``;
- ``CPU_AFFINITY_CONF`` parsed and applied at the first device set-up as NPUAffinityController does
  (read back with ``torch.npu.affinity_applied()``, the stand-in's own);
- the cards: 8 x Ascend910B3 (``BLENDSTUDY_EMULATE_NPUS`` shows fewer), ``ASCEND_RT_VISIBLE_DEVICES``
  selects and renumbers them, ``set_device`` of a missing card raises;
- npu tensors are created contiguous: a channels_last npu tensor raises "Only
  c10::MemoryFormat::Contiguous is supported for creating a npu tensor";
- the ``npu`` torch.compile backend (the captured graph run eagerly, see ``_dynamo``), the
  ``hccl`` distributed backend (gloo underneath, see ``_distributed``), ``npu_deformable_conv2d``
  (plain torch, see ``_ops``), ``torch.npu.config.allow_internal_format``,
  ``torch_npu.npu.utils.get_cann_version()``.

``__version__`` follows torch's as torch_npu's does (2.8.0 <-> 2.8.0.postN) and says it is emulated:
``<torch version>.post0+emulated``. ``EMULATED`` is True.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

EMULATED = True
__version__ = torch.__version__.split("+")[0] + ".post0+emulated"

if hasattr(sys, "ps1"):
    os.environ["TASK_QUEUE_ENABLE"] = "0"
    warnings.warn("On the interactive interface, the value of TASK_QUEUE_ENABLE is set to 0 by default. "
                  "Do not set it to 1 to prevent some unknown errors", UserWarning, stacklevel=2)


def _register_device() -> None:
    import torch_npu.npu

    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    if getattr(torch, "npu", None) is not torch_npu.npu:
        torch._register_device_module("npu", torch_npu.npu)
    torch.utils.generate_methods_for_privateuse1_backend(for_tensor=True, for_module=True, for_storage=True)
    acc = getattr(torch._C, "_acc", None)
    if acc is not None:  # torch >= 2.9: hooks and a device guard can be given from Python
        class _Hooks(acc.PrivateUse1Hooks):
            def is_available(self) -> bool:
                return torch_npu.npu.device_count() > 0

            def has_primary_context(self, dev_id: int) -> bool:
                return torch_npu.npu.is_initialized()

            def is_built(self) -> bool:
                return True

        class _Guard(acc.DeviceGuard):
            def type_(self):
                return torch._C._autograd.DeviceType.PrivateUse1

        acc.register_python_privateuseone_hook(_Hooks())
        acc.register_python_privateuseone_device_guard(_Guard())
    else:  # older torch (2.8): the device guard is compiled once from C++ (see _native_guard)
        from torch_npu import _native_guard

        _native_guard.load(torch_npu.npu.device_count())


_register_device()

from torch_npu import _backend, _distributed, _dynamo, npu  # noqa: E402
from torch_npu._ops import npu_deformable_conv2d  # noqa: E402

_backend.register()
_dynamo.register()
_distributed.register()

__all__ = ["EMULATED", "npu", "npu_deformable_conv2d"]
