"""A device guard and accelerator hooks for PrivateUse1 on torch without ``torch._C._acc`` (torch
< 2.9, e.g. 2.8).

PyTorch's Python bindings put a DeviceGuard around most operators (``x - y`` included), and
``torch._C._get_accelerator()`` (torch.distributed's barrier calls it) needs PrivateUse1 hooks once
the device is renamed; before torch 2.9 added ``torch._C._acc`` both could only be registered from
C++. So on such a torch this builds, once, a tiny shared library whose static initializers register
them (``C10_REGISTER_GUARD_IMPL``: current index per thread, no streams, no events; hooks: built,
available, a primary context on every card), and loads it. It
needs a C++ compiler (``$CXX`` or ``c++``); the library is cached per torch version under
``$XDG_CACHE_HOME`` (default ``~/.cache``)/blendstudy-emulated-torch_npu.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch

_SOURCE = r"""
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <atomic>

namespace {
std::atomic<int> npu_count{8};
thread_local c10::DeviceIndex npu_current = 0;

struct EmulatedNpuGuard final : public c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const noexcept override { return c10::DeviceType::PrivateUse1; }
  c10::Device exchangeDevice(c10::Device d) const noexcept override {
    c10::Device old = getDevice();
    uncheckedSetDevice(d);
    return old;
  }
  c10::Device getDevice() const noexcept override { return c10::Device(c10::DeviceType::PrivateUse1, npu_current); }
  void setDevice(c10::Device d) const noexcept override { uncheckedSetDevice(d); }
  void uncheckedSetDevice(c10::Device d) const noexcept override {
    if (d.has_index()) npu_current = d.index();
  }
  c10::Stream getStream(c10::Device d) const noexcept override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream exchangeStream(c10::Stream s) const noexcept override {
    return c10::Stream(c10::Stream::DEFAULT, s.device());
  }
  c10::DeviceIndex deviceCount() const noexcept override { return static_cast<c10::DeviceIndex>(npu_count.load()); }
};

C10_REGISTER_GUARD_IMPL(PrivateUse1, EmulatedNpuGuard);

struct EmulatedNpuHooks final : public at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return npu_count.load() > 0; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
};

const bool hooks_registered = [] {
  if (!at::isPrivateUse1HooksRegistered()) {
    at::RegisterPrivateUse1HooksInterface(new EmulatedNpuHooks());
  }
  return true;
}();
}  // namespace

extern "C" void emulated_npu_set_device_count(int n) { npu_count.store(n); }
"""

_LIB = None


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "blendstudy-emulated-torch_npu"


def _build(target: Path) -> None:
    torch_dir = Path(torch.__file__).resolve().parent
    abi = int(bool(torch.compiled_with_cxx11_abi()))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=str(target.parent)) as tmp:
        src = Path(tmp) / "npu_guard.cpp"
        src.write_text(_SOURCE)
        out = Path(tmp) / target.name
        cmd = [os.environ.get("CXX", "c++"), "-shared", "-fPIC", "-O1", "-std=c++17",
               f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{torch_dir / 'include'}", str(src),
               f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
               f"-L{torch_dir / 'lib'}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_dir / 'lib'}", "-o", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ImportError(f"emulated torch_npu: torch {torch.__version__} has no torch._C._acc, so a small C++ "
                              f"device guard must be compiled, and that failed: {exc}") from exc
        if proc.returncode != 0:
            raise ImportError(f"emulated torch_npu: compiling the PrivateUse1 device guard for torch "
                              f"{torch.__version__} failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        os.replace(out, target)  # atomic: concurrent builders each install a complete file


def load(device_count: int) -> None:
    """Build (first time) and load the guard; tell it how many cards there are."""
    global _LIB
    if _LIB is None:
        key = hashlib.sha256(f"{torch.__version__}\n{torch.__file__}\n{_SOURCE}".encode()).hexdigest()[:16]
        target = _cache_dir() / f"npu_guard-{key}.so"
        if not target.is_file():
            _build(target)
        _LIB = ctypes.CDLL(str(target), mode=ctypes.RTLD_GLOBAL)
    _LIB.emulated_npu_set_device_count(int(device_count))
