"""env/: profile detection (fast) and every profile's pins resolving for its platform and Python by pip's
own resolver (dry runs against the registry; skipped with the reason when it cannot be reached).

How a profile is resolved for another platform (pip's --platform/--python-version pick wheels for the
target, but pip evaluates environment markers for the interpreter running it, so e.g. torch 2.8.0's
`nvidia-*; platform_machine == "x86_64"` requirements would be pulled in for aarch64):
  1. `--no-deps` dry run of the requirements file: every pinned wheel exists for the target; its metadata.
  2. a pinned package whose requirements evaluate differently on the target than here (torch for npu and
     for cuda on 3.12) is kept at its pin from step 1 and replaced, in step 3, by its own requirements
     evaluated for the target;
  3. a full dry run of the rest (with the constraints file where the profile has one), `--report` JSON;
  4. the union is checked with the target's markers: every requirement reachable from the file is
     present in a matching version. Requirements only the target needs (tomli on 3.9, ...) are added to
     step 3 and it is run again (at most 4 rounds).
Cost: pip downloads a wheel to read its metadata where the index serves none separately; with pip's
`fast-deps` feature (used when the running pip has it) it reads only the metadata with HTTP range
requests, so the cuda profile's torch (~900 MB) and nvidia-* wheels (~3 GB) are not downloaded.
Run `python tests/test_env_profiles.py` to print what resolves for each profile.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

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
    assert fits("cpu", (3, 11, 7), "x86_64")[0]
    assert not fits("cpu", (3, 11, 4), "x86_64")[0]  # soupsieve 4.1.1 needs 3.11.5
    assert not fits("cpu", (3, 11, 7), "aarch64")[0]
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
    assert any(f"env/install_profile.py --profile {profile} " in line for line in lines[1:])
    assert any("pip install -q --upgrade pip setuptools wheel" in line for line in lines)
    upgrade = next(i for i, line in enumerate(lines) if "--upgrade pip setuptools wheel" in line)
    editable = next(i for i, line in enumerate(lines) if "-e ." in line)
    assert upgrade < editable


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
    pins.update(_pins(ENV_DIR / f"constraints-{profile}.txt") if (ENV_DIR / f"constraints-{profile}.txt").exists()
                else {})
    assert all(v for v in pins.values()), "every line is an exact pin"
    assert "jupytext" in pins and "onnx" in pins and "ruff" in pins
    if pins["nbconvert"].startswith("7.16."):
        major, minor = (int(x) for x in pins["mistune"].split(".")[:2])
        assert (major, minor) < (3, 1), "nbconvert 7.16.x fails with mistune >= 3.1 ('parse_axt_heading')"
    if profile == "npu":
        assert pins["torch"] == "2.8.0" and pins["torch-npu"] == "2.8.0.post2"
        assert tuple(int(x) for x in pins["sympy"].split(".")) >= (1, 13, 3), "torch 2.8.0 needs sympy>=1.13.3"
        assert "onnxruntime" in pins
    if profile == "cuda":
        assert "onnxruntime-gpu" in pins
    if profile == "cpu":
        assert {"onnxruntime", "openvino"} <= set(pins)


def test_cpu_constraints_agree_with_requirements():
    req = _pins(ENV_DIR / "requirements-cpu.txt")
    cons = _pins(ENV_DIR / "constraints-cpu.txt")
    for name, version in req.items():
        assert cons.get(name, version) == version, f"{name}: requirements {version}, constraints {cons[name]}"


# ---------------------------------------------------------------------------------------------------
# resolution with pip's resolver


NETWORK_ERRORS = ("Could not fetch URL", "NewConnectionError", "Max retries exceeded", "ConnectTimeout",
                  "Temporary failure in name resolution", "Name or service not known", "Network is unreachable",
                  "No route to host", "Connection refused", "ReadTimeoutError", "ProxyError", "SSLError")


class RegistryUnreachable(RuntimeError):
    pass


#: torch's own exact pins of its CUDA runtime (cuda profile): ~3 GB of wheels published with torch;
#: resolving them costs minutes where the index serves no separate metadata, so they are listed, not resolved
TORCH_RUNTIME_WHEELS = ("nvidia-", "triton", "cuda-")


@dataclass(frozen=True)
class Target:
    profile: str
    python: str  # as given to pip --python-version
    machine: str

    @property
    def platforms(self) -> List[str]:
        # torch 2.8.0 and torch_npu 2.8.0.post2 are manylinux_2_28; others carry 2_17..2_27 / 2014 tags.
        # pip does not widen a given manylinux tag to older glibc versions: list them all.
        return [f"manylinux_2_{n}_{self.machine}" for n in range(28, 16, -1)] + [f"manylinux2014_{self.machine}"]

    def markers(self) -> Dict[str, str]:
        parts = self.python.split(".")
        full = ".".join((parts + ["0", "0"])[:3])
        return {"implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
                "platform_machine": self.machine, "platform_release": "", "platform_system": "Linux",
                "platform_version": "", "python_full_version": full, "platform_python_implementation": "CPython",
                "python_version": ".".join(parts[:2]), "sys_platform": "linux"}

    def __str__(self) -> str:
        return f"{self.profile}-py{self.python}-{self.machine}"


def targets() -> List[Target]:
    out = []
    for profile, (pythons, machines) in detect_profile.PROFILE_TARGETS.items():
        floor = detect_profile.PROFILE_MIN_PATCH.get(profile)
        for py in pythons:
            if floor is not None and py == f"{floor[0]}.{floor[1]}":
                py = ".".join(map(str, floor))
            for machine in machines:
                out.append(Target(profile, py, machine))
    return out


@dataclass
class Resolution:
    target: Target
    versions: Dict[str, str] = field(default_factory=dict)  # canonical name -> version
    names: Dict[str, str] = field(default_factory=dict)  # canonical name -> the distribution's own spelling
    split: List[str] = field(default_factory=list)
    added: List[str] = field(default_factory=list)  # requirements only the target's markers need
    trusted: List[str] = field(default_factory=list)  # torch's CUDA runtime pins, not resolved
    extra: List[str] = field(default_factory=list)  # resolved by pip (host markers) but not needed
    problems: List[str] = field(default_factory=list)
    seconds: float = 0.0
    pip_runs: int = 0


def _pip_has_fast_deps() -> bool:
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--help"], capture_output=True, text=True,
                         timeout=120)
    return "fast-deps" in out.stdout


def _dry_run(target: Target, args: List[str], report: Path, fast_deps: bool) -> Dict:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--quiet", "--timeout", "30", "--retries", "2",
           "--python-version", target.python, "--report", str(report)]
    for plat in target.platforms:
        cmd += ["--platform", plat]
    if fast_deps:
        cmd.append("--use-feature=fast-deps")
    out = subprocess.run(cmd + args, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        text = out.stdout + out.stderr
        if any(marker in text for marker in NETWORK_ERRORS):
            raise RegistryUnreachable(next(line for line in text.splitlines()
                                           if any(m in line for m in NETWORK_ERRORS))[:300])
        useful = [line for line in text.splitlines() if "is ignored: it is neither" not in line
                  and "fast-deps" not in line and "Ignored the following versions" not in line]
        raise AssertionError(f"pip could not resolve {target} ({' '.join(args)}):\n" + "\n".join(useful[-25:]))
    return json.loads(report.read_text())


def _names(report: Dict) -> Dict[str, str]:
    from packaging.utils import canonicalize_name

    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["name"] for item in report["install"]}


def _metadata(report: Dict) -> Dict[str, Tuple[str, List[str]]]:
    from packaging.utils import canonicalize_name

    return {canonicalize_name(item["metadata"]["name"]): (item["metadata"]["version"],
                                                          list(item["metadata"].get("requires_dist") or []))
            for item in report["install"]}


def _applies(req, env: Dict[str, str], extras: FrozenSet[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate(dict(env, extra=e)) for e in extras)


def _check(roots: List[str], meta: Dict[str, Tuple[str, List[str]]], env: Dict[str, str],
           trusted: FrozenSet[str] = frozenset()):
    """(missing requirement strings, conflicts, reachable names) under the target's markers; requirements
    on `trusted` names are not followed."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    missing: List[str] = []
    conflicts: List[str] = []
    visited: Dict[str, Set[str]] = {}
    stack = [(Requirement(r), frozenset({""}), "requirements file") for r in roots]
    while stack:
        req, extras, parent = stack.pop()
        if not _applies(req, env, extras):
            continue
        name = canonicalize_name(req.name)
        if name in trusted:
            continue
        if name not in meta:
            spec = f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}"
            if spec not in missing:
                missing.append(spec)
            continue
        version, deps = meta[name]
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            conflicts.append(f"{parent} needs {req}, resolved {name} {version}")
        wanted = {""} | {canonicalize_name(e) for e in req.extras}
        new = wanted - visited.get(name, set())
        if not new:
            continue
        visited.setdefault(name, set()).update(new)
        for dep in deps:
            stack.append((Requirement(dep), frozenset(new), name))
    return missing, conflicts, set(visited)


