"""blendstudy.doctor: every check named and answered, known values reported, the known problems caught."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from blendstudy import device as devmod
from blendstudy import doctor
from blendstudy.doctor import environment as doctor_env  # where the package checks live

CHECKS = ["device_resolves", "profile_pins_fit_python", "profile_pins_installed", "setuptools_editable",
          "mistune_nbconvert", "torch_requirements_met", "torch_autoload_guard", "torch_npu_loads", "torch_npu_deps",
          "cann_sourced",
          "task_queue_not_forced_off", "omp_threads_effective", "core_binding_numa_local", "cpu_affinity_conf_form",
          "set_device_called", "channels_last", "recompile_limit_knob", "compile_backend", "jupytext_pairing",
          "offline_runtime"]


@pytest.fixture(scope="module")
def report():
    return doctor.run_checks("cpu")


def test_every_check_is_named_and_answered(report):
    assert [c.name for c in report.checks] == CHECKS
    for c in report.checks:
        assert c.status in ("pass", "fail", "skip"), c
        assert c.detail and "\n" not in c.detail, c
    assert report.ok == all(c.status != "fail" for c in report.checks)


def test_known_values_appear(report):
    f = report.found
    assert f.python == platform.python_version() and f.executable == sys.executable
    assert f.machine == platform.machine() and f.torch == torch.__version__
    assert f.device == "cpu"
    assert f.affinity == devmod.format_cores(sorted(os.sched_getaffinity(0)))
    detect = doctor.load_detect_profile()
    assert detect is not None
    assert (report.profile, report.profile_reason) == detect.detect()
    assert report.check("device_resolves").status == "pass"
    assert report.check("recompile_limit_knob").status == "pass"
    assert report.check("channels_last").status == "pass"
    assert report.check("set_device_called").status == "skip"
    assert report.check("torch_autoload_guard").status == "pass"  # blendstudy set the env default
    if not devmod.torch_npu_installed():
        assert f.torch_npu is None and report.check("torch_npu_loads").status == "skip"
    json.dumps(report.to_dict())


def test_format_report_fits_one_screen(report):
    text = doctor.format_report(report)
    lines = text.splitlines()
    assert len(lines) <= 40
    assert lines[0] == "blendstudy doctor: device 'cpu' -> cpu"
    assert f"profile  {report.profile} (" in text and torch.__version__ in text
    for c in report.checks:
        assert any(line.split()[:2] == [c.status.upper(), c.name] for line in lines), c.name
    n = {s: sum(c.status == s for c in report.checks) for s in ("pass", "fail", "skip")}
    assert lines[-1].startswith(f"doctor: {n['pass']} pass, {n['fail']} fail, {n['skip']} skip")


def test_python_outside_the_profile_fails(monkeypatch):
    detect = doctor.load_detect_profile()
    check = doctor._check_pins_fit(detect, "npu")
    if platform.machine() != "aarch64" or sys.version_info[:2] != (3, 9):
        assert check.status == "fail" and "npu pins are for Python 3.9 on aarch64" in check.detail
    assert doctor._check_pins_fit(None, None).status == "skip"


def test_old_setuptools_fails(monkeypatch):
    monkeypatch.setattr(doctor_env, "_dist_version", lambda name: "58.1.0" if name == "setuptools" else None)
    c = doctor._check_setuptools()
    assert c.status == "fail" and "58.1.0 < 64" in c.detail
    monkeypatch.setattr(doctor_env, "_dist_version", lambda name: None)
    assert doctor._check_setuptools().status == "fail"


def test_mistune_breaking_nbconvert_fails(monkeypatch):
    pytest.importorskip("nbconvert")
    import nbconvert.filters.markdown_mistune as mm

    def broken(source, *a, **k):
        raise AttributeError("'MathBlockParser' object has no attribute 'parse_axt_heading'")

    monkeypatch.setattr(mm, "markdown2html_mistune", broken)
    c = doctor._check_mistune()
    assert c.status == "fail" and "parse_axt_heading" in c.detail


def test_omp_threads_set_too_late_fails(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads() + 1))
    c = doctor._check_omp()
    assert c.status == "fail" and "set it before the process starts" in c.detail
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    assert doctor._check_omp().status == "pass"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert doctor._check_omp().status == "skip"


def test_cpu_affinity_conf_needs_a_mode(monkeypatch):
    # torch_npu 2.8 takes the mode as a bare value (Ascend's documented form) or as mode:N
    for ok in ("1,npu0:0-23", "2", devmod.cpu_affinity_conf(1, {0: "0-23"})):
        monkeypatch.setenv("CPU_AFFINITY_CONF", ok)
        assert doctor._check_affinity_conf().status == "pass", ok
    for bad in ("npu0:0-23", "mode:x,npu0:0-23", "3"):
        monkeypatch.setenv("CPU_AFFINITY_CONF", bad)
        assert doctor._check_affinity_conf().status == "fail", bad


def test_autoload_guard(monkeypatch):
    monkeypatch.setenv("TORCH_DEVICE_BACKEND_AUTOLOAD", "1")
    monkeypatch.setattr(devmod, "torch_npu_installed", lambda: True)
    assert doctor._check_autoload_guard().status == "fail"
    monkeypatch.setattr(devmod, "torch_npu_installed", lambda: False)
    assert doctor._check_autoload_guard().status == "skip"


def test_npu_checks_on_a_fake_npu(monkeypatch):
    npu = SimpleNamespace(type="npu", index=1)
    c = doctor._check_channels_last(npu)
    assert c.status == "skip" and "Contiguous" in c.detail
    # set_device_called needs a real npu device: tests/test_emulated_npu.py checks it on the emulated stack
    monkeypatch.setattr(devmod, "task_queue_in_force", lambda: {"value": 0, "source": "x"})
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)
    c = doctor._check_task_queue(npu)
    assert c.status == "fail" and "worker process" in c.detail
    monkeypatch.setattr(devmod, "task_queue_in_force", lambda: {"value": 2, "source": "TASK_QUEUE_ENABLE"})
    assert doctor._check_task_queue(npu).status == "pass"


def test_binding_against_the_device_numa_node(monkeypatch):
    npu = SimpleNamespace(type="npu", index=0)
    nodes = {0: list(range(0, 24)), 1: list(range(24, 48))}
    monkeypatch.setattr(devmod, "numa_nodes", lambda *a: nodes)
    found = SimpleNamespace(device_numa_node=1, numa={0: "0-23", 1: "24-47"}, affinity="")
    monkeypatch.setattr(devmod, "allowed_cores", lambda: list(range(48)))
    assert doctor._check_binding(npu, found).status == "skip"  # not bound at all
    monkeypatch.setattr(devmod, "allowed_cores", lambda: list(range(24, 36)))
    found.affinity = "24-35"
    assert doctor._check_binding(npu, found).status == "pass"
    monkeypatch.setattr(devmod, "allowed_cores", lambda: list(range(20, 30)))
    found.affinity = "20-29"
    c = doctor._check_binding(npu, found)
    assert c.status == "fail" and "4 core(s) outside" in c.detail


def test_a_raising_check_is_a_failed_check():
    c = doctor._guard("x", lambda: 1 / 0)
    assert c.status == "fail" and "ZeroDivisionError" in c.detail


def _doctor(env: dict, *args: str) -> subprocess.CompletedProcess:
    code = "import sys\nfrom blendstudy.doctor import main\nraise SystemExit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)


def test_main_prints_json_and_text():
    env = dict(os.environ)
    out = _doctor(env, "--device", "cpu", "--json")
    assert out.returncode in (0, 1), out.stderr
    data = json.loads(out.stdout)
    assert [c["name"] for c in data["checks"]] == CHECKS and data["found"]["device"] == "cpu"
    assert out.returncode == (0 if data["ok"] else 1)


def test_doctor_with_torch_npu_installed_but_no_cann(tmp_path):
    pkg = tmp_path / "torch_npu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise ImportError("libhccl.so: cannot open shared object file")\n')
    info = tmp_path / "torch_npu-2.8.0.post2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.8.0.post2\n")
    (info / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCH_DEVICE_BACKEND_AUTOLOAD", "ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "PROFILE")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path)] + [p for p in [env.get("PYTHONPATH")] if p])
    out = _doctor(env, "--json")
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert data["profile"] == "npu" and "torch_npu is installed" in data["profile_reason"]
    assert data["found"]["torch_npu"] == "2.8.0.post2" and "libhccl" in data["found"]["torch_npu_error"]
    assert checks["torch_npu_loads"]["status"] == "fail"
    assert checks["torch_npu_loads"]["detail"].startswith("torch_npu 2.8.0.post2 is installed but cannot load")
    assert checks["cann_sourced"]["status"] == "fail" and "set_env.sh" in checks["cann_sourced"]["detail"]
    assert checks["torch_autoload_guard"]["status"] == "pass"
    assert checks["device_resolves"]["status"] == "pass"  # auto went on with cpu/cuda
    assert out.stderr.strip().endswith("— continuing on " + data["found"]["device"])
    assert Path(data["found"]["executable"]) == Path(sys.executable)


@pytest.mark.parametrize("value", ["/nonexistent", "EMPTY"])
def test_a_cann_variable_naming_no_toolkit_fails_cann_sourced(monkeypatch, tmp_path, value):
    if value == "EMPTY":
        value = str(tmp_path)
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.setenv("ASCEND_HOME_PATH", value)
    c = doctor._check_cann("npu", SimpleNamespace(cann=None))
    assert c.status == "fail" and value in c.detail and "set_env.sh" in c.detail
    (tmp_path / "version.cfg").write_text("runtime_running_version=[8.5.0.1.200:8.5.0]\n")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path))
    assert doctor._check_cann("npu", SimpleNamespace(cann="8.5.0")).status == "pass"


def test_pins_installed_fails_when_pip_check_fails(monkeypatch):
    monkeypatch.setattr(doctor_env, "_requirement_pins", lambda profile: {"torch": torch.__version__.split("+")[0]})
    monkeypatch.setattr(doctor_env, "pip_check", lambda: [])
    assert doctor._check_pins_installed("cpu").status == "pass"
    monkeypatch.setattr(doctor_env, "pip_check",
                        lambda: ["pandas 3.1.1 has requirement numpy>=9, but you have numpy 2.4.6."])
    c = doctor._check_pins_installed("cpu")
    assert c.status == "fail" and "pip check" in c.detail and "numpy>=9" in c.detail
    # the npu profile's known x86_64 install (torch_npu --no-deps) is torch_npu_deps's to report, not a failure here
    monkeypatch.setattr(doctor_env, "pip_check", lambda: ["torch-npu 2.8.0.post2 has requirement torch==2.8.0+cpu, "
                                                          "but you have torch 2.8.0."])
    assert doctor._check_pins_installed("cpu").status == "pass"

