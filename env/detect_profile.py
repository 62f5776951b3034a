#!/usr/bin/env python3
"""Which environment profile (npu, cuda or cpu) this machine should install, and why.

Standard library only: `make` runs it with $(PYTHON) before any virtual environment exists, and
`blendstudy.doctor` loads this same file by path (one implementation). Python >= 3.9.

    python env/detect_profile.py            ->  profile: cpu (no CANN environment, torch_npu or NVIDIA driver found)
    python env/detect_profile.py --make     ->  cpu cpu no CANN environment, ...   (profile, profile installed, why)
    python env/detect_profile.py --json     ->  {"profile": "cpu", "reason": "...", "python": "3.11", ...}
    python env/detect_profile.py --fit      ->  ok: Python 3.11.7 on x86_64 fits: cpu pins are for ...

Order: PROFILE given (argument or environment) > npu > cuda > cpu.
  npu  when CANN's environment is sourced (ASCEND_TOOLKIT_HOME or ASCEND_HOME_PATH naming a toolkit
       folder: version.cfg or <arch>-linux inside), the toolkit is installed
       (/usr/local/Ascend/ascend-toolkit), or torch_npu is installed for this Python; with
       BLENDSTUDY_EMULATE=npu (the emulated stack of emulation/npu) npu too, installing the cpu profile;
  cuda when an NVIDIA driver is present (`nvidia-smi` runs, or /proc/driver/nvidia exists);
  cpu  otherwise.
`--root DIR` looks for the fixed paths under DIR instead of / (tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Dict, List, Mapping, Optional, Tuple

PROFILES = ("npu", "cuda", "cpu")

#: where CANN's toolkit installs by default (its set_env.sh sets ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH)
ASCEND_TOOLKIT_DIR = "/usr/local/Ascend/ascend-toolkit"
CANN_ENV_VARS = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")
NVIDIA_PROC_DIR = "/proc/driver/nvidia"
#: BLENDSTUDY_EMULATE=npu: the emulated Ascend stack of emulation/npu (tests, demos). Detection says npu;
#: what is installed is the cpu profile (the stand-in torch_npu runs on CPU torch)
EMULATE_VAR = "BLENDSTUDY_EMULATE"
EMULATED_INSTALL = "cpu"
EMULATED_TOOLKIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "emulation", "npu", "cann", "ascend-toolkit", "latest")

#: what each profile's pins are locked for (env/lock.py's TARGETS; tests/test_env_lock.py checks they agree):
#: (python versions, machine architectures)
PROFILE_TARGETS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "npu": (("3.9",), ("aarch64", "x86_64")),
    "cuda": (("3.10", "3.11", "3.12"), ("x86_64",)),
    "cpu": (("3.11",), ("x86_64", "aarch64")),
}
#: lowest patch release a profile's pins accept (cpu: soupsieve 4.1.1 requires Python >= 3.11.5)
PROFILE_MIN_PATCH: Dict[str, Tuple[int, int, int]] = {"cpu": (3, 11, 5)}


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


def _nvidia_smi_works(environ: Mapping[str, str]) -> bool:
    exe = shutil.which("nvidia-smi", path=environ.get("PATH", os.defpath))
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=15).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def torch_npu_installed() -> bool:
    """torch_npu is installed for this Python (found, not imported: without CANN its import fails)."""
    try:
        return importlib.util.find_spec("torch_npu") is not None
    except (ImportError, ValueError):
        return False


def cann_home_problem(path: str) -> Optional[str]:
    """None when ``path`` (a sourced ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH) is a CANN toolkit -- a folder
    with version.cfg, or an <arch>-linux folder -- else why not, in a few words."""
    if not os.path.isdir(path):
        return f"{path} does not exist"
    if os.path.isfile(os.path.join(path, "version.cfg")) or any(
            os.path.isdir(os.path.join(path, f"{arch}-linux")) for arch in ("aarch64", "x86_64")):
        return None
    return f"{path} holds no version.cfg or <arch>-linux folder: not a CANN toolkit"


def emulated_cann_version() -> Optional[str]:
    """The emulated toolkit's CANN version (emulation/npu/cann), None when it is absent."""
    cfg = os.path.join(EMULATED_TOOLKIT, "version.cfg")
    try:
        with open(cfg) as fh:
            for line in fh:
                if line.startswith("runtime_running_version="):
                    return line.split(":", 1)[1].strip().rstrip("]")
    except OSError:
        return None
    return None


