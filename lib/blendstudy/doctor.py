"""`python -m blendstudy doctor`: which profile this machine would install, what it found (Python,
torch, torch_npu, CANN, driver, cards, NUMA, cuda), and every known problem of the study's set-up as
a named check with pass / fail / skip and one line of detail, in one screen.

The profile detection is env/detect_profile.py's (one implementation, stdlib only, loaded here by
path from the source checkout); the device facts are blendstudy.device's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from blendstudy import device as devmod

__all__ = ["Check", "Found", "DoctorReport", "run_checks", "format_report", "load_detect_profile", "main"]

PASS, FAIL, SKIP = "pass", "fail", "skip"

#: the source checkout this package runs from (an editable install): env/ and lib/ live there
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Check:
    """One known problem, looked for: `status` pass / fail / skip, `detail` one line."""

    name: str
    status: str
    detail: str


@dataclass
class Found:
    """What the doctor found on this machine and in this process."""

    python: str
    executable: str
    platform: str
    machine: str
    torch: str
    torch_cuda: Optional[str]
    torch_npu: Optional[str]  # installed version (metadata), None when not installed
    torch_npu_error: Optional[str]  # why it does not load, None when it loads or is absent
    cann: Optional[str]
    driver: Optional[str]
    npu_count: int
    npu_names: List[str]
    cuda_count: int
    cuda_names: List[str]
    numa: Dict[int, str]  # node -> cores ("0-23,48-71")
    affinity: str  # the cores this process may use
    device: Optional[str]  # what the device spec resolved to (None when it did not)
    device_numa_node: Optional[int]
    device_local_cores: str


@dataclass
class DoctorReport:
    device_spec: str
    profile: Optional[str]
    profile_reason: str
    found: Found
    checks: List[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


# ---------------------------------------------------------------------------------------------------
# helpers


def load_detect_profile(root: Path = REPO_ROOT) -> Optional[ModuleType]:
    """env/detect_profile.py of the source checkout, loaded by path (None outside a checkout)."""
    path = root / "env" / "detect_profile.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("blendstudy_env_detect_profile", path)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dist_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _vtuple(version: Optional[str]) -> tuple:
    out = []
    for part in (version or "").split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
        if digits != part:
            break
    return tuple(out)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    """A check that raises is reported as failed, never crashes the doctor."""
    try:
        return fn()
    except Exception as exc:
        return Check(name, FAIL, f"the check itself raised {_one_line(exc)}")


# ---------------------------------------------------------------------------------------------------
# what is there


def _find(device_spec: str) -> tuple:
    """(Found, resolved device or None, DeviceError line or None)."""
    err: Optional[str] = None
    dev: Optional[torch.device] = None
    try:
        dev = devmod.resolve_device(device_spec)
    except devmod.DeviceError as exc:
        err = str(exc)
    npu_installed = devmod.torch_npu_installed()
    npu_loaded = npu_installed and devmod.npu_import_error() is None
    npu_names: List[str] = []
    npu_count = 0
    if npu_loaded:
        try:
            npu_count = int(torch.npu.device_count())  # type: ignore[attr-defined]
        except Exception:
            npu_count = 0
    smi = devmod.npu_smi() if (npu_installed or shutil.which("npu-smi")) else None
    if smi and smi["cards"]:
        npu_names = [str(c["name"]) for c in smi["cards"]]
        npu_count = npu_count or len(npu_names)
    elif npu_count and dev is not None and dev.type == "npu":
        npu_names = [devmod.device_name(dev)]  # torch_npu names the current device only
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda_names = [torch.cuda.get_device_name(i) for i in range(cuda_count)]
    numa = {node: devmod.format_cores(cores) for node, cores in devmod.numa_nodes().items()}
    node = devmod.device_numa_node(dev) if dev is not None and dev.type != "cpu" else None
    found = Found(
        python=platform.python_version(), executable=sys.executable, platform=platform.platform(),
        machine=platform.machine(), torch=torch.__version__, torch_cuda=torch.version.cuda,
        torch_npu=devmod.torch_npu_version() if npu_installed else None,
        torch_npu_error=devmod.npu_import_error() if npu_installed else None,
        cann=devmod.cann_version(), driver=devmod.driver_version() if (npu_installed or smi) else None,
        npu_count=npu_count, npu_names=npu_names, cuda_count=cuda_count, cuda_names=cuda_names, numa=numa,
        affinity=devmod.format_cores(devmod.allowed_cores()), device=str(dev) if dev is not None else None,
        device_numa_node=node,
        device_local_cores=devmod.format_cores(devmod.local_cores(dev)) if dev is not None else "")
    return found, dev, err


# ---------------------------------------------------------------------------------------------------
# the checks


def _check_device(spec: str, dev: Optional[torch.device], err: Optional[str]) -> Check:
    if dev is None:
        return Check("device_resolves", FAIL, err or f"{spec!r} did not resolve")
    return Check("device_resolves", PASS, f"{spec!r} -> {dev}")


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


def _check_torch_npu_deps() -> Check:
    name = "torch_npu_deps"
    have = devmod.torch_npu_version()
    if have is None:
        return Check(name, SKIP, "torch_npu not installed")
    torch_dist = _dist_version("torch")
    try:
        from importlib import metadata

        wants = [r for r in (metadata.requires("torch_npu") or metadata.requires("torch-npu") or [])
                 if r.replace(" ", "").lower().startswith("torch==")]
    except Exception:
        wants = []
    want = wants[0].replace(" ", "").split("==", 1)[1].split(";")[0] if wants else None
    if want and "+cpu" in want and torch_dist is not None and torch_dist != want:
        return Check(name, PASS, f"torch_npu {have} installed with --no-deps beside torch {torch_dist}: its wheel asks "
                                 f"for torch=={want}, which PyPI does not carry (same code; its CUDA libraries "
                                 "stay unused)")
    return Check(name, PASS, f"torch_npu {have} beside torch {torch_dist} as its wheel requires")


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


def _check_autoload_guard() -> Check:
    value = os.environ.get("TORCH_DEVICE_BACKEND_AUTOLOAD")
    installed = devmod.torch_npu_installed()
    if value == "0":
        return Check("torch_autoload_guard", PASS, "TORCH_DEVICE_BACKEND_AUTOLOAD=0 (set by blendstudy before "
                                                   "torch): torch_npu is imported explicitly")
    if installed:
        return Check("torch_autoload_guard", FAIL, f"TORCH_DEVICE_BACKEND_AUTOLOAD={value or 'unset'}: `import "
                                                   "torch` loads torch_npu itself and raises when it cannot")
    return Check("torch_autoload_guard", SKIP, f"TORCH_DEVICE_BACKEND_AUTOLOAD={value or 'unset'}; no torch_npu "
                                               "installed, nothing to autoload")


def _check_torch_npu() -> Check:
    if not devmod.torch_npu_installed():
        return Check("torch_npu_loads", SKIP, "torch_npu not installed")
    problem = devmod.npu_load_problem()
    if problem is not None:
        return Check("torch_npu_loads", FAIL, problem)
    import torch_npu

    return Check("torch_npu_loads", PASS, f"torch_npu {getattr(torch_npu, '__version__', '?')} loads beside "
                                          f"torch {torch.__version__}")


def _check_cann(profile: Optional[str], found: Found) -> Check:
    if profile != "npu" and not devmod.torch_npu_installed():
        return Check("cann_sourced", SKIP, f"profile {profile}: CANN not needed")
    problems = []
    for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        if os.environ.get(var):
            problem = cann_home_problem(os.environ[var])
            if problem is None:
                return Check("cann_sourced", PASS, f"{var}={os.environ[var]} (CANN {found.cann or 'version unknown'})")
            problems.append(f"{var}: {problem}")
    why = "; ".join(problems) if problems else "CANN's environment is not set"
    return Check("cann_sourced", FAIL, f"{why}: source {devmod.CANN_SET_ENV}")


def cann_home_problem(path: str) -> Optional[str]:
    """None when ``path`` is a CANN toolkit folder, else why not (env/detect_profile.py's rule)."""
    detect = load_detect_profile()
    if detect is not None:
        return detect.cann_home_problem(path)
    return None if os.path.isfile(os.path.join(path, "version.cfg")) else f"{path} holds no version.cfg"


def _check_task_queue(dev: Optional[torch.device]) -> Check:
    name = "task_queue_not_forced_off"
    if dev is None or dev.type != "npu":
        return Check(name, SKIP, "not an NPU")
    tq = devmod.task_queue_in_force()
    if tq is None:
        return Check(name, SKIP, "torch_npu not loaded")
    if tq["value"] == 0:
        why = ("interactive interpreter (a Jupyter kernel): latency measured here runs with the queue off; "
               "measure in a worker process") if hasattr(sys, "ps1") else tq["source"]
        return Check(name, FAIL, f"task queue 0 ({why})")
    return Check(name, PASS, f"task queue {tq['value']} ({tq['source']})")


def _check_omp() -> Check:
    name = "omp_threads_effective"
    raw = os.environ.get("OMP_NUM_THREADS")
    threads = torch.get_num_threads()
    if not raw:
        return Check(name, SKIP, f"OMP_NUM_THREADS not set; torch uses {threads} threads")
    try:
        want = int(raw)
    except ValueError:
        return Check(name, FAIL, f"OMP_NUM_THREADS={raw!r} is not a number")
    if want != threads:
        return Check(name, FAIL, f"OMP_NUM_THREADS={want} but torch uses {threads} threads: it was set after torch "
                                 "started (set it before the process starts, or torch.set_num_threads)")
    return Check(name, PASS, f"OMP_NUM_THREADS={want} = torch.get_num_threads()")


def _check_binding(dev: Optional[torch.device], found: Found) -> Check:
    name = "core_binding_numa_local"
    if dev is None or dev.type == "cpu":
        return Check(name, SKIP, "cpu device: no device NUMA node")
    node = found.device_numa_node
    if node is None:
        return Check(name, SKIP, f"{dev}'s NUMA node is unknown (no sysfs numa_node for its PCI slot)")
    node_cores = set(devmod.numa_nodes().get(node, []))
    allowed = set(devmod.allowed_cores())
    online = set().union(*[set(c) for c in devmod.numa_nodes().values()]) if found.numa else allowed
    node_txt = devmod.format_cores(sorted(node_cores))
    if allowed >= online:
        return Check(name, SKIP, f"not bound (all {len(allowed)} cores); {dev} is on NUMA node {node}: bind with "
                                 f"taskset -c {node_txt} or CPU_AFFINITY_CONF")
    outside = sorted(allowed - node_cores)
    if outside:
        return Check(name, FAIL, f"bound to {found.affinity}, {len(outside)} core(s) outside {dev}'s NUMA node "
                                 f"{node} ({node_txt})")
    return Check(name, PASS, f"bound to {found.affinity}, inside {dev}'s NUMA node {node} ({node_txt})")


def _check_affinity_conf() -> Check:
    name = "cpu_affinity_conf_form"
    raw = os.environ.get("CPU_AFFINITY_CONF")
    if not raw:
        return Check(name, SKIP, "CPU_AFFINITY_CONF not set")
    items = [i.strip() for i in raw.split(",") if i.strip()]
    modes = [i for i in items if i.isdigit()] + [i.split(":", 1)[1] for i in items if i.startswith("mode:")]
    if not modes:
        return Check(name, FAIL, f"CPU_AFFINITY_CONF={raw}: no mode (0 off, 1 coarse, 2 fine), so torch_npu binds "
                                 "nothing: write it first, e.g. 1,npu0:0-23 (Ascend's CPU_AFFINITY_CONF reference)")
    if modes[-1] not in ("0", "1", "2"):
        return Check(name, FAIL, f"CPU_AFFINITY_CONF={raw}: mode {modes[-1]} is not 0, 1 or 2")
    return Check(name, PASS, f"CPU_AFFINITY_CONF={raw} (mode {modes[-1]})")


def _check_set_device(spec: str, dev: Optional[torch.device]) -> Check:
    """The study's way to a device (resolve_device) makes it current, so that work without an index --
    TorchAir's graph engine, tensors made as device="npu" -- lands on it. Checked from another current
    device when there is one (else it could not fail): resolve again, then where an index-less tensor lands."""
    name = "set_device_called"
    if dev is None or dev.type == "cpu":
        return Check(name, SKIP, "cpu device")
    be = devmod._backend(dev)
    want = dev.index or 0
    count = int(be.device_count())
    if count > 1:
        be.set_device((want + 1) % count)  # start from another current device
    devmod.resolve_device(spec)
    current = devmod.current_index(dev)
    landed = torch.empty(1, device=dev.type).device.index
    if current != want or landed != want:
        return Check(name, FAIL, f"after resolve_device({spec!r}) the current {dev.type} device is {current} and an "
                                 f"index-less tensor lands on {dev.type}:{landed}, not {want}: "
                                 f"blendstudy.device.activate({dev}) must run before anything compiles")
    return Check(name, PASS, f"resolve_device({spec!r}) makes {dev} current (index-less work lands there)"
                 + ("" if count > 1 else "; one device only"))


def _check_channels_last(dev: Optional[torch.device]) -> Check:
    name = "channels_last"
    if dev is None:
        return Check(name, SKIP, "no device")
    why = devmod.unsupported_switch(dev, "channels_last")
    if why:
        return Check(name, SKIP, f"unsupported on {dev.type}, the switch is skipped: {why}")
    return Check(name, PASS, f"channels_last supported on {dev.type}")


def _check_recompile_knob() -> Check:
    import torch._dynamo.config as dcfg

    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, knob):
            return Check("recompile_limit_knob", PASS, f"torch._dynamo.config.{knob} = {getattr(dcfg, knob)}")
    return Check("recompile_limit_knob", FAIL, "torch._dynamo.config has neither recompile_limit nor cache_size_limit")


def _check_compile_backend(dev: Optional[torch.device]) -> Check:
    name = "compile_backend"
    if dev is None:
        return Check(name, SKIP, "no device")
    backend = devmod.default_compile_backend(dev)
    if dev.type == "npu":
        try:
            import torchair  # torch_npu 2.8 ships it (torch_npu.dynamo.torchair), importable once torch_npu is

            torchair.get_npu_backend  # noqa: B018  (the attribute access performs the lazy import)
        except Exception as exc:
            return Check(name, FAIL, f"torchair not importable: {_one_line(exc)}")
        return Check(name, PASS, "npu: torchair importable (get_npu_backend)")
    if dev.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return Check(name, FAIL, "inductor on cuda needs triton, which is not installed")
        return Check(name, PASS, "inductor: triton installed")
    cc = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cc is None:
        return Check(name, FAIL, f"{backend} on cpu needs a C++ compiler, none on PATH")
    return Check(name, PASS, f"{backend}: C++ compiler {cc}")


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


if __name__ == "__main__":
    raise SystemExit(main())
