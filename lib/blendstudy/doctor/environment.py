"""The doctor's checks of the Python environment: the profile's pins (fit this Python, installed,
`pip check`), setuptools for the editable install, nbconvert + mistune, torch's own requirements,
jupytext for `make lab`, the offline engines of the profile."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

import torch

from blendstudy.doctor.base import FAIL, PASS, REPO_ROOT, SKIP, Check, _dist_version, _one_line, _vtuple

__all__ = ["pip_check"]


def _check_pins_fit(detect: Optional[ModuleType], profile: Optional[str]) -> Check:
    if detect is None or profile is None:
        return Check("profile_pins_fit_python", SKIP, "env/detect_profile.py not found (not a source checkout)")
    ok, line = detect.python_fits(profile)
    return Check("profile_pins_fit_python", PASS if ok else FAIL, line)


def _requirement_pins(profile: str) -> Dict[str, str]:
    path = REPO_ROOT / "env" / f"requirements-{profile}.txt"
    pins: Dict[str, str] = {}
    if not path.is_file():
        return pins
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        name, sep, version = line.partition("==")
        if sep:
            pins[name.strip()] = version.strip()
    return pins


def _check_pins_installed(profile: Optional[str]) -> Check:
    name = "profile_pins_installed"
    pins = _requirement_pins(profile) if profile else {}
    if not pins:
        return Check(name, SKIP, "no requirements file for the profile here")
    wrong = []
    for pkg, want in pins.items():
        have = _dist_version(pkg)
        if have is None or (have != want and not have.startswith(want + "+")):
            wrong.append(f"{pkg} {have or 'missing'} (pin {want})")
    if wrong:
        more = f" and {len(wrong) - 4} more" if len(wrong) > 4 else ""
        return Check(name, FAIL, f"env/requirements-{profile}.txt not as pinned: {', '.join(wrong[:4])}{more}")
    broken = [ln for ln in pip_check() if not _known_no_deps(ln)]
    if broken:
        more = f" and {len(broken) - 2} more" if len(broken) > 2 else ""
        return Check(name, FAIL, f"pins installed but `pip check` fails: {'; '.join(broken[:2])}{more}")
    return Check(name, PASS, f"all {len(pins)} pins of env/requirements-{profile}.txt installed; pip check passes")


def pip_check() -> List[str]:
    """The problems `python -m pip check` reports for this interpreter's packages ([] when none)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return []
    return [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()
            if ln.strip() and not ln.startswith(("WARNING", "[notice]"))]


def _known_no_deps(line: str) -> bool:
    """pip check's complaint about the npu profile's x86_64 install (torch_npu with --no-deps beside
    PyPI's torch: its wheel asks for torch==X+cpu, not on PyPI), which check torch_npu_deps reports."""
    low = line.lower()
    return low.startswith(("torch-npu ", "torch_npu ")) and "+cpu" in low


def _check_setuptools() -> Check:
    have = _dist_version("setuptools")
    if have is None:
        return Check("setuptools_editable", FAIL, "setuptools not installed: `pip install -e .` needs setuptools >= 64")
    if _vtuple(have) < (64,):
        return Check("setuptools_editable", FAIL, f"setuptools {have} < 64 cannot make the editable install "
                                                  "(PEP 660): pip install --upgrade pip setuptools wheel")
    return Check("setuptools_editable", PASS, f"setuptools {have} (>= 64: PEP 660 editable installs)")


def _check_mistune() -> Check:
    name = "mistune_nbconvert"
    nbc, mis = _dist_version("nbconvert"), _dist_version("mistune")
    if nbc is None:
        return Check(name, SKIP, "nbconvert not installed")
    try:  # the code path that fails: nbconvert's MathBlockParser on a heading + math
        from nbconvert.filters.markdown_mistune import markdown2html_mistune

        html = markdown2html_mistune("# t\n\n$x^2$\n")
        ok = "<h1" in html
    except Exception as exc:
        return Check(name, FAIL, f"nbconvert {nbc} + mistune {mis} cannot render markdown: {_one_line(exc)} "
                                 "(nbconvert 7.16.4 needs mistune < 3.1)")
    return Check(name, PASS if ok else FAIL, f"nbconvert {nbc} + mistune {mis} render markdown to HTML")


def _check_torch_requirements() -> Check:
    name = "torch_requirements_met"
    try:
        from importlib import metadata

        from packaging.requirements import Requirement
    except ImportError:
        return Check(name, SKIP, "packaging not installed")
    bad = []
    for spec in metadata.requires("torch") or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = _dist_version(req.name)
        if have is None or (req.specifier and not req.specifier.contains(have, prereleases=True)):
            bad.append(f"{req.name}{req.specifier} ({have or 'missing'})")
    if bad:
        return Check(name, FAIL, f"torch {torch.__version__} needs {', '.join(bad[:4])}")
    return Check(name, PASS, f"torch {torch.__version__}'s requirements are installed (sympy "
                             f"{_dist_version('sympy')})")


def _check_jupytext() -> Check:
    name = "jupytext_pairing"
    have = _dist_version("jupytext")
    if have is None:
        return Check(name, FAIL, "jupytext not installed: make lab would not pair notebooks with .py files")
    conf = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "jupytext.json"
    if not conf.is_file():
        return Check(name, FAIL, f"jupytext {have} installed but its server extension is not enabled ({conf})")
    return Check(name, PASS, f"jupytext {have}, server extension enabled for JupyterLab")


def _check_offline_runtime(profile: Optional[str], dev: Optional[torch.device]) -> Check:
    name = "offline_runtime"
    want = {"npu": ["onnx", "onnxruntime", "ais_bench"], "cuda": ["onnx", "onnxruntime-gpu"],
            "cpu": ["onnx", "onnxruntime", "openvino"]}.get(profile or "", [])
    if not want:
        return Check(name, SKIP, "no profile")
    missing = []
    for pkg in want:
        if pkg == "ais_bench":
            if importlib.util.find_spec("ais_bench") is None:
                missing.append("ais_bench (install from Ascend's tools, with CANN)")
        elif _dist_version(pkg) is None:
            missing.append(pkg)
    if missing:
        return Check(name, FAIL, f"missing: {', '.join(missing)}")
    return Check(name, PASS, ", ".join(f"{p} {_dist_version(p) or 'installed'}" for p in want))

