"""blendstudy.device: device resolution, the torch_npu import probe, environment facts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from blendstudy import ascend_host, provenance, torch_npu_probe
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
    monkeypatch.setattr(provenance, "__file__", str(pkg / "provenance.py"))  # code_fingerprint's package root
    assert dm.code_fingerprint() == fp
    (pkg / "device.py").write_text((pkg / "device.py").read_text() + "\n# changed\n")
    assert dm.code_fingerprint() != fp


# ---------------------------------------------------------------------------------------------------
# torch_npu installed without CANN: torch's backend autoload, the one-line report (subprocesses)


def _stand_in_torch_npu(root: Path) -> Path:
    """A torch_npu distribution as pip installs it (dist-info with torch's `torch.backends` entry point,
    as torch_npu 2.8.0.post2's own entry_points.txt has it) whose import fails as without CANN."""
    pkg = root / "torch_npu"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        'raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")\n'
        "def _autoload():\n    pass\n")
    info = root / "torch_npu-2.8.0.post2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.8.0.post2\n")
    (info / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    (info / "RECORD").write_text("")
    return root


def _env_with(path: Path, **extra: str) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_DEVICE_BACKEND_AUTOLOAD", "ASCEND_TOOLKIT_HOME",
                                                           "ASCEND_HOME_PATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(path)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def _py(code: str, env: dict, *args: str):
    import subprocess

    return subprocess.run([sys.executable, *args, "-c", code] if code else [sys.executable, *args],
                          capture_output=True, text=True, env=env, timeout=300)


LIBHCCL_LINE = ("torch_npu 2.8.0.post2 is installed but cannot load: ImportError: libhccl.so: cannot open shared "
                "object file: No such file or directory; source /usr/local/Ascend/ascend-toolkit/set_env.sh")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return _stand_in_torch_npu(tmp_path_factory.mktemp("stand_in"))


def test_stand_in_reproduces_the_autoload_failure(stand_in):
    """Without blendstudy's default, plain `import torch` fails when torch_npu cannot load."""
    out = _py("import torch", _env_with(stand_in))
    assert out.returncode != 0
    assert "Failed to load the backend extension: torch_npu" in out.stderr
    assert "libhccl.so" in out.stderr


def test_auto_continues_on_cpu_with_one_line(stand_in):
    out = _py("import blendstudy.device as d; print(d.resolve_device('auto')); print(d.resolve_device('auto'))",
              _env_with(stand_in, CUDA_VISIBLE_DEVICES=""))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cpu", "cpu"]
    assert out.stderr.strip().splitlines() == [f"blendstudy: {LIBHCCL_LINE} — continuing on cpu"]


def test_explicit_npu_stops_with_the_same_line(stand_in):
    direct = _py("import blendstudy.device as d\ntry:\n    d.resolve_device('npu')\nexcept d.DeviceError as e:\n"
                 "    print(e)\n    raise SystemExit(2)\n", _env_with(stand_in))
    assert direct.returncode == 2
    assert direct.stdout.strip() == f"device 'npu' requested but no Ascend NPU is usable: {LIBHCCL_LINE}"
    assert direct.stderr.strip() == ""  # no warning besides the error: nothing continued


def test_cli_explicit_npu_exits_2_with_one_line(stand_in, tmp_path):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48)).save(image)
    out = _py("", _env_with(stand_in), "-m", "blendstudy", "predict", "--config", "BlendMask/550_R_50_3x",
              "--device", "npu", "--output-json", str(tmp_path / "out.json"), str(image))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"blendstudy: device 'npu' requested but no Ascend NPU is usable: {LIBHCCL_LINE}"]


def test_importing_blendstudy_first_keeps_an_explicit_autoload_setting(stand_in):
    out = _py("import os, blendstudy; print(os.environ['TORCH_DEVICE_BACKEND_AUTOLOAD'])", _env_with(stand_in))
    assert out.stdout.strip() == "0"
    out = _py("import os, blendstudy; print(os.environ['TORCH_DEVICE_BACKEND_AUTOLOAD'])",
              _env_with(Path("/nonexistent"), TORCH_DEVICE_BACKEND_AUTOLOAD="1"))
    assert out.stdout.strip() == "1"


