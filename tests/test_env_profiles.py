"""env/: profile detection, the Makefile's first line and install recipe, and what each profile's
requirements file pins. That every pin resolves for its profile's platforms and Pythons is the locks'
business (env/lock.py resolves them with uv for the target platform; tests/test_env_lock.py checks that
each lock is current and holds the file's pins).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = ROOT / "env"
DETECT = ENV_DIR / "detect_profile.py"


def _detect_module():
    spec = importlib.util.spec_from_file_location("_detect_profile_for_tests", DETECT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


detect_profile = _detect_module()


# ---------------------------------------------------------------------------------------------------
# detection (fast)


def _run_detect(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DETECT), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def _clean_env(tmp_path: Path) -> Dict[str, str]:
    """This environment without CANN's variables, PROFILE, or any nvidia-smi on PATH; a PYTHONPATH
    that hides nothing (torch_npu is not installed here)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "PROFILE", "MAKEFLAGS", "MAKELEVEL")}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("make", "sh", "cat"):
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    env["PATH"] = str(bin_dir)
    return env


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


def test_detect_nothing_is_cpu(tmp_path, fake_root):
    if detect_profile.torch_npu_installed():
        pytest.skip("torch_npu is installed for this Python: detection says npu whatever the rest")
    out = _run_detect("--root", str(fake_root), env=_clean_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("profile: cpu (") and "no CANN" in out.stdout


def _toolkit(tmp_path: Path) -> Path:
    """A folder shaped like a CANN toolkit's `latest` (version.cfg inside)."""
    home = tmp_path / "Ascend" / "ascend-toolkit" / "latest"
    home.mkdir(parents=True)
    (home / "version.cfg").write_text("runtime_running_version=[8.5.0.1.200:8.5.0]\n")
    return home


@pytest.mark.parametrize("var", ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"])
def test_detect_cann_environment_is_npu(tmp_path, fake_root, var):
    env = _clean_env(tmp_path)
    home = _toolkit(tmp_path)
    env[var] = str(home)
    out = _run_detect("--root", str(fake_root), env=env)
    assert out.stdout.strip() == f"profile: npu (CANN environment sourced ({var}={home}))"


@pytest.mark.parametrize("value", ["/nonexistent", "EMPTY"])
def test_a_cann_variable_naming_no_toolkit_is_not_cann(tmp_path, fake_root, value):
    if detect_profile.torch_npu_installed():
        pytest.skip("torch_npu is installed for this Python: detection says npu whatever the rest")
    env = _clean_env(tmp_path)
    if value == "EMPTY":
        value = str(tmp_path / "empty")
        os.mkdir(value)
    env["ASCEND_HOME_PATH"] = value
    out = _run_detect("--make", "--root", str(fake_root), env=env)
    assert out.stdout.split()[0] == "cpu", out.stdout
    assert detect_profile.cann_home_problem(value) is not None


def test_detect_the_emulated_stack_is_npu_installing_cpu(tmp_path, fake_root):
    env = _clean_env(tmp_path)
    env["BLENDSTUDY_EMULATE"] = "npu"
    out = _run_detect("--make", "--root", str(fake_root), env=env)
    words = out.stdout.split()
    assert words[:2] == ["npu", "cpu"] and "emulated Ascend stack" in out.stdout and "CANN 8.5.0" in out.stdout
    assert detect_profile.cann_home_problem(detect_profile.EMULATED_TOOLKIT) is None


def test_detect_installed_toolkit_is_npu(tmp_path, fake_root):
    (fake_root / "usr/local/Ascend/ascend-toolkit").mkdir(parents=True)
    out = _run_detect("--make", "--root", str(fake_root), env=_clean_env(tmp_path))
    assert out.stdout.split()[0] == "npu" and "not sourced yet" in out.stdout


def test_detect_nvidia_is_cuda(tmp_path, fake_root):
    if detect_profile.torch_npu_installed():
        pytest.skip("torch_npu is installed for this Python")
    env = _clean_env(tmp_path)
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    out = _run_detect("--root", str(fake_root), env=env)
    assert out.stdout.strip() == "profile: cuda (NVIDIA driver present (nvidia-smi runs))"
    # an nvidia-smi that fails (no driver loaded) is not a driver; /proc/driver/nvidia is
    smi.write_text("#!/bin/sh\nexit 9\n")
    assert _run_detect("--make", "--root", str(fake_root), env=env).stdout.split()[0] == "cpu"
    (fake_root / "proc/driver/nvidia").mkdir(parents=True)
    assert _run_detect("--make", "--root", str(fake_root), env=env).stdout.split()[0] == "cuda"


def test_detect_profile_given_wins_and_is_checked(tmp_path, fake_root):
    env = _clean_env(tmp_path)
    env["ASCEND_TOOLKIT_HOME"] = "/x"
    assert _run_detect("--profile", "cpu", env=env).stdout.strip() == "profile: cpu (PROFILE=cpu given)"
    env["PROFILE"] = "cuda"
    assert _run_detect("--make", env=env).stdout.strip() == "cuda cuda PROFILE=cuda given"
    bad = _run_detect("--profile", "gpu", env=env)
    assert bad.returncode == 2 and "unknown PROFILE='gpu'" in bad.stderr and not bad.stdout


def test_python_fits():
    fits = detect_profile.python_fits
    assert fits("npu", (3, 9, 18), "aarch64")[0]
    ok, line = fits("npu", (3, 11, 7), "x86_64")
    assert not ok and "npu pins are for Python 3.9 on aarch64" in line
    assert fits("cuda", (3, 12, 1), "x86_64")[0] and not fits("cuda", (3, 9, 18), "x86_64")[0]
    assert fits("cpu", (3, 11, 7), "x86_64")[0] and fits("cpu", (3, 11, 7), "aarch64")[0]
    assert not fits("cpu", (3, 11, 4), "x86_64")[0]  # soupsieve 4.1.1 needs 3.11.5
    assert fits("npu", (3, 9, 18), "x86_64")[0]  # a lock without torch_npu's dependencies (env/locks/)
    assert not fits("cpu", (3, 12, 1), "x86_64")[0]
    assert fits("npu", (3, 9, 0), "arm64")[0]  # macOS spelling of the architecture


@pytest.mark.parametrize("case", ["nothing", "cann", "nvidia", "given", "emulated"])
def test_makefile_first_line_names_the_profile(tmp_path, case):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = _clean_env(tmp_path)
    args = ["make", "-n", "venv", f"VENV={tmp_path / 'venv'}", f"PYTHON={sys.executable}"]
    expected = "profile: cpu (no CANN environment, torch_npu or NVIDIA driver found)"
    installed = None
    if case == "cann":
        home = _toolkit(tmp_path)
        env["ASCEND_HOME_PATH"] = str(home)
        expected = f"profile: npu (CANN environment sourced (ASCEND_HOME_PATH={home}))"
    elif case == "emulated":
        env["BLENDSTUDY_EMULATE"] = "npu"
        expected = ("profile: npu (emulated Ascend stack (BLENDSTUDY_EMULATE=npu: CANN 8.5.0 stand-in in "
                    "emulation/npu; installs the cpu profile))")
        installed = "cpu"
    elif case == "nvidia":
        smi = tmp_path / "bin" / "nvidia-smi"
        smi.write_text("#!/bin/sh\nexit 0\n")
        smi.chmod(0o755)
        expected = "profile: cuda (NVIDIA driver present (nvidia-smi runs))"
    elif case == "given":
        env["ASCEND_HOME_PATH"] = "/x"
        args.append("PROFILE=cpu")
        expected = "profile: cpu (PROFILE=cpu given)"
    if case in ("nothing", "nvidia") and (detect_profile.torch_npu_installed() or Path("/proc/driver/nvidia").exists()
                                          or Path(detect_profile.ASCEND_TOOLKIT_DIR).is_dir()):
        pytest.skip("this machine has an accelerator stack; the make case cannot hide it")
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == expected
    profile = installed or expected.split()[1]
    install = next(i for i, line in enumerate(lines) if f"env/install_profile.py --profile {profile} " in line)
    editable = next(i for i, line in enumerate(lines) if "-e ." in line)
    assert install < editable, "the lock (its setuptools >= 64 included) goes in before the editable install"
    assert not any("--upgrade" in line for line in lines), "nothing is installed beside the lock unpinned"


def test_makefile_lock_target_runs_the_lock_script(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "lock", "FORCE=1", "FIND_LINKS=/a /b", f"VENV={tmp_path / 'v'}",
                          f"PYTHON={sys.executable}"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=_clean_env(tmp_path))
    assert out.returncode == 0, out.stderr
    line, = [ln for ln in out.stdout.splitlines() if "env/lock.py" in ln]
    assert line.split()[1:] == ["env/lock.py", "--uv", "uv", "--force", "--find-links", "/a", "--find-links", "/b"]


def test_makefile_rejects_an_unknown_profile(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "venv", "PROFILE=gpu", f"VENV={tmp_path / 'v'}", f"PYTHON={sys.executable}"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode != 0 and "cannot pick a profile" in out.stderr


# ---------------------------------------------------------------------------------------------------
# static checks of the files


def _requirement_lines(path: Path) -> List[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _pins(path: Path) -> Dict[str, str]:
    from packaging.utils import canonicalize_name

    out = {}
    for line in _requirement_lines(path):
        name, _, version = line.partition("==")
        out[canonicalize_name(name)] = version.strip()
    return out


@pytest.mark.parametrize("profile", ["npu", "cuda", "cpu"])
def test_profile_files_pin_everything_the_issue_names(profile):
    pins = _pins(ENV_DIR / f"requirements-{profile}.txt")
    assert all(v for v in pins.values()), "every line is an exact pin"
    assert {"jupytext", "onnx", "ruff", "nbstripout", "uv", "pip"} <= set(pins)
    if pins["nbconvert"].startswith("7.16."):
        major, minor = (int(x) for x in pins["mistune"].split(".")[:2])
        assert (major, minor) < (3, 1), "nbconvert 7.16.x fails with mistune >= 3.1 ('parse_axt_heading')"
    if profile == "npu":
        assert pins["torch"] == "2.8.0" and pins["torch-npu"] == "2.8.0.post2"
        assert tuple(int(x) for x in pins["sympy"].split(".")) >= (1, 13, 3), "torch 2.8.0 needs sympy>=1.13.3"
        assert "onnxruntime" in pins
        assert pins["nbstripout"] == "0.8.2", "nbstripout 0.9 needs Python >= 3.10"
    else:
        assert pins["nbstripout"] == "0.9.1"
    if profile == "cuda":
        assert "onnxruntime-gpu" in pins
    if profile == "cpu":
        assert {"onnxruntime", "openvino"} <= set(pins)