def detect(profile: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
           root: str = "/") -> Tuple[str, str]:
    """(profile, one-line reason). `profile` (or $PROFILE) wins when given; ValueError if unknown."""
    env = os.environ if environ is None else environ
    given = (profile if profile is not None else env.get("PROFILE", "")).strip().lower()
    if given:
        if given not in PROFILES:
            raise ValueError(f"unknown PROFILE={given!r}: use one of {', '.join(PROFILES)}")
        return given, f"PROFILE={given} given"
    if env.get(EMULATE_VAR, "").strip().lower() == "npu":
        return "npu", (f"emulated Ascend stack ({EMULATE_VAR}=npu: CANN {emulated_cann_version() or '?'} stand-in "
                       f"in emulation/npu; installs the {EMULATED_INSTALL} profile)")
    for var in CANN_ENV_VARS:
        if env.get(var):
            problem = cann_home_problem(env[var])
            if problem is None:
                return "npu", f"CANN environment sourced ({var}={env[var]})"
    toolkit = _under(root, ASCEND_TOOLKIT_DIR)
    if os.path.isdir(toolkit):
        return "npu", f"CANN toolkit installed at {toolkit} (not sourced yet: source {ASCEND_TOOLKIT_DIR}/set_env.sh)"
    if torch_npu_installed():
        return "npu", f"torch_npu is installed for {sys.executable}"
    if _nvidia_smi_works(env):
        return "cuda", "NVIDIA driver present (nvidia-smi runs)"
    proc = _under(root, NVIDIA_PROC_DIR)
    if os.path.exists(proc):
        return "cuda", f"NVIDIA driver present ({proc} exists)"
    return "cpu", "no CANN environment, torch_npu or NVIDIA driver found"


def install_profile(profile: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """The profile whose requirements are installed: ``profile``, except on the emulated Ascend stack
    (the cpu profile: its stand-in torch_npu runs on CPU torch)."""
    env = os.environ if environ is None else environ
    if profile == "npu" and env.get(EMULATE_VAR, "").strip().lower() == "npu":
        return EMULATED_INSTALL
    return profile


def python_fits(profile: str, version: Optional[Tuple[int, int, int]] = None,
                machine: Optional[str] = None) -> Tuple[bool, str]:
    """(ok, one line): does this Python (version, architecture) match what the profile's pins resolve for?"""
    ver = tuple(version or sys.version_info[:3])
    arch = (machine or platform.machine()).lower().replace("arm64", "aarch64").replace("amd64", "x86_64")
    pythons, machines = PROFILE_TARGETS[profile]
    here = f"Python {ver[0]}.{ver[1]}.{ver[2]} on {arch}"
    want = f"{profile} pins are for Python {'/'.join(pythons)} on {'/'.join(machines)}"
    if f"{ver[0]}.{ver[1]}" not in pythons or arch not in machines:
        return False, f"{here}; {want}"
    floor = PROFILE_MIN_PATCH.get(profile)
    if floor is not None and ver < floor:
        return False, f"{here}; {want} (>= {'.'.join(map(str, floor))})"
    return True, f"{here} fits: {want}"


def describe(profile: str, reason: str) -> Dict[str, object]:
    ok, fit = python_fits(profile)
    return {"profile": profile, "reason": reason, "python": platform.python_version(),
            "machine": platform.machine(), "python_fits": ok, "python_fit": fit}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="force a profile (same as PROFILE=...)")
    ap.add_argument("--root", default="/", help="look for the fixed paths under this folder (tests)")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--make", action="store_true", help="print '<profile> <reason>' for the Makefile")
    fmt.add_argument("--json", action="store_true", help="print a JSON object")
    fmt.add_argument("--fit", action="store_true",
                     help="print whether this Python fits the profile's pins ('ok: ...' or 'warning: ...')")
    args = ap.parse_args(argv)
    try:
        profile, reason = detect(args.profile, root=args.root)
    except ValueError as exc:
        print(f"detect_profile: {exc}", file=sys.stderr)
        return 2
    if args.make:
        print(f"{profile} {install_profile(profile)} {reason}")
    elif args.json:
        print(json.dumps(describe(profile, reason)))
    elif args.fit:
        ok, line = python_fits(profile)
        print(f"{'ok' if ok else 'warning'}: {line}")
    else:
        print(f"profile: {profile} ({reason})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
