#!/usr/bin/env python3
"""Install an environment profile's requirements into a virtual environment (`make venv` runs it).

Standard library only. pip runs quietly; when it cannot install, its own reason (its ERROR lines and
the end of its output) is printed and the exit status is 1.

    python env/install_profile.py --profile cpu --python .venv/bin/python
    python env/install_profile.py --profile npu --python .venv/bin/python --machine x86_64 --dry-run

The npu profile on x86_64: torch_npu's x86_64 wheels require torch's CPU build (`torch==2.8.0+cpu`),
which PyPI does not carry. The CPU build is installed where the configured index offers it; else
PyPI's torch 2.8.0 (the same code built with CUDA libraries) and torch_npu with --no-deps, which
`python -m blendstudy doctor` then reports (check torch_npu_deps).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from typing import List, Optional, Sequence

ENV_DIR = os.path.dirname(os.path.abspath(__file__))
#: the npu profile's torch_npu and the torch build its x86_64 wheel requires
TORCH_NPU_PIN = "torch_npu==2.8.0.post2"
TORCH_CPU_BUILD = "torch==2.8.0+cpu"


def requirements(profile: str) -> str:
    return os.path.join(ENV_DIR, f"requirements-{profile}.txt")


def plan(profile: str, machine: str) -> List[List[str]]:
    """The pip argument lists to run, in order (each after `python -m pip install -q`). The npu
    profile on x86_64 is two alternatives, tried in order (see the module docstring)."""
    req = requirements(profile)
    constraints = os.path.join(ENV_DIR, f"constraints-{profile}.txt")
    main = ["-r", req] + (["-c", constraints] if os.path.isfile(constraints) else [])
    if profile == "npu" and machine == "x86_64":
        return [[TORCH_CPU_BUILD] + main, ["-r", _without(req, "torch_npu")], ["--no-deps", TORCH_NPU_PIN]]
    return [main]


def _without(req: str, name: str) -> str:
    """A copy of requirements file ``req`` without ``name``'s line (in the temp folder)."""
    import tempfile

    lines = [ln for ln in open(req).read().splitlines() if not ln.split("==")[0].strip().lower() == name]
    fd, path = tempfile.mkstemp(prefix=f"{os.path.basename(req)}.", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def pip(python: str, args: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", "install", "-q", *args], capture_output=True, text=True)


def reason(proc: subprocess.CompletedProcess, tail: int = 6) -> str:
    """pip's own reason: its ERROR lines, else the end of its output."""
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lstrip().startswith("ERROR")]
    return "\n".join(errors or lines[-tail:]) or f"pip exited with status {proc.returncode}"


def install(profile: str, python: str, machine: str, log=print) -> int:
    steps = plan(profile, machine)
    if profile == "npu" and machine == "x86_64":
        first = pip(python, steps[0])
        if first.returncode == 0:
            log(f"npu profile on x86_64: {TORCH_CPU_BUILD} from the configured index")
            return 0
        log(f"npu profile on x86_64: the index has no {TORCH_CPU_BUILD} ({reason(first).splitlines()[-1]}); "
            f"installing PyPI's torch and {TORCH_NPU_PIN} with --no-deps (doctor: torch_npu_deps)")
        steps = steps[1:]
    for args in steps:
        proc = pip(python, args)
        if proc.returncode != 0:
            print(f"make venv: pip could not install the {profile} profile ({' '.join(args)}):\n{reason(proc)}",
                  file=sys.stderr)
            return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, choices=("npu", "cuda", "cpu"))
    ap.add_argument("--python", default=sys.executable, help="the venv's interpreter")
    ap.add_argument("--machine", default=platform.machine().lower().replace("amd64", "x86_64"))
    ap.add_argument("--dry-run", action="store_true", help="print the pip steps instead of running them")
    args = ap.parse_args(argv)
    if args.dry_run:
        for step in plan(args.profile, args.machine):
            print("pip install -q " + " ".join(step))
        return 0
    return install(args.profile, args.python, args.machine)


if __name__ == "__main__":
    raise SystemExit(main())
