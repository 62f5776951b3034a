"""The ``npu`` device on PyTorch's PrivateUse1 dispatch key, kept in host memory.

An npu tensor here is an ordinary ``torch.Tensor`` whose device is ``npu:N`` (PrivateUse1 dispatch
keys, its own storage, sizes, strides, dtype), so everything that reads tensor metadata -- dynamo's
fake tensors and guards included -- sees a real device tensor. Its storage is host memory: a CPU
tensor's storage handed over through DLPack with the device field set to DLPack's extension device
type (``kDLExtDev``, which torch maps to PrivateUse1), so the npu storage owns that memory.

Kernels: one Python fallback for every operator on the PrivateUse1 key. It runs the operator's CPU
kernel on CPU aliases of the npu arguments (tensors over the same memory), and adopts fresh results
as npu tensors (contiguous, as NPU kernels produce). In-place and ``out=`` operators write through
the aliases and return the npu argument itself; view operators call the CPU kernel on the npu tensors
directly (it only sets sizes and strides over the same storage), so views alias their base as on a
device. A few operators get their own kernel: the factories (``empty.memory_format``,
``empty_strided``: channels_last refused as torch_npu does), copies between devices (``_copy_from``),
``resize_``/``set_``, and ``convolution_overrideable`` (PyTorch routes convolutions of an
out-of-tree device there; it runs ``aten::convolution`` on the CPU).

Memory statistics: every npu storage made here is counted on its card until it is freed (a weakref
finalizer on the storage), with a peak per card.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch._C import DispatchKey, DispatchKeySet
from torch.utils._pytree import tree_map

from torch_npu import _runtime

_CPU = torch.device("cpu")
_CPU_KEYS = DispatchKeySet(DispatchKey.CPU)
_KDL_EXT_DEV = 12  # DLPack DLDeviceType kDLExtDev: torch reads it as PrivateUse1
_NOT_CONTIGUOUS_MSG = "Only c10::MemoryFormat::Contiguous is supported for creating a npu tensor"

aten = torch.ops.aten


# --------------------------------------------------------------------------------------------------
# memory statistics


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.RLock()  # a finalizer can run (GC) while this thread holds it
        self.allocated: Dict[int, int] = {}
        self.peak: Dict[int, int] = {}

    def alloc(self, index: int, nbytes: int) -> None:
        with self.lock:
            now = self.allocated.get(index, 0) + nbytes
            self.allocated[index] = now
            if now > self.peak.get(index, 0):
                self.peak[index] = now

    def free(self, index: int, nbytes: int) -> None:
        with self.lock:
            self.allocated[index] = self.allocated.get(index, 0) - nbytes

    def reset_peak(self, index: int) -> None:
        with self.lock:
            self.peak[index] = self.allocated.get(index, 0)


STATS = _Stats()


# --------------------------------------------------------------------------------------------------
# host memory <-> npu tensors


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLTensorHead(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]
# DLManagedTensorVersioned: {uint32 major, minor; void* manager_ctx; deleter; uint64 flags; DLTensor}
_VERSIONED_HEAD = 24 + 8


def _retarget(capsule: Any, index: int) -> None:
    """Point a DLPack capsule made from a CPU tensor at kDLExtDev device `index` (in place)."""
    name = _capsule_name(capsule)
    ptr = _capsule_pointer(capsule, name)
    if name == b"dltensor_versioned":
        ptr += _VERSIONED_HEAD
    head = _DLTensorHead.from_address(ptr)
    head.device.device_type = _KDL_EXT_DEV
    head.device.device_id = index


def _restride(t: torch.Tensor, size: Sequence[int], stride: Sequence[int], offset: int) -> torch.Tensor:
    """A view of npu tensor `t`'s storage with the given geometry (the CPU kernel of as_strided only
    writes metadata, so it serves any device)."""
    return aten.as_strided.default.redispatch(_CPU_KEYS, t, list(size), list(stride), int(offset))


def adopt(cpu: torch.Tensor, index: int) -> torch.Tensor:
    """An npu:`index` tensor that takes over `cpu`'s storage (no copy) with `cpu`'s geometry."""
    _runtime.lazy_init(index)
    storage = cpu.untyped_storage()
    nbytes = storage.nbytes()
    item = cpu.element_size()
    flat = torch.empty(0, dtype=cpu.dtype).set_(storage, 0, (nbytes // item,), (1,))
    capsule = torch.utils.dlpack.to_dlpack(flat)
    _retarget(capsule, index)
    npu_flat = torch.utils.dlpack.from_dlpack(capsule)
    if npu_flat.device.type != "npu":
        raise RuntimeError(f"emulated npu: this torch ({torch.__version__}) maps DLPack's kDLExtDev to "
                           f"{npu_flat.device.type}, not to the PrivateUse1 device")
    STATS.alloc(index, nbytes)
    weakref.finalize(npu_flat.untyped_storage(), STATS.free, index, nbytes).atexit = False
    if (cpu.dim() == 1 and cpu.storage_offset() == 0 and cpu.numel() == npu_flat.numel()
            and cpu.stride(0) == 1):
        return npu_flat
    return _restride(npu_flat, cpu.size(), cpu.stride(), cpu.storage_offset())


def new_empty(size: Sequence[int], dtype: Optional[torch.dtype], index: int,
              stride: Optional[Sequence[int]] = None) -> torch.Tensor:
    dtype = dtype or torch.get_default_dtype()
    host = torch.empty(list(size), dtype=dtype) if stride is None else torch.empty_strided(list(size), list(stride),
                                                                                           dtype=dtype)
    return adopt(host, index)


def cpu_alias(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor over the same memory as npu tensor `t` (same geometry). It does not own the
    memory: use it only while `t` is alive."""
    storage = t.untyped_storage()
    host = torch._C._construct_storage_from_data_pointer(storage.data_ptr(), _CPU, storage.nbytes())
    return torch.empty(0, dtype=t.dtype).set_(host, t.storage_offset(), t.size(), t.stride())