def test_no_torch_npu_installed_is_not_a_problem(fresh_npu_probe, capsys):
    if dev.torch_npu_installed():
        pytest.skip("torch_npu is installed here")
    assert dev.npu_load_problem() is None
    dev.resolve_device("auto")
    assert "torch_npu" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# activate, unsupported switches


def test_activate_sets_the_current_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "npu", SimpleNamespace(set_device=lambda i: calls.append(("npu", i))), raising=False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("cuda", i)))
    npu1 = SimpleNamespace(type="npu", index=1)
    assert dev.activate(npu1) is npu1
    dev.activate(SimpleNamespace(type="cuda", index=None))
    assert dev.activate(torch.device("cpu")) == torch.device("cpu")
    assert calls == [("npu", 1), ("cuda", 0)]


def test_unsupported_switch():
    npu = SimpleNamespace(type="npu", index=0)
    why = dev.unsupported_switch(npu, "channels_last")
    assert why and "Only c10::MemoryFormat::Contiguous is supported for creating a npu tensor" in why
    assert dev.unsupported_switch(npu, "fold_bn") is None
    assert dev.unsupported_switch(torch.device("cpu"), "channels_last") is None
    assert dev.unsupported_switch(SimpleNamespace(type="cuda", index=0), "channels_last") is None


# ---------------------------------------------------------------------------------------------------
# CANN and driver versions from fake files


@pytest.fixture
def toolkit(tmp_path, monkeypatch):
    root = tmp_path / "latest"
    root.mkdir()
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(root))
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    monkeypatch.setattr(ascend_host, "_toolkit_roots", lambda: [str(root)])
    return root


def test_parse_version_cfg():
    text = ("# version info\nrequired_opp_abi_version=\">=6.3, <=7.3\"\n"
            "runtime_installed_version=[7.3.0.1.231:8.0.RC2]\nruntime_running_version=[7.3.0.1.231:8.0.RC2]\n"
            "compiler_running_version=[7.3.0.1.231:8.0.RC2]\n")
    assert dev.parse_version_cfg(text) == "8.0.RC2"
    assert dev.parse_version_cfg("runtime_running_version=[8.5.0.1.1:8.5.0]\n") == "8.5.0"
    assert dev.parse_version_cfg("nothing here\n") is None


def test_cann_version_prefers_version_cfg(toolkit):
    (toolkit / "version.cfg").write_text("runtime_running_version=[7.3.0.1.231:8.0.RC2]\n")
    (toolkit / "compiler").mkdir()
    (toolkit / "compiler" / "version.info").write_text("Version=7.3.0.1.231\n")
    assert dev.cann_version() == "8.0.RC2"


def test_cann_version_falls_back_to_info_files(toolkit):
    assert dev.cann_version() is None
    (toolkit / "aarch64-linux").mkdir()
    (toolkit / "aarch64-linux" / "ascend_toolkit_install.info").write_text(
        "package_name=Ascend-cann-toolkit\nversion=8.5.0\ninnerversion=V100R001C25\narch=aarch64\n")
    assert dev.cann_version() == "8.5.0"
    (toolkit / "compiler").mkdir()
    (toolkit / "compiler" / "version.info").write_text("Version=8.5.0.1.100\n")
    assert dev.cann_version() == "8.5.0.1.100"  # compiler/version.info comes before the install info


def test_cann_version_asks_a_loaded_torch_npu_first(toolkit, monkeypatch):
    (toolkit / "version.cfg").write_text("runtime_running_version=[7.3.0.1.231:8.0.RC2]\n")
    utils = SimpleNamespace(get_cann_version=lambda module="CANN": "8.5.0")
    fake = SimpleNamespace(npu=SimpleNamespace(utils=utils))
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setitem(sys.modules, "torch_npu.npu", fake.npu)
    monkeypatch.setitem(sys.modules, "torch_npu.npu.utils", utils)
    monkeypatch.setattr(ascend_host, "npu_import_error", lambda: None)
    assert dev.cann_version() == "8.5.0"


