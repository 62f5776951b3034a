"""blendstudy.device: device resolution, the torch_npu import probe, environment facts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from blendstudy import device as dev
from blendstudy.device import (
    DeviceError,
    default_compile_backend,
    environment_info,
    npu_import_error,
    peak_memory_mb,
    resolve_device,
    set_recompile_limit,
    synchronize,
)


@pytest.fixture
def fresh_npu_probe():
    """Clear the cached torch_npu probe before and after (other tests must not see a fake)."""
    npu_import_error.cache_clear()
    yield
    npu_import_error.cache_clear()


@pytest.fixture
def broken_torch_npu(tmp_path, monkeypatch, fresh_npu_probe):
    """A torch_npu package on sys.path whose import fails as it does on a machine without CANN."""
    pkg = tmp_path / "torch_npu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        'raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    return pkg


def _npu_usable() -> bool:
    return dev.npu_available()


def test_auto_resolves_to_the_best_available(fresh_npu_probe):
    d = resolve_device("auto")
    if _npu_usable():
        assert d == torch.device("npu", 0)
    elif torch.cuda.is_available():
        assert d == torch.device("cuda", 0)
    else:
        assert d == torch.device("cpu")
    assert resolve_device("") == d
    assert resolve_device("  AUTO ") == d


def test_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")


def test_npu_unavailable_raises(fresh_npu_probe):
    if _npu_usable():
        assert resolve_device("npu").type == "npu"
        return
    with pytest.raises(DeviceError) as info:
        resolve_device("npu")
    msg = str(info.value)
    assert "'npu'" in msg
    assert "no Ascend NPU is usable" in msg
    why = npu_import_error()
    assert (why is not None and why in msg) or "is_available() is False" in msg
    with pytest.raises(DeviceError):
        resolve_device("npu:1")


def test_cuda_index_unavailable_raises():
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    with pytest.raises(DeviceError) as info:
        resolve_device("cuda:3")
    assert "cuda:3" in str(info.value)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in str(info.value)
        with pytest.raises(DeviceError):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda") == torch.device("cuda", 0)


@pytest.mark.parametrize("spec", ["tpu", "mps", "xla:0", "cuda:x", "cpu:-1", "gpu"])
def test_unknown_or_malformed_specs_raise(spec):
    with pytest.raises(DeviceError):
        resolve_device(spec)


def test_npu_import_error_never_raises(fresh_npu_probe):
    err = npu_import_error()
    assert err is None or isinstance(err, str)
    if err is not None:
        assert "\n" not in err
        assert err.split(":")[0].endswith(("Error", "Exception"))
    # cached: the same answer without importing again
    assert npu_import_error() is err


def test_broken_torch_npu_means_no_npu(broken_torch_npu):
    err = npu_import_error()
    assert isinstance(err, str)
    assert "libhccl" in err and err.startswith("ImportError")
    assert not dev.npu_available()
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    with pytest.raises(DeviceError) as info:
        resolve_device("npu")
    assert "libhccl" in str(info.value)
    info_dict = environment_info()
    assert info_dict["torch_npu"] is None
    assert "libhccl" in info_dict["torch_npu_error"]


def test_torch_npu_raising_other_errors_is_contained(tmp_path, monkeypatch, fresh_npu_probe):
    pkg = tmp_path / "torch_npu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise RuntimeError("ACL error 507033\\nsecond line")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    err = npu_import_error()
    assert err == "RuntimeError: ACL error 507033"
    assert resolve_device("cpu") == torch.device("cpu")


def test_environment_info_is_json_serialisable():
    info = environment_info(torch.device("cpu"))
    for key in ("python", "torch", "cpu_model", "git_commit", "torch_npu_error", "cuda", "env"):
        assert key in info
    assert info["torch"] == torch.__version__
    assert info["python"] == sys.version.split()[0]
    assert info["device"] == "cpu"
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert info["git_commit"] is None or len(info["git_commit"]) == 40
    text = json.dumps(info)
    assert json.loads(text)["torch"] == torch.__version__


def test_set_recompile_limit_sets_and_restores():
    import torch._dynamo.config as dcfg

    name = "recompile_limit" if hasattr(dcfg, "recompile_limit") else "cache_size_limit"
    old = getattr(dcfg, name)
    try:
        assert set_recompile_limit(32) == name
        assert getattr(dcfg, name) == 32
    finally:
        setattr(dcfg, name, old)
    assert getattr(dcfg, name) == old


def test_cpu_helpers_are_noops():
    cpu = torch.device("cpu")
    synchronize(cpu)
    assert peak_memory_mb(cpu) is None
    assert default_compile_backend(cpu) == "inductor"
    assert default_compile_backend(torch.device("cuda", 0)) == "inductor"
    # torch.device("npu") only parses once torch_npu is imported; the helper looks at .type only
    assert default_compile_backend(SimpleNamespace(type="npu", index=0)) == "npu"


def test_code_fingerprint_follows_the_package_sources(tmp_path, monkeypatch):
    import blendstudy.device as dm

    fp = dm.code_fingerprint()
    assert len(fp) == 16 and fp == dm.code_fingerprint()
    # a copy of the package with one source changed gets another fingerprint
    import shutil

    pkg = tmp_path / "blendstudy"
    shutil.copytree(Path(dm.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pth"))
    monkeypatch.setattr(dm, "__file__", str(pkg / "device.py"))
    assert dm.code_fingerprint() == fp
    (pkg / "ops.py").write_text((pkg / "ops.py").read_text() + "\n# changed\n")
    assert dm.code_fingerprint() != fp
