"""env/install_profile.py (what `make venv` runs): the npu profile installs on an x86_64 Ascend host, pip's
own reason is shown when a profile cannot install, and a per-profile venv stays out of git."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "env" / "install_profile.py"

_spec = importlib.util.spec_from_file_location("_install_profile_for_tests", SCRIPT)
install_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_profile)


def _dry_run(*args: str) -> list:
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_npu_on_x86_64_tries_the_cpu_build_then_torch_npu_without_its_deps():
    lines = _dry_run("--profile", "npu", "--machine", "x86_64")
    assert lines[0].startswith("pip install -q torch==2.8.0+cpu -r ") and "requirements-npu.txt" in lines[0]
    assert lines[-1] == "pip install -q --no-deps torch_npu==2.8.0.post2"
    rest = [ln.split("#")[0].strip() for ln in Path(lines[1].split("-r ", 1)[1]).read_text().splitlines()]
    assert "torch==2.8.0" in rest and not [ln for ln in rest if ln.startswith("torch_npu")]  # torch_npu apart


def test_npu_on_aarch64_and_cpu_install_their_files_as_they_are():
    assert _dry_run("--profile", "npu", "--machine", "aarch64") == [
        f"pip install -q -r {ROOT / 'env' / 'requirements-npu.txt'}"]
    line, = _dry_run("--profile", "cpu", "--machine", "x86_64")
    assert line.endswith("requirements-cpu.txt -c " + str(ROOT / "env" / "constraints-cpu.txt"))


def _fake_python(tmp_path: Path, fail_on: str) -> str:
    """An interpreter whose `-m pip install` fails, as pip does, when its arguments contain ``fail_on``."""
    exe = tmp_path / "python"
    exe.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path / 'calls'}
case "$*" in
  *{fail_on}*) echo "ERROR: Could not find a version that satisfies the requirement {fail_on}" >&2
               echo "ERROR: No matching distribution found for {fail_on}" >&2; exit 1;;
esac
exit 0
""")
    exe.chmod(0o755)
    return str(exe)


def test_without_the_cpu_build_on_the_index_torch_npu_goes_in_with_no_deps(tmp_path, capsys):
    py = _fake_python(tmp_path, "torch==2.8.0+cpu")
    assert install_profile.install("npu", py, "x86_64") == 0
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 3 and calls[-1].endswith("--no-deps torch_npu==2.8.0.post2")
    said = capsys.readouterr().out
    assert "No matching distribution found for torch==2.8.0+cpu" in said and "doctor" in said


def test_a_profile_that_cannot_install_shows_pips_reason(tmp_path, capsys):
    py = _fake_python(tmp_path, "requirements-cuda.txt")
    assert install_profile.install("cuda", py, "x86_64") == 1
    err = capsys.readouterr().err
    assert "could not install the cuda profile" in err
    assert "ERROR: No matching distribution found for requirements-cuda.txt" in err


def test_a_per_profile_venv_is_ignored_by_git():
    out = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", ".venv-npu/bin/python"], timeout=30)
    assert out.returncode == 0, ".venv-npu/ (the Makefile's VENV=.venv-<profile>) would make results say git_dirty"
