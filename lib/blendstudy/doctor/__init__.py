"""`python -m blendstudy doctor`: which profile this machine would install, what it found (Python,
torch, torch_npu, CANN, driver, cards, NUMA, cuda), and every known problem of the study's set-up as
a named check with pass / fail / skip and one line of detail, in one screen.

The profile detection is env/detect_profile.py's (one implementation, stdlib only, loaded here by
path from the source checkout); the device facts are blendstudy.device's. The checks live by theme
in :mod:`blendstudy.doctor.environment` (Python packages and pins), :mod:`blendstudy.doctor.npu`
(torch_npu, CANN) and :mod:`blendstudy.doctor.devices` (what is found, the device and the host);
:mod:`blendstudy.doctor.base` holds what they share. This module runs them and prints the report.
"""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

from blendstudy.doctor.base import FAIL, PASS, SKIP, Check, DoctorReport, Found, _guard, load_detect_profile
from blendstudy.doctor.base import REPO_ROOT as REPO_ROOT
from blendstudy.doctor.base import _dist_version as _dist_version
from blendstudy.doctor.base import _one_line as _one_line
from blendstudy.doctor.base import _vtuple as _vtuple
from blendstudy.doctor.devices import (
    _check_binding,
    _check_channels_last,
    _check_compile_backend,
    _check_device,
    _check_omp,
    _check_recompile_knob,
    _check_set_device,
    _find,
)
from blendstudy.doctor.environment import (
    _check_jupytext,
    _check_mistune,
    _check_offline_runtime,
    _check_pins_fit,
    _check_pins_installed,
    _check_setuptools,
    _check_torch_requirements,
)
from blendstudy.doctor.environment import _known_no_deps as _known_no_deps
from blendstudy.doctor.environment import _requirement_pins as _requirement_pins
from blendstudy.doctor.environment import pip_check as pip_check
from blendstudy.doctor.npu import (
    _check_affinity_conf,
    _check_autoload_guard,
    _check_cann,
    _check_task_queue,
    _check_torch_npu,
    _check_torch_npu_deps,
)
from blendstudy.doctor.npu import cann_home_problem as cann_home_problem

# The `X as X` imports keep the helpers of the one-module doctor importable from here. A check
# looks its helpers up in the module that defines it: monkeypatch them there (e.g.
# blendstudy.doctor.environment._dist_version), not here.
__all__ = ["Check", "Found", "DoctorReport", "run_checks", "format_report", "load_detect_profile", "main"]


def run_checks(device_spec: str = "auto") -> DoctorReport:
    """Look at this machine and process: the profile, what is there, every known problem as a check."""
    detect = load_detect_profile()
    profile: Optional[str] = None
    reason = "env/detect_profile.py not found (not a source checkout)"
    if detect is not None:
        try:
            profile, reason = detect.detect()
        except ValueError as exc:
            reason = str(exc)
    found, dev, err = _find(device_spec)
    # what is installed: the profile's requirements, except on the emulated Ascend stack (the cpu profile's)
    installed = detect.install_profile(profile) if detect is not None and profile else profile
    checks = [
        _guard("device_resolves", lambda: _check_device(device_spec, dev, err)),
        _guard("profile_pins_fit_python", lambda: _check_pins_fit(detect, installed)),
        _guard("profile_pins_installed", lambda: _check_pins_installed(installed)),
        _guard("setuptools_editable", _check_setuptools),
        _guard("mistune_nbconvert", _check_mistune),
        _guard("torch_requirements_met", _check_torch_requirements),
        _guard("torch_autoload_guard", _check_autoload_guard),
        _guard("torch_npu_loads", _check_torch_npu),
        _guard("torch_npu_deps", _check_torch_npu_deps),
        _guard("cann_sourced", lambda: _check_cann(profile, found)),
        _guard("task_queue_not_forced_off", lambda: _check_task_queue(dev)),
        _guard("omp_threads_effective", _check_omp),
        _guard("core_binding_numa_local", lambda: _check_binding(dev, found)),
        _guard("cpu_affinity_conf_form", _check_affinity_conf),
        _guard("set_device_called", lambda: _check_set_device(device_spec, dev)),
        _guard("channels_last", lambda: _check_channels_last(dev)),
        _guard("recompile_limit_knob", _check_recompile_knob),
        _guard("compile_backend", lambda: _check_compile_backend(dev)),
        _guard("jupytext_pairing", _check_jupytext),
        _guard("offline_runtime", lambda: _check_offline_runtime(profile, dev)),
    ]
    return DoctorReport(device_spec=device_spec, profile=profile, profile_reason=reason, found=found, checks=checks)


def format_report(report: DoctorReport) -> str:
    """One screen: the profile, what was found, one line per check, a count."""
    f = report.found
    npu = (f"torch_npu {f.torch_npu}" + (f" (cannot load: {f.torch_npu_error})" if f.torch_npu_error else "")
           if f.torch_npu else "torch_npu not installed")
    numa = "; ".join(f"node{n} {c}" for n, c in f.numa.items()) or "not exposed"
    lines = [
        f"blendstudy doctor: device {report.device_spec!r} -> {f.device or 'unavailable'}",
        f"  profile  {report.profile or '?'} ({report.profile_reason})",
        f"  python   {f.python} {f.machine} ({f.executable})",
        f"  torch    {f.torch} (cuda {f.torch_cuda or 'none'}); {npu}",
        f"  ascend   CANN {f.cann or '-'}; driver {f.driver or '-'}; "
        f"{f.npu_count} NPU(s){': ' + ', '.join(f.npu_names) if f.npu_names else ''}",
        f"  cuda     {f.cuda_count} GPU(s){': ' + ', '.join(f.cuda_names) if f.cuda_names else ''}",
        f"  cores    allowed {f.affinity}; NUMA {numa}",
    ]
    if f.device and f.device != "cpu":
        lines.append(f"  device   {f.device}: NUMA node {f.device_numa_node if f.device_numa_node is not None else '?'}"
                     f", local cores {f.device_local_cores}")
    width = max(len(c.name) for c in report.checks)
    lines.append("checks")
    for c in report.checks:
        lines.append(f"  {c.status.upper():4}  {c.name:<{width}}  {c.detail}")
    counts = {s: sum(c.status == s for c in report.checks) for s in (PASS, FAIL, SKIP)}
    lines.append(f"doctor: {counts[PASS]} pass, {counts[FAIL]} fail, {counts[SKIP]} skip"
                 + ("" if report.ok else " -- see the FAIL lines"))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m blendstudy.doctor [--device SPEC] [--json]`: exit 0 when no check fails, else 1."""
    ap = argparse.ArgumentParser(prog="python -m blendstudy.doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="the device the study would use (auto, cpu, cuda[:N], npu[:N])")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    report = run_checks(args.device)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return 0 if report.ok else 1
