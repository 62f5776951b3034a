"""env/lock.py and env/locks/: every profile has a hash-pinned lock per platform and Python that is current
(its header's sha256 is its requirements file's: a lock that no longer matches fails here), holds every pin
of the file, and `make lock` rewrites nothing on an unchanged tree; the installed lock's name and sha256
reach every results JSON (blendstudy.device.installed_lock)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from blendstudy import device

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}_for_tests", ROOT / "env" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lock = _load("lock")
detect_profile = _load("detect_profile")
install_profile = _load("install_profile")


@pytest.mark.parametrize("target", lock.TARGETS, ids=lambda t: t.name)
def test_every_lock_is_current_with_its_requirements_file(target):
    assert lock.stale(target) is None, f"env/locks/{target.name} is stale: run `make lock`"
    header = lock.read_header(target.path)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", header["exclude-newer"])


@pytest.mark.parametrize("target", lock.TARGETS, ids=lambda t: t.name)
def test_every_lock_holds_the_files_pins_each_with_hashes(target):
    text = Path(target.path).read_text()
    pinned = lock.pins(target.path)
    for name, version in lock.pins(target.requirements).items():
        assert pinned[name] == version or pinned[name].startswith(version + "+"), (name, pinned[name], version)
    blocks = re.findall(r"^([A-Za-z0-9][^\s=]*)==\S+ \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M)
    assert len(blocks) == len(pinned), "every pin carries its hashes"
    assert not re.search(r"^(-|--)(index-url|extra-index-url|find-links)", text, re.M), "no machine's sources"


def test_locks_cover_the_profiles_targets():
    made = {(t.profile, t.python, t.machine) for t in lock.TARGETS}
    wanted = {(p, py, m) for p, (pys, ms) in detect_profile.PROFILE_TARGETS.items() for py in pys for m in ms}
    assert made == wanted


def test_what_each_platform_gets():
    def pinned(profile, python, machine):
        return lock.pins(lock.find(profile, python, machine).path)

    cpu = pinned("cpu", "3.11", "x86_64")
    assert cpu["torch"] == "2.13.0+cpu" and not [n for n in cpu if n.startswith(("nvidia-", "cuda-"))]
    assert lock.read_header(lock.find("cpu", "3.11", "x86_64").path)["index"].startswith(lock.TORCH_CPU_INDEX)
    assert pinned("cpu", "3.11", "aarch64")["torch"] == "2.13.0"  # PyPI's aarch64 wheel (a CUDA 13 build)
    for python in ("3.10", "3.11", "3.12"):
        cuda = pinned("cuda", python, "x86_64")
        assert cuda["torch"] == "2.8.0" and "nvidia-cudnn-cu12" in cuda and cuda["mistune"] == "3.0.2"
    npu = pinned("npu", "3.9", "aarch64")
    assert npu["torch-npu"] == "2.8.0.post2" and not [n for n in npu if n.startswith("nvidia-") or n == "triton"]
    assert {"exceptiongroup", "tomli"} <= set(npu), "Python 3.9's own requirements are locked too"
    main, no_deps = lock.split_no_deps(Path(lock.find("npu", "3.9", "x86_64").path).read_text())
    assert "torch-npu" not in lock.pins_of(main) and set(lock.pins_of(no_deps)) == {"torch-npu"}


def _copy_env(tmp_path: Path, monkeypatch, target) -> None:
    """The target's requirements file and lock under tmp_path (lock.py's ENV_DIR and LOCK_DIR point there)."""
    (tmp_path / "locks").mkdir()
    (tmp_path / Path(target.requirements).name).write_bytes(Path(target.requirements).read_bytes())
    (tmp_path / "locks" / target.name).write_bytes(Path(target.path).read_bytes())
    monkeypatch.setattr(lock, "ENV_DIR", str(tmp_path))
    monkeypatch.setattr(lock, "LOCK_DIR", str(tmp_path / "locks"))


def _fake_uv(tmp_path: Path, body: str) -> str:
    """A uv that logs its arguments and prints ``body`` as its resolution."""
    (tmp_path / "body.txt").write_text(body)
    exe = tmp_path / "uv"
    exe.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n'
                   f'case "$1" in --version) echo "uv 0.13.9";; *) cat {tmp_path / "body.txt"};; esac\n')
    exe.chmod(0o755)
    return str(exe)


def test_a_changed_requirements_file_makes_its_lock_stale(tmp_path, monkeypatch):
    target = lock.find("npu", "3.9", "aarch64")
    _copy_env(tmp_path, monkeypatch, target)
    assert lock.stale(target) is None
    with open(target.requirements, "a") as fh:
        fh.write("six==1.17.0\n")
    assert lock.stale(target) == "requirements-sha256 changed"
    assert lock.main(["--check", "--profile", "npu"]) == 1


def test_lock_on_an_unchanged_tree_is_a_no_op_and_force_reuses_the_cutoff(tmp_path, monkeypatch):
    target = lock.find("npu", "3.9", "aarch64")
    _copy_env(tmp_path, monkeypatch, target)
    before = Path(target.path).read_text()
    header = lock.read_header(target.path)
    lines = before.splitlines(keepends=True)
    uv = _fake_uv(tmp_path, "".join(lines[len(lock.read_header(target.path)) + 2:]))  # uv's part: after the header
    assert lock.lock(target, uv, [], fresh="2099-01-01T00:00:00Z") is False
    assert not (tmp_path / "calls").exists(), "uv does not run for a current lock"
    lock.lock(target, uv, [], fresh="2099-01-01T00:00:00Z", force=True, log=lambda *_: None)
    calls = (tmp_path / "calls").read_text()
    assert f"--exclude-newer {header['exclude-newer']}" in calls and "2099" not in calls
    assert Path(target.path).read_text() == before, "the same resolution writes the same file"
    assert "--find-links" not in calls, "only a lock holding a local build reads find-links"


def test_a_lock_that_must_hold_the_cpu_build_refuses_the_registrys(tmp_path, monkeypatch):
    target = lock.find("cpu", "3.11", "x86_64")
    _copy_env(tmp_path, monkeypatch, target)
    uv = _fake_uv(tmp_path, "torch==2.13.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(lock.LockError, match=r"torch resolved to 2\.13\.0, not a \+cpu build"):
        lock.lock(target, uv, ["/wheels"], fresh="2099-01-01T00:00:00Z", force=True)
    assert "--find-links /wheels" in (tmp_path / "calls").read_text()


def test_installed_lock_reads_the_venvs_record(tmp_path):
    assert device.installed_lock(str(tmp_path)) is None
    target = lock.find("cpu", "3.11", "x86_64")
    install_profile.write_record(str(tmp_path), target)
    assert device.installed_lock(str(tmp_path)) == {
        "lock": "cpu-py3.11-x86_64.txt", "sha256": lock.sha256(target.path), "profile": "cpu", "current": True}
    (tmp_path / device.LOCK_RECORD).write_text(json.dumps({"lock": "cpu-py3.11-x86_64.txt", "sha256": "0" * 64}))
    assert device.installed_lock(str(tmp_path))["current"] is False
    (tmp_path / device.LOCK_RECORD).write_text(json.dumps({"lock": "gone.txt", "sha256": "0" * 64}))
    assert device.installed_lock(str(tmp_path))["current"] is None
    assert install_profile.RECORD_NAME == device.LOCK_RECORD


def test_environment_info_records_the_lock(monkeypatch):
    monkeypatch.setattr(device, "installed_lock", lambda prefix=None: {"lock": "x.txt", "sha256": "ab"})
    assert device.environment_info()["lock"] == {"lock": "x.txt", "sha256": "ab"}
