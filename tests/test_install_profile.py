"""env/install_profile.py (what `make venv` runs): it installs the profile's lock for the venv's Python and
machine with --require-hashes (the npu profile on x86_64: torch_npu after the lock with --no-deps), retries
with the lock's index where pip's sources lack a local build, removes what the lock does not name, shows
pip's own reason when it cannot install, and a per-profile venv stays out of git."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "env" / "install_profile.py"

_spec = importlib.util.spec_from_file_location("_install_profile_for_tests", SCRIPT)
install_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_profile)
locks = install_profile.locks


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", *args], capture_output=True, text=True,
                          timeout=60)


def _steps(tmp_path: Path, profile: str, python: str, machine: str):
    """(pip argument lists, the text of each step's requirements file) of the profile's lock."""
    steps = install_profile.plan(locks.find(profile, python, machine), str(tmp_path))
    return steps, [Path(step[-1]).read_text() for step in steps]


def test_npu_on_x86_64_installs_torch_npu_without_its_deps_after_the_lock(tmp_path):
    steps, texts = _steps(tmp_path, "npu", "3.9", "x86_64")
    assert [s[:-1] for s in steps] == [["--no-deps", "--require-hashes", "-r"], ["--require-hashes", "-r"],
                                       ["--no-deps", "--require-hashes", "-r"]]
    assert texts[0].startswith("pip==26.0.1 \\\n    --hash=sha256:")
    assert "\ntorch==2.8.0 \\" in texts[1] and "torch-npu" not in "".join(
        ln for ln in texts[1].splitlines(keepends=True) if not ln.lstrip().startswith("#"))
    assert texts[2].startswith("torch-npu==2.8.0.post2 \\\n    --hash=sha256:")
    out = _dry_run("--profile", "npu", "--machine", "x86_64", "--python-version", "3.9")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3
    assert out.stdout.splitlines()[-1].startswith("pip install -q --no-deps --require-hashes -r ")


def test_npu_on_aarch64_and_cpu_install_their_lock_after_its_pip(tmp_path):
    for profile, python, machine in (("npu", "3.9", "aarch64"), ("cpu", "3.11", "x86_64")):
        steps, texts = _steps(tmp_path, profile, python, machine)
        assert [s[:-1] for s in steps] == [["--no-deps", "--require-hashes", "-r"], ["--require-hashes", "-r"]]
        assert texts[0].startswith("pip==") and texts[1].startswith("# Lock of env/requirements-")
    _, (_, cpu) = _steps(tmp_path, "cpu", "3.11", "x86_64")
    assert "\ntorch==2.13.0+cpu \\\n" in cpu


def test_a_python_without_a_lock_is_refused_with_the_locks_there_are():
    out = _dry_run("--profile", "cpu", "--machine", "x86_64", "--python-version", "3.12")
    assert out.returncode == 1 and not out.stdout
    assert "cpu profile has no lock for Python 3.12 on x86_64" in out.stderr and "cpu-py3.11-x86_64.txt" in out.stderr


def _fake_python(tmp_path: Path, fail_unless: str = "", fail_on: str = "", listed=()) -> str:
    """An interpreter whose `-m pip install` fails, as pip does, when its arguments contain ``fail_on``
    or lack ``fail_unless``; `-m pip list --format=json` prints ``listed``."""
    exe = tmp_path / "python"
    listing = json.dumps([{"name": n, "version": "1"} for n in listed])
    exe.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path / 'calls'}
case "$*" in
  *"pip list"*) echo '{listing}'; exit 0;;
  *"pip install"*)
    case "$*" in *"{fail_unless or 'pip install'}"*) ;; *) fail=1;; esac
    case "$*" in *"{fail_on or 'never such an argument'}"*) fail=1;; esac
    if [ -n "$fail" ]; then
      echo "ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu" >&2
      echo "ERROR: No matching distribution found for torch==2.13.0+cpu" >&2; exit 1
    fi;;
esac
exit 0
""")
    exe.chmod(0o755)
    return str(exe)


def test_without_the_local_build_in_pips_sources_the_lock_is_retried_with_its_index(tmp_path, capsys):
    py = _fake_python(tmp_path, fail_unless="--extra-index-url")
    target = locks.find("cpu", "3.11", "x86_64")
    assert install_profile.install(target, py) == 0
    calls = [c for c in (tmp_path / "calls").read_text().splitlines() if "pip install" in c]
    assert [("--extra-index-url " + locks.TORCH_CPU_INDEX) in c for c in calls] == [False, True, False, True]
    said = capsys.readouterr().out
    assert "No matching distribution found for torch==2.13.0+cpu" in said and locks.TORCH_CPU_INDEX in said


def test_a_lock_that_cannot_install_shows_pips_reason(tmp_path, capsys):
    py = _fake_python(tmp_path, fail_on="main-cuda-py3.11")
    assert install_profile.install(locks.find("cuda", "3.11", "x86_64"), py) == 1
    err = capsys.readouterr().err
    assert "could not install the cuda profile's lock (cuda-py3.11-x86_64.txt)" in err
    assert "ERROR: No matching distribution found for torch==2.13.0+cpu" in err


def test_what_the_lock_does_not_name_is_uninstalled(tmp_path):
    py = _fake_python(tmp_path, listed=("pip", "blendstudy", "torch", "torchvision", "Wheel"))
    assert install_profile.install(locks.find("cpu", "3.11", "x86_64"), py) == 0
    assert (tmp_path / "calls").read_text().splitlines()[-1] == "-m pip uninstall -q -y Wheel torchvision"


def test_the_record_names_the_lock_and_its_sha256(tmp_path):
    target = locks.find("npu", "3.9", "aarch64")
    record = json.loads(Path(install_profile.write_record(str(tmp_path), target)).read_text())
    assert record == {"lock": "npu-py3.9-aarch64.txt", "sha256": locks.sha256(target.path), "profile": "npu"}


def test_a_per_profile_venv_is_ignored_by_git():
    out = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", ".venv-npu/bin/python"], timeout=30)
    assert out.returncode == 0, ".venv-npu/ (the Makefile's VENV=.venv-<profile>) would make results say git_dirty"