def resolve(target: Target, workdir: Path, fast_deps: Optional[bool] = None) -> Resolution:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    fast = _pip_has_fast_deps() if fast_deps is None else fast_deps
    t0 = time.perf_counter()
    res = Resolution(target)
    req_file = ENV_DIR / f"requirements-{target.profile}.txt"
    cons_file = ENV_DIR / f"constraints-{target.profile}.txt"
    cons_args = ["-c", str(cons_file)] if cons_file.exists() else []
    lines = _requirement_lines(req_file)
    env, host = target.markers(), default_environment()

    # 1. every pin exists for the target; its metadata
    top_report = _dry_run(target, ["--no-deps", "-r", str(req_file), *cons_args], workdir / "top.json", fast)
    top = _metadata(top_report)
    res.names.update(_names(top_report))
    res.pip_runs += 1
    # 2. pinned packages whose requirements differ between here and the target
    #    (and those that require one of them, else step 3 would resolve the first again from the index)
    split_reqs: List[str] = []
    names = [canonicalize_name(Requirement(line).name) for line in lines]
    if target.profile == "cuda":
        res.split.append("torch")
    changed = True
    while changed:
        changed = False
        for name in names:
            if name in res.split:
                continue
            deps = [Requirement(d) for d in top[name][1]]
            if any(_applies(d, env, frozenset({""})) != _applies(d, host, frozenset({""}))
                   or (canonicalize_name(d.name) in res.split and _applies(d, env, frozenset({""}))) for d in deps):
                res.split.append(name)
                changed = True
    for name in res.split:
        for dep in top[name][1]:
            req = Requirement(dep)
            dep_name = canonicalize_name(req.name)
            if not _applies(req, env, frozenset({""})) or dep_name in res.split:
                continue
            if name == "torch" and dep_name.startswith(TORCH_RUNTIME_WHEELS):
                res.trusted.append(f"{dep_name}{req.specifier}")
                continue
            req.marker = None
            split_reqs.append(str(req))
    trusted = frozenset(canonicalize_name(Requirement(t).name) for t in res.trusted)
    rest = [line for line in lines if canonicalize_name(Requirement(line).name) not in res.split]
    # 3./4. the rest, fully, until the target's markers are satisfied
    meta: Dict[str, Tuple[str, List[str]]] = {}
    for round_no in range(4):
        reqs = workdir / f"round{round_no}.txt"
        reqs.write_text("\n".join(rest + split_reqs + res.added) + "\n")
        full_report = _dry_run(target, ["-r", str(reqs), *cons_args], workdir / f"round{round_no}.json", fast)
        full = _metadata(full_report)
        res.names.update(_names(full_report))
        res.pip_runs += 1
        meta = dict(full)
        meta.update({name: top[name] for name in res.split})
        missing, conflicts, reachable = _check(lines, meta, env, trusted)
        if conflicts:
            res.problems += conflicts
            break
        if not missing:
            break
        res.added += [m for m in missing if m not in res.added]
    else:
        res.problems.append(f"still missing after 4 rounds: {', '.join(missing)}")
    res.versions = {name: meta[name][0] for name in sorted(meta)}
    res.extra = sorted(set(meta) - reachable)
    res.seconds = time.perf_counter() - t0
    return res


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory):
    """All targets resolved concurrently (pip mostly waits on the registry): {str(target): Future}."""
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("packaging")
    if os.environ.get("BLENDSTUDY_SKIP_PIP_RESOLVE"):
        pytest.skip("BLENDSTUDY_SKIP_PIP_RESOLVE is set")
    base = tmp_path_factory.mktemp("pip-resolve")
    fast = _pip_has_fast_deps()
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {}
    for tgt in targets():
        workdir = base / str(tgt)
        workdir.mkdir()
        futures[str(tgt)] = pool.submit(resolve, tgt, workdir, fast)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("target", targets(), ids=str)
