#!/usr/bin/env python3
"""Install an environment profile's lock into a virtual environment (`make venv` runs it).

Standard library only. The lock is env/locks/<profile>-py<X.Y>-<machine>.txt for the venv's Python and
this machine (env/lock.py): pip installs the lock's pip first, then the lock with --require-hashes, then
the lock's part after its --no-deps line with --no-deps; what the venv holds beyond the lock is
uninstalled (pip itself and the editable project apart), and the lock's name and sha256 are written to
the venv's RECORD_NAME, which every results JSON's environment reports (blendstudy.device.installed_lock).
pip runs quietly; when it cannot install, its own reason (its ERROR lines and the end of its output) is
printed and the exit status is 1.

    python env/install_profile.py --profile cpu --python .venv/bin/python
    python env/install_profile.py --profile npu --machine x86_64 --python-version 3.9 --dry-run

A lock holding a local build (cpu on x86_64: torch 2.13.0+cpu) names in its header the index that
publishes it: where pip's own sources (its configuration: an index, find-links) lack it, the install
is retried with that index added. The npu profile on x86_64: torch_npu's x86_64 wheel requires torch's
CPU build (`torch==2.8.0+cpu`), which PyPI does not carry; its lock holds PyPI's torch 2.8.0 (the same
code built with CUDA libraries) and torch_npu after the --no-deps line, which `python -m blendstudy
doctor` then reports (check torch_npu_deps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple


def _load_locks():
    """env/lock.py, beside this file, loaded by path (stdlib only; no sys.path change)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_blendstudy_env_lock",
                                                  os.path.join(os.path.dirname(os.path.abspath(__file__)), "lock.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


locks = _load_locks()

#: the file in the venv's root that records the installed lock (read by blendstudy.device.installed_lock)
RECORD_NAME = "blendstudy-lock.json"
#: installed distributions the lock does not name that stay: the installer and the editable project
KEEP = ("pip", "blendstudy")


def interpreter(python: str) -> Tuple[str, str]:
    """(major.minor, sys.prefix) of ``python``."""
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.prefix)"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    return out[0], out[1]


def no_lock(profile: str, python: str, machine: str) -> str:
    have = ", ".join(t.name for t in locks.TARGETS if t.profile == profile)
    return (f"make venv: the {profile} profile has no lock for Python {python} on {machine} (locks: {have}); "
            f"create the venv with one of those Pythons (PYTHON=python3.X)")


def plan(target: locks.Target, workdir: str) -> List[List[str]]:
    """The pip argument lists to run, in order (each after `python -m pip install -q`): the lock's pip
    (the installer first: a fresh venv's pip may be too old for the rest), the lock with --require-hashes,
    then the part after its --no-deps line with --no-deps. The parts are written into ``workdir``."""
    with open(target.path) as fh:
        main, no_deps = locks.split_no_deps(fh.read())
    steps = [("pip", locks.block(main, "pip"), ["--no-deps"]), ("main", main, []), ("no-deps", no_deps, ["--no-deps"])]
    out = []
    for part, text, options in steps:
        if not text:
            continue
        path = os.path.join(workdir, f"{part}-{target.name}")
        with open(path, "w") as fh:
            fh.write(text)
        out.append([*options, "--require-hashes", "-r", path])
    return out


def pip(python: str, args: Sequence[str], command: str = "install") -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", command, "-q", *args], capture_output=True, text=True)


def reason(proc: subprocess.CompletedProcess, tail: int = 6) -> str:
    """pip's own reason: its ERROR lines, else the end of its output."""
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lstrip().startswith("ERROR")]
    return "\n".join(errors or lines[-tail:]) or f"pip exited with status {proc.returncode}"


def index_of(target: locks.Target) -> Optional[str]:
    """The index the lock's header names for its local build (None when it holds none)."""
    value = locks.read_header(target.path).get("index", "")
    return value.split()[0] if value else None


def install_lock(target: locks.Target, python: str, args: Sequence[str], log=print) -> subprocess.CompletedProcess:
    """pip install of one step; retried with the lock's index when pip's sources lack a pinned build."""
    proc = pip(python, args)
    index = index_of(target)
    if proc.returncode != 0 and index and "No matching distribution found" in proc.stdout + proc.stderr:
        log(f"{target.name}: pip's sources lack a pinned build ({reason(proc).splitlines()[-1]}); "
            f"retrying with --extra-index-url {index}")
        proc = pip(python, ["--extra-index-url", index, *args])
    return proc


def surplus(python: str, target: locks.Target) -> List[str]:
    """Installed distributions the lock does not name (KEEP apart)."""
    listed = pip(python, ["--format=json"], command="list")
    names = [item["name"] for item in json.loads(listed.stdout or "[]")]
    wanted = set(locks.pins(target.path)) | {locks.canonical(n) for n in KEEP}
    return sorted(n for n in names if locks.canonical(n) not in wanted)


def write_record(prefix: str, target: locks.Target) -> str:
    """Record the installed lock (name, sha256, profile) in the venv; the record's path."""
    path = os.path.join(prefix, RECORD_NAME)
    with open(target.path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    with open(path, "w") as fh:
        json.dump({"lock": target.name, "sha256": digest, "profile": target.profile}, fh, indent=1)
        fh.write("\n")
    return path


def install(target: locks.Target, python: str, log=print) -> int:
    """Install ``target``'s lock into ``python``'s environment and remove what it does not name; 0 or 1."""
    with tempfile.TemporaryDirectory() as workdir:
        for args in plan(target, workdir):
            proc = install_lock(target, python, args, log)
            if proc.returncode != 0:
                print(f"make venv: pip could not install the {target.profile} profile's lock ({target.name}):\n"
                      f"{reason(proc)}", file=sys.stderr)
                return 1
    extra = surplus(python, target)
    if extra:
        log(f"{target.name}: uninstalling what the lock does not name: {', '.join(extra)}")
        proc = pip(python, ["-y", *extra], command="uninstall")
        if proc.returncode != 0:
            print(f"make venv: pip could not uninstall {', '.join(extra)}:\n{reason(proc)}", file=sys.stderr)
            return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, choices=("npu", "cuda", "cpu"))
    ap.add_argument("--python", default=sys.executable, help="the venv's interpreter")
    ap.add_argument("--machine", default=locks.machine())
    ap.add_argument("--python-version", help="major.minor (default: --python's)")
    ap.add_argument("--dry-run", action="store_true", help="print the pip steps instead of running them")
    args = ap.parse_args(argv)
    version, prefix = (args.python_version, None) if args.python_version else interpreter(args.python)
    target = locks.find(args.profile, version, args.machine)
    if target is None:
        print(no_lock(args.profile, version, args.machine), file=sys.stderr)
        return 1
    if args.dry_run:
        with tempfile.TemporaryDirectory() as workdir:
            for step in plan(target, workdir):
                print("pip install -q " + " ".join(step))
        return 0
    status = install(target, args.python)
    if status == 0:
        write_record(prefix or interpreter(args.python)[1], target)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