def is_npu(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "npu"


def _index_of(device: Any) -> Optional[int]:
    if device is None:
        return None
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type != "npu":
        return None
    return _runtime.current_device() if device.index is None else int(device.index)


# --------------------------------------------------------------------------------------------------
# kernels of their own


def _empty_memory_format(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    if memory_format not in (None, torch.contiguous_format, torch.preserve_format):
        raise RuntimeError(_NOT_CONTIGUOUS_MSG)
    return new_empty(size, dtype, _index_of(device) or 0)


def _empty_strided(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    return new_empty(size, dtype, _index_of(device) or 0, stride)


def _host(x: Any) -> Any:
    return cpu_alias(x) if is_npu(x) else x


def _copy_from(src, dst, non_blocking=False):
    # a host -> npu copy with non_blocking from unpinned memory synchronises (nothing to wait for here)
    _host(dst).copy_(_host(src))
    return dst


def _copy_from_and_resize(src, dst):
    if dst.shape != src.shape:
        dst.resize_(src.shape)
    return _copy_from(src, dst)


def resize_npu_(t: torch.Tensor, size: Sequence[int], memory_format=None) -> torch.Tensor:
    """resize_ of an npu tensor: in place when its storage is large enough, else onto new storage
    (the old contents kept, as resize_ does)."""
    if memory_format not in (None, torch.contiguous_format, torch.preserve_format):
        raise RuntimeError(_NOT_CONTIGUOUS_MSG)
    size = [int(s) for s in size]
    numel = 1
    for s in size:
        numel *= s
    need = (t.storage_offset() + numel) * t.element_size()
    if need <= t.untyped_storage().nbytes():
        return aten.resize_.default.redispatch(_CPU_KEYS, t, size)
    old = cpu_alias(t).clone() if t.numel() else None
    fresh = new_empty([numel], t.dtype, t.device.index or 0)
    strides = []
    acc = 1
    for s in reversed(size):
        strides.append(acc)
        acc *= max(s, 1)
    strides.reverse()
    aten.set_.source_Storage_storage_offset.redispatch(_CPU_KEYS, t, fresh.untyped_storage(), 0, size, strides)
    if old is not None:
        n = min(old.numel(), numel)
        cpu_alias(t).view(-1)[:n].copy_(old.reshape(-1)[:n])
    return t


def _restride_in_place(t: torch.Tensor, like: torch.Tensor) -> None:
    aten.set_.source_Storage_storage_offset.redispatch(_CPU_KEYS, t, t.untyped_storage(), like.storage_offset(),
                                                       list(like.shape), list(like.stride()))


def _resize_(t, size, memory_format=None):
    return resize_npu_(t, size, memory_format)


def _set_empty(t):
    fresh = new_empty([0], t.dtype, t.device.index or 0)
    return aten.set_.source_Storage_storage_offset.redispatch(_CPU_KEYS, t, fresh.untyped_storage(), 0, [0], [1])


def _metadata_only(op):
    def kernel(*args, **kwargs):
        return op.redispatch(_CPU_KEYS, *args, **kwargs)
    return kernel


def _convolution_overrideable(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    return _run(aten.convolution.default, (input, weight, bias, stride, padding, dilation, transposed,
                                           output_padding, groups), {})


def _convolution_backward_overrideable(grad_output, input, weight, stride, padding, dilation, transposed,
                                       output_padding, groups, output_mask):
    return _run(aten.convolution_backward.default,
                (grad_output, input, weight, [weight.shape[0]], stride, padding, dilation, transposed,
                 output_padding, groups, output_mask), {})


def _record_stream(t, stream):
    return None


_SPECIAL: Dict[Any, Any] = {
    aten.empty.memory_format: _empty_memory_format,
    aten.empty_strided.default: _empty_strided,
    aten._copy_from.default: _copy_from,
    aten._copy_from_and_resize.default: _copy_from_and_resize,
    aten.resize_.default: _resize_,
    aten.set_.default: _set_empty,
    aten.set_.source_Storage: _metadata_only(aten.set_.source_Storage),
    aten.set_.source_Storage_storage_offset: _metadata_only(aten.set_.source_Storage_storage_offset),
    aten.set_.source_Tensor: _metadata_only(aten.set_.source_Tensor),
    aten.convolution_overrideable.default: _convolution_overrideable,
    aten.convolution_backward_overrideable.default: _convolution_backward_overrideable,
    aten.record_stream.default: _record_stream,
}

#: operators that legitimately take npu tensors together with CPU tensors of any size
_MIXED_OK = {"copy_", "_copy_from", "_copy_from_and_resize", "set_", "_to_copy", "lift_fresh", "equal"}


def _mixed_ok(op) -> bool:
    base = op._schema.name.split("::")[-1]
    return base in _MIXED_OK or "index" in base


# --------------------------------------------------------------------------------------------------
# the fallback


def _devices_of(args: Any, kwargs: Any) -> List[torch.Tensor]:
    found: List[torch.Tensor] = []

    def visit(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            found.append(x)
        return x

    tree_map(visit, (args, kwargs))
    return found


def _check_devices(op, tensors: List[torch.Tensor]) -> Optional[int]:
    npu = sorted({t.device.index or 0 for t in tensors if t.device.type == "npu"})
    if len(npu) > 1:
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"npu:{npu[0]} and npu:{npu[1]}! (when running {op.name()} on the emulated npu)")
    if npu and not _mixed_ok(op):
        for t in tensors:
            if t.device.type == "cpu" and t.dim() > 0:
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two "
                                   f"devices, npu:{npu[0]} and cpu! (when running {op.name()} on the emulated npu)")
    return npu[0] if npu else None


def _write_targets(op, args, kwargs) -> Dict[Any, torch.Tensor]:
    """alias set -> the npu argument an in-place / out= operator writes to."""
    out: Dict[Any, torch.Tensor] = {}
    for i, arg in enumerate(op._schema.arguments):
        info = arg.alias_info
        if info is None or not info.is_write:
            continue
        value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
        if isinstance(value, torch.Tensor):
            out[frozenset(info.before_set)] = value
    return out


_NUMBER = (bool, int, float, complex)


def _callable(op, args, kwargs):
    """`op` itself, or its overload packet when a Tensor argument arrived as a Python number (the
    dispatcher hands a wrapped-number tensor, e.g. the 1 of ``x % 1``, to Python as a number): the
    packet then picks the Scalar overload, which is what a wrapped number means."""
    for i, arg in enumerate(op._schema.arguments):
        value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
        if isinstance(value, _NUMBER) and str(arg.type) == "Tensor":
            return op.overloadpacket
    return op


def _run(op, args, kwargs, index: Optional[int] = None):
    """Run `op` on CPU aliases of its npu arguments and bring the results back to npu:`index`."""
    tensors = _devices_of(args, kwargs)
    found = _check_devices(op, tensors)
    if index is None:
        index = found
    if "device" in kwargs:
        dev_index = _index_of(kwargs["device"])
        if dev_index is not None:
            kwargs = dict(kwargs, device=_CPU)
            index = dev_index
    if index is None:
        index = _runtime.current_device()
    targets = _write_targets(op, args, kwargs)
    out_names = {a.name for a in op._schema.arguments if a.kwarg_only and a.alias_info is not None
                 and a.alias_info.is_write}
    target_ids = {id(v) for k, v in kwargs.items() if k in out_names and is_npu(v)}
    aliases: Dict[int, torch.Tensor] = {}
    fresh_out: Dict[int, torch.Tensor] = {}
    by_ptr: Dict[int, torch.Tensor] = {}

    def to_host(x: Any, grow: bool = False) -> Any:
        if not is_npu(x):
            return x
        key = id(x)
        if key in target_ids and (grow or x.numel() == 0):
            # an out= tensor the kernel resizes: give it a host tensor that can grow
            if key not in fresh_out:
                fresh_out[key] = torch.empty(0, dtype=x.dtype)
            return fresh_out[key]
        if key not in aliases:
            aliases[key] = cpu_alias(x)
            by_ptr.setdefault(x.untyped_storage().data_ptr(), x)
        return aliases[key]

    call = _callable(op, args, kwargs)
    try:
        result = call(*tree_map(to_host, args), **tree_map(to_host, kwargs))
    except RuntimeError as exc:
        if "not resizable" not in str(exc) or not target_ids:
            raise
        # an out= tensor had to grow: run again into host tensors that can, then move the results over
        result = call(*tree_map(lambda x: to_host(x, True), args), **tree_map(lambda x: to_host(x, True), kwargs))

    # write targets: bring their new contents / geometry back to the npu tensors
    for t in targets.values():
        if not is_npu(t):
            continue
        host = fresh_out.get(id(t))
        if host is not None:
            resize_npu_(t, host.shape)
            cpu_alias(t).copy_(host)
            continue
        host = aliases.get(id(t))
        if host is not None and (host.shape != t.shape or host.stride() != t.stride()):
            # resized in place (shrunk) by the kernel: same memory, new geometry
            _restride_in_place(t, host)

    returns = op._schema.returns
    values = result if len(returns) > 1 else (result,)
    converted = []
    for ret, value in zip(returns, values):
        info = ret.alias_info
        if info is not None and info.is_write and frozenset(info.before_set) in targets:
            converted.append(targets[frozenset(info.before_set)])
        else:
            converted.append(tree_map(lambda v: _bring_back(v, index, by_ptr), value))
    if len(returns) == 0:
        return result
    return tuple(converted) if len(returns) > 1 else converted[0]


def _bring_back(value: Any, index: int, by_ptr: Dict[int, torch.Tensor]) -> Any:
    if not isinstance(value, torch.Tensor) or value.device.type != "cpu":
        return value
    base = by_ptr.get(value.untyped_storage().data_ptr())
    if base is not None:
        if base.dtype != value.dtype:
            raise RuntimeError("emulated npu: an operator returned a view of its input with another dtype")
        return _restride(base, value.size(), value.stride(), value.storage_offset())
    if not value.is_contiguous():
        value = value.contiguous()
    return adopt(value, index)


_VIEW_CACHE: Dict[Any, bool] = {}


def _is_view(op) -> bool:
    """A view operator with a CPU kernel (which then only writes metadata)."""
    known = _VIEW_CACHE.get(op)
    if known is None:
        schema = op._schema
        name = schema.name + ("." + schema.overload_name if schema.overload_name else "")
        known = (any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
                 and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"))
        _VIEW_CACHE[op] = known
    return known


def _fallback(op, *args, **kwargs):
    special = _SPECIAL.get(op)
    if special is not None:
        return special(*args, **kwargs)
    if _is_view(op):
        tensors = _devices_of(args, kwargs)
        if tensors and all(t.device.type == "npu" for t in tensors):
            return op.redispatch(_CPU_KEYS, *args, **kwargs)
    return _run(op, args, kwargs)


#: operators with a CompositeExplicitAutograd kernel that cannot serve this device (it raises, or
#: reaches a CPU-only code path): they get an explicit PrivateUse1 kernel that runs their CPU kernel
_EXPLICIT = (aten.convolution_overrideable.default, aten.convolution_backward_overrideable.default)

_LIBRARIES: List[torch.library.Library] = []


def _kernel_for(op):
    special = _SPECIAL.get(op)
    if special is not None:
        return special

    def kernel(*args, **kwargs):
        return _run(op, args, kwargs)
    return kernel


_storage_new = torch.UntypedStorage.__new__


def _untyped_storage_new(cls, *args, **kwargs):
    """torch.UntypedStorage(...) on an npu device: storage made here (torch has no allocator for
    PrivateUse1 without a C++ extension; storage.clone(), deepcopy and storage.npu() come this way)."""
    device = kwargs.get("device")
    index = _index_of(device) if device is not None else None
    if index is None:
        return _storage_new(cls, *args, **kwargs)
    if not args:
        host = torch.empty(0, dtype=torch.uint8)
    elif len(args) == 1 and isinstance(args[0], int):
        host = torch.empty(args[0], dtype=torch.uint8)
    elif len(args) == 1 and isinstance(args[0], (list, tuple)):
        host = torch.tensor(args[0], dtype=torch.uint8)
    else:
        raise TypeError(f"emulated npu: unsupported UntypedStorage arguments {args!r}")
    return adopt(host, index).untyped_storage()


#: operators autocast runs in the lower precision on npu (the matmul / convolution family, as torch's
#: CUDA policy); every other operator passes through autocast unchanged
_AUTOCAST_LOWER = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                   "convolution", "_convolution", "linear", "matmul", "mm", "bmm", "addmm", "addbmm", "baddbmm",
                   "prelu", "chain_matmul", "einsum")


def _autocast_kernel(op):
    def kernel(*args, **kwargs):
        dtype = torch.get_autocast_dtype("npu")

        def cast(x: Any) -> Any:
            if is_npu(x) and x.is_floating_point() and x.dtype != torch.float64:
                return x.to(dtype)
            return x

        with torch._C._ExcludeDispatchKeyGuard(DispatchKeySet(DispatchKey.AutocastPrivateUse1)):
            return op(*tree_map(cast, args), **tree_map(cast, kwargs))
    return kernel


def _register_autocast(lib: torch.library.Library) -> None:
    fallthrough = torch.library.Library("_", "IMPL")
    fallthrough.fallback(torch.library.fallthrough_kernel, dispatch_key="AutocastPrivateUse1")
    _LIBRARIES.append(fallthrough)
    for name in _AUTOCAST_LOWER:
        packet = getattr(aten, name, None)
        if packet is None:
            continue
        for overload in packet.overloads():
            op = getattr(packet, overload)
            if any(a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments):
                continue  # out= variants keep their dtype
            qual = name + ("" if overload == "default" else "." + overload)
            lib.impl(qual, _autocast_kernel(op), "AutocastPrivateUse1")


def register() -> None:
    """Install the fallback on the PrivateUse1 key, the explicit kernels, autocast, and npu storage
    creation (once per process)."""
    if _LIBRARIES:
        return
    torch.UntypedStorage.__new__ = _untyped_storage_new  # type: ignore[method-assign]
    fallback = torch.library.Library("_", "IMPL")
    fallback.fallback(_fallback, dispatch_key="PrivateUse1")
    explicit = torch.library.Library("aten", "IMPL")
    for op in _EXPLICIT:
        schema = op._schema
        name = schema.name.split("::")[-1] + ("." + schema.overload_name if schema.overload_name else "")
        explicit.impl(name, _kernel_for(op), "PrivateUse1")
    _LIBRARIES.extend([fallback, explicit])
    autocast = torch.library.Library("aten", "IMPL")
    _register_autocast(autocast)
    _LIBRARIES.append(autocast)