def test_profile_resolves_for_its_platform(target: Target, resolutions):
    try:
        res = resolutions[str(target)].result()
    except RegistryUnreachable as exc:
        pytest.skip(f"package registry unreachable: {exc}")
    print(summary(res))
    assert not res.problems, "\n".join(res.problems)
    v = res.versions
    pins = _pins(ENV_DIR / f"requirements-{target.profile}.txt")
    for name, version in pins.items():
        assert v[name] == version or v[name].startswith(version + "+"), (name, v[name], version)
    assert tuple(int(x) for x in v["sympy"].split(".")[:3]) >= (1, 13, 3)
    assert "jupytext" in v and "onnx" in v
    if target.profile == "npu":
        assert v["torch"] == "2.8.0" and v["torch-npu"] == "2.8.0.post2"
        assert not any(n.startswith("nvidia-") or n == "triton" for n in v), "no CUDA wheels on aarch64"
        assert {"exceptiongroup", "tomli"} <= set(v), "Python 3.9's own requirements are resolved too"
    if target.profile == "cuda":
        assert v["torch"] == "2.8.0" and v["mistune"] == "3.0.2" and v["onnxruntime-gpu"]
        assert any(t.startswith("nvidia-cudnn-cu12==") for t in res.trusted)
    if target.profile == "cpu":
        assert v["torch"].startswith("2.13.0")
        # constraints-cpu.txt pins the whole transitive set, and nothing else
        cons = _pins(ENV_DIR / "constraints-cpu.txt")
        needed = {n for n in v if n not in res.extra}
        assert sorted(needed - set(cons) - {"torch"}) == [], "resolved but not pinned in constraints-cpu.txt"
        assert sorted(set(cons) - set(v)) == [], "pinned in constraints-cpu.txt but not needed"


