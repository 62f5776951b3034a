"""blendstudy: BlendMask inference in plain PyTorch and the instruments of an optimization study."""

import os as _os

# Before anything imports torch: since torch 2.5, `import torch` loads every installed device backend
# (entry point group "torch.backends", which torch_npu registers) unless TORCH_DEVICE_BACKEND_AUTOLOAD=0;
# with torch_npu installed and CANN not sourced, `import torch` itself would raise. blendstudy.device
# imports torch_npu explicitly instead and reports a failure on one line. Import blendstudy first.
_os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

__version__ = "0.1.0"
