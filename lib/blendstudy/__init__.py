"""blendstudy: BlendMask inference in plain PyTorch and the instruments of an optimization study."""

import os as _os

#: the environment as it was when blendstudy was first imported (blendstudy.measure.worker falls back
#: to it where /proc/self/environ cannot be read)
ENV_AT_IMPORT = dict(_os.environ)

# Before anything imports torch: since torch 2.5, `import torch` loads every installed device backend
# (entry point group "torch.backends", which torch_npu registers) unless TORCH_DEVICE_BACKEND_AUTOLOAD=0;
# with torch_npu installed and CANN not sourced, `import torch` itself would raise. blendstudy.device
# imports torch_npu explicitly instead and reports a failure on one line. Import blendstudy first.
_os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

# BLENDSTUDY_EMULATE=npu: the emulated Ascend stack of the checkout's emulation/npu (tests, demos),
# put in place before torch is imported; without the variable nothing of it is loaded.
if _os.environ.get("BLENDSTUDY_EMULATE"):
    from blendstudy import emulation as _emulation

    _emulation.activate()

__version__ = "0.1.0"