def summary(res: Resolution) -> str:
    v = res.versions
    keys = ("torch", "torch-npu", "mistune", "sympy", "nbconvert", "jupytext", "onnx", "onnxruntime",
            "onnxruntime-gpu", "openvino", "setuptools")
    shown = ", ".join(f"{k} {v[k]}" for k in keys if k in v)
    notes = []
    if res.split:
        notes.append(f"kept at pin, deps resolved for target: {', '.join(res.split)}")
    if res.added:
        notes.append(f"target-only: {', '.join(res.added)}")
    if res.trusted:
        notes.append(f"torch's CUDA runtime pins not resolved: {len(res.trusted)}")
    if res.extra:
        notes.append(f"host-only extras: {', '.join(res.extra)}")
    return (f"{res.target}: {len(v)} packages, {res.seconds:.0f} s, {res.pip_runs} pip runs: {shown}"
            + (f" [{'; '.join(notes)}]" if notes else ""))


def constraints_text(res: Resolution) -> str:
    """constraints-<profile>.txt for a resolution: every needed package but torch (its pin, in the
    requirements file, picks the CPU build where one is offered)."""
    keep = sorted((n for n in res.versions if n not in res.extra and n != "torch"), key=str.lower)
    return ("# Full transitive pin set of the CPU profile (Python 3.11, Linux x86_64), from pip's resolver:\n"
            "#   python tests/test_env_profiles.py --write-cpu-constraints\n"
            + "".join(f"{res.names.get(n, n)}=={res.versions[n]}\n" for n in keep))


if __name__ == "__main__":
    only = sys.argv[1:]
    if only == ["--write-cpu-constraints"]:
        cpu = next(t for t in targets() if t.profile == "cpu")
        with tempfile.TemporaryDirectory() as d:
            r = resolve(cpu, Path(d))
        assert not r.problems, r.problems
        (ENV_DIR / "constraints-cpu.txt").write_text(constraints_text(r))
        print(summary(r))
        raise SystemExit(0)
    for tgt in targets():
        if only and tgt.profile not in only:
            continue
        with tempfile.TemporaryDirectory() as d:
            try:
                r = resolve(tgt, Path(d))
            except (RegistryUnreachable, AssertionError) as e:
                print(f"{tgt}: FAILED {e}")
                continue
        print(summary(r) + (f"\n  PROBLEMS: {r.problems}" if r.problems else ""), flush=True)