NPU_SMI = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 24.1.rc2                 Version: 24.1.rc2                                             |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 95.1        37                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3390 / 65536         |
+===========================+===============+====================================================+
| 1     910B3               | OK            | 93.4        36                0    / 0             |
| 0                         | 0000:01:00.0  | 0           0    / 0          3390 / 65536         |
+===========================+===============+====================================================+
+---------------------------+---------------+----------------------------------------------------+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| 0       0                 | 12345         | python                   | 3100                    |
+===========================+===============+====================================================+
"""


def test_parse_npu_smi():
    info = dev.parse_npu_smi(NPU_SMI)
    assert info["driver"] == "24.1.rc2"
    assert info["cards"] == [{"npu": 0, "name": "910B3", "health": "OK", "bus_id": "0000:C1:00.0"},
                             {"npu": 1, "name": "910B3", "health": "OK", "bus_id": "0000:01:00.0"}]
    assert dev.parse_npu_smi("") == {"driver": None, "cards": []}


def test_driver_version(monkeypatch):
    monkeypatch.setattr(ascend_host, "npu_smi", lambda: dev.parse_npu_smi(NPU_SMI))
    assert dev.driver_version() == "24.1.rc2"
    monkeypatch.setattr(ascend_host, "npu_smi", lambda: None)
    monkeypatch.setattr(ascend_host, "_read", lambda p: "Version=23.0.6\nascendhal_version=7.35.19\n"
                                if p == "/usr/local/Ascend/driver/version.info" else None)
    assert dev.driver_version() == "23.0.6"
    assert dev.parse_version_info("Version=23.0.6\n") == "23.0.6"


# ---------------------------------------------------------------------------------------------------
# cores, NUMA, CPU_AFFINITY_CONF


@pytest.mark.parametrize("text, cores", [("144-167,170", list(range(144, 168)) + [170]), ("0", [0]),
                                         ("", []), ("3,1-2, 2", [1, 2, 3]), ("0-23,48-71\n", None)])
def test_parse_and_format_cores(text, cores):
    parsed = dev.parse_cores(text)
    if cores is not None:
        assert parsed == cores
    assert dev.parse_cores(dev.format_cores(parsed)) == parsed
    assert dev.format_cores(list(range(144, 168)) + [170]) == "144-167,170"
    assert dev.format_cores([5, 1, 2, 3]) == "1-3,5"


@pytest.mark.parametrize("bad", ["a-b", "5-3", "1-", "-4"])
def test_parse_cores_rejects(bad):
    with pytest.raises(ValueError):
        dev.parse_cores(bad)


@pytest.fixture
def fake_sys(tmp_path, monkeypatch):
    """Two NUMA nodes of 24+24 cores, NPU 0 (0000:c1:00.0) on node 1, NPU 1 (0000:01:00.0) node -1."""
    root = tmp_path / "sys"
    for node, cpus in ((0, "0-23,48-71"), (1, "24-47,72-95")):
        d = root / "devices" / "system" / "node" / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
    (root / "devices" / "system" / "node" / "possible").write_text("0-1\n")
    for bus, node in (("0000:c1:00.0", "1"), ("0000:01:00.0", "-1")):
        d = root / "bus" / "pci" / "devices" / bus
        d.mkdir(parents=True)
        (d / "numa_node").write_text(node + "\n")
    monkeypatch.setattr(ascend_host, "npu_smi", lambda: dev.parse_npu_smi(NPU_SMI))
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    return root


def test_numa_nodes(fake_sys, tmp_path):
    nodes = dev.numa_nodes(str(fake_sys))
    assert sorted(nodes) == [0, 1]
    assert dev.format_cores(nodes[1]) == "24-47,72-95"
    assert dev.numa_nodes(str(tmp_path / "missing")) == {}


def test_device_numa_node_and_local_cores(fake_sys, monkeypatch):
    npu0, npu1 = SimpleNamespace(type="npu", index=0), SimpleNamespace(type="npu", index=1)
    assert dev.device_bus_id(npu0) == "0000:c1:00.0"
    assert dev.device_numa_node(npu0, str(fake_sys)) == 1
    assert dev.device_numa_node(npu1, str(fake_sys)) is None  # numa_node -1: not known
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "1,0")  # process-local npu:1 is card 0
    assert dev.device_numa_node(npu1, str(fake_sys)) == 1
    monkeypatch.setattr(ascend_host, "allowed_cores", lambda: list(range(0, 96)))
    assert dev.format_cores(dev.local_cores(npu1, str(fake_sys))) == "24-47,72-95"
    monkeypatch.setattr(ascend_host, "allowed_cores", lambda: list(range(30, 40)))
    assert dev.local_cores(npu1, str(fake_sys)) == list(range(30, 40))
    monkeypatch.setattr(ascend_host, "allowed_cores", lambda: [0, 1, 2])  # nothing local allowed: all allowed
    assert dev.local_cores(npu1, str(fake_sys)) == [0, 1, 2]
    assert dev.local_cores(npu0, str(fake_sys)) == [0, 1, 2]
    assert dev.device_numa_node(torch.device("cpu")) is None


def test_local_cores_on_cpu_is_the_affinity():
    import os

    assert dev.local_cores(torch.device("cpu")) == sorted(os.sched_getaffinity(0))


def test_cpu_affinity_conf():
    assert dev.cpu_affinity_conf(1) == "mode:1"
    assert dev.cpu_affinity_conf(1, {1: "144-167", 0: list(range(0, 24))}) == "mode:1,npu0:0-23,npu1:144-167"
    assert dev.cpu_affinity_conf(2, {3: [6]}) == "mode:2,npu3:6-6"
    with pytest.raises(ValueError, match="one contiguous"):
        dev.cpu_affinity_conf(1, {0: "0-3,8"})
    with pytest.raises(ValueError):
        dev.cpu_affinity_conf(3)


# ---------------------------------------------------------------------------------------------------
# what this process runs with


def test_effective_runtime_on_cpu(monkeypatch):
    import os

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    monkeypatch.delenv("TASK_QUEUE_ENABLE", raising=False)
    info = dev.effective_runtime()
    assert info["pid"] == os.getpid()
    assert info["interactive"] is hasattr(sys, "ps1")
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["cpu_affinity"] == sorted(os.sched_getaffinity(0))
    assert dev.parse_cores(info["cpu_affinity_ranges"]) == info["cpu_affinity"]
    assert info["env"]["OMP_NUM_THREADS"] == "3" and info["env"]["MALLOC_TRIM_THRESHOLD_"] == "0"
    assert "TASK_QUEUE_ENABLE" not in info["env"]
    if "torch_npu" not in sys.modules:
        assert info["task_queue"] is None
    json.dumps(info)


def test_task_queue_in_force(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", SimpleNamespace())
    monkeypatch.setattr(torch_npu_probe, "npu_import_error", lambda: None)
    monkeypatch.delenv("ASCEND_LAUNCH_BLOCKING", raising=False)
    monkeypatch.delenv("TASK_QUEUE_ENABLE", raising=False)
    assert dev.task_queue_in_force() == {"value": 1, "source": "default (TASK_QUEUE_ENABLE unset)"}
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "2")
    assert dev.task_queue_in_force()["value"] == 2
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "0")
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)
    tq = dev.task_queue_in_force()
    assert tq["value"] == 0 and "interactive" in tq["source"]
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "2")
    monkeypatch.setenv("ASCEND_LAUNCH_BLOCKING", "1")
    assert dev.task_queue_in_force() == {"value": 0, "source": "ASCEND_LAUNCH_BLOCKING=1"}
