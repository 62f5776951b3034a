#!/usr/bin/env python3
"""The hash-pinned locks of the environment profiles: which lock fits an interpreter, whether a lock is
stale, and their generation with uv (`make lock` runs `python env/lock.py`).

Standard library only (the Makefile runs it before any venv exists; install_profile.py imports it).

    python env/lock.py                 regenerate the locks whose requirements file changed (else a no-op)
    python env/lock.py --force         regenerate every lock with the cut-off date its header records
    python env/lock.py --check         exit 1 when a lock is missing or older than its requirements file
    python env/lock.py --path --profile cpu    the lock for this interpreter (Python version, machine)

A lock is `uv pip compile --generate-hashes` of env/requirements-<profile>.txt for one Python and one
platform (uv resolves for another platform; pip cannot), under a header that records the requirements
file's sha256 and the `--exclude-newer` cut-off it was resolved with. A lock is regenerated only when
that sha256 (or its target) changed, with the cut-off set to the time of that run; `--force` reuses the
recorded cut-off, so an unchanged registry gives the same file again.

uv does not read pip's configuration: a lock whose torch is a local build (cpu on x86_64: torch
2.13.0+cpu, from PyTorch's CPU index) is resolved with pip's configured find-links (or --find-links
DIR), where that wheel must lie; the lock's header names the index it is published on, which
install_profile.py adds when pip's own sources do not have it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

ENV_DIR = os.path.dirname(os.path.abspath(__file__))
LOCK_DIR = os.path.join(ENV_DIR, "locks")
#: where PyTorch publishes its CPU builds (torch 2.13.0+cpu of the cpu profile's x86_64 lock)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: the line after which a lock's requirements are installed with pip's --no-deps
NO_DEPS_LINE = "# --no-deps: installed after the lines above with `pip install --no-deps --require-hashes`"
#: header fields that say what a lock was made from; a difference makes it stale
IDENTITY = ("profile", "python", "platform", "requirements-sha256", "no-deps", "local-build")


@dataclass(frozen=True)
class Target:
    """One lock: a profile resolved for one Python and one platform."""

    profile: str
    python: str  # the interpreter's major.minor the lock is for
    machine: str  # platform.machine() spelling
    platform: str  # uv's --python-platform
    python_floor: str = ""  # uv's --python-version, the lowest patch release (default: python, i.e. X.Y.0)
    no_deps: Tuple[str, ...] = ()  # requirements installed with --no-deps, outside the resolution
    local_build: str = ""  # "<name>+<local>": the build the lock must hold (from find-links)
    index: str = ""  # where that local build is published

    @property
    def name(self) -> str:
        return f"{self.profile}-py{self.python}-{self.machine}.txt"

    @property
    def path(self) -> str:
        return os.path.join(LOCK_DIR, self.name)

    @property
    def requirements(self) -> str:
        return os.path.join(ENV_DIR, f"requirements-{self.profile}.txt")


TARGETS: Tuple[Target, ...] = (
    Target("cpu", "3.11", "x86_64", "x86_64-manylinux_2_28", "3.11.5", local_build="torch+cpu",
           index=TORCH_CPU_INDEX),
    Target("cpu", "3.11", "aarch64", "aarch64-manylinux_2_35", "3.11.5"),  # openvino 2026.4.1: glibc 2.35
    Target("cuda", "3.10", "x86_64", "x86_64-manylinux_2_28"),
    Target("cuda", "3.11", "x86_64", "x86_64-manylinux_2_28"),
    Target("cuda", "3.12", "x86_64", "x86_64-manylinux_2_28"),
    Target("npu", "3.9", "aarch64", "aarch64-manylinux_2_28"),
    # torch_npu's x86_64 wheel requires torch==2.8.0+cpu, which PyPI does not carry: PyPI's torch 2.8.0
    # is locked, and torch_npu goes in without its dependencies (`blendstudy doctor`: torch_npu_deps)
    Target("npu", "3.9", "x86_64", "x86_64-manylinux_2_28", no_deps=("torch_npu",)),
)


def machine() -> str:
    """This machine's architecture in the locks' spelling."""
    return platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")


def find(profile: str, python: Optional[str] = None, arch: Optional[str] = None) -> Optional[Target]:
    """The lock target of ``profile`` for a Python (major.minor, default this one) on a machine; None if
    the profile has no lock for it."""
    python = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    arch = arch or machine()
    return next((t for t in TARGETS if (t.profile, t.python, t.machine) == (profile, python, arch)), None)


def sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_header(path: str) -> Dict[str, str]:
    """The `# key: value` lines a lock starts with."""
    out: Dict[str, str] = {}
    with open(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            m = re.match(r"#\s*([a-z0-9-]+):\s*(.*?)\s*$", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def pins_of(text: str) -> Dict[str, str]:
    """{canonical name: version} of the `name==version` lines of a lock's (or a requirements file's) text."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def pins(path: str) -> Dict[str, str]:
    """pins_of the file at ``path``."""
    with open(path) as fh:
        return pins_of(fh.read())


def requirement_name(line: str) -> Optional[str]:
    """The canonical name a requirements-file line requires; None for a comment, a blank or an option."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    return canonical(m.group(1)) if m else None


def block(text: str, name: str) -> str:
    """The lines of ``name``'s pin in a lock's text (its `name==version \\` line and the indented lines
    after it), '' when the lock does not pin it."""
    out: List[str] = []
    for line in text.splitlines(keepends=True):
        if out and not line[:1].isspace():
            break
        if out or requirement_name(line) == canonical(name) and "==" in line:
            out.append(line)
    return "".join(out)


def split_no_deps(text: str) -> Tuple[str, str]:
    """(the part pip installs with dependencies, the part after NO_DEPS_LINE) of a lock's text."""
    head, sep, tail = text.partition(NO_DEPS_LINE + "\n")
    return head, tail if sep else ""


def identity(target: Target) -> Dict[str, str]:
    """The header fields a lock of ``target`` made from today's requirements file carries."""
    return {"profile": target.profile, "python": target.python_floor or target.python, "platform": target.platform,
            "requirements-sha256": sha256(target.requirements), "no-deps": " ".join(target.no_deps) or "-",
            "local-build": target.local_build or "-"}


def stale(target: Target) -> Optional[str]:
    """None when ``target``'s lock exists and was made from today's requirements file, else why not."""
    if not os.path.isfile(target.path):
        return "missing"
    header = read_header(target.path)
    want = identity(target)
    changed = [k for k in IDENTITY if header.get(k) != want[k]]
    return None if not changed else f"{', '.join(changed)} changed"


def configured_find_links(python: str = sys.executable) -> List[str]:
    """pip's find-links (PIP_FIND_LINKS, else its configuration files) -- uv does not read them."""
    if os.environ.get("PIP_FIND_LINKS"):
        return os.environ["PIP_FIND_LINKS"].split()
    try:
        out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found: List[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            found += [v for v in value.strip().strip("'\"").split() if v not in found]
    return found


def uv_compile(uv: str, target: Target, exclude_newer: str, find_links: Sequence[str],
               only: Optional[Sequence[str]] = None) -> str:
    """uv's hash-pinned resolution of the target's requirements (without its no-deps names; with
    ``only``, just those names and --no-deps), without uv's header."""
    with open(target.requirements) as fh:
        lines = fh.read().splitlines()
    names = {canonical(n) for n in (only if only is not None else target.no_deps)}
    keep = [ln for ln in lines if requirement_name(ln) is None or (requirement_name(ln) in names) == (only is not None)]
    with tempfile.TemporaryDirectory() as tmp:
        req = os.path.basename(target.requirements)
        with open(os.path.join(tmp, req), "w") as fh:
            fh.write("\n".join(keep) + "\n")
        cmd = [uv, "pip", "compile", "--quiet", "--no-header", "--generate-hashes", "--no-config",
               "--python-platform", target.platform, "--python-version", target.python_floor or target.python,
               "--exclude-newer", exclude_newer, req]
        if only is not None:
            cmd.append("--no-deps")
        if target.local_build:
            cmd += [arg for link in find_links for arg in ("--find-links", link)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=_uv_env())
    if proc.returncode != 0:
        raise LockError(f"uv could not resolve {target.name}:\n{proc.stderr.strip()}")
    return proc.stdout


#: uv's environment variables that pass to `uv pip compile`: caching, the network, a mirror of the default index
UV_VARIABLES_KEPT = ("UV_CACHE_DIR", "UV_HTTP_TIMEOUT", "UV_NATIVE_TLS", "UV_CONCURRENT_DOWNLOADS", "UV_OFFLINE",
                     "UV_DEFAULT_INDEX", "UV_INDEX_URL")


def _uv_env() -> Dict[str, str]:
    """This environment without uv's variables that change a resolution (extra indexes, find-links,
    cut-off, resolution strategy, constraints...): a lock depends on the tree, not on the shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("UV_") or k in UV_VARIABLES_KEPT}


class LockError(RuntimeError):
    pass


def check_local_build(target: Target, body: str) -> None:
    """A lock that must hold a local build (torch+cpu) does: else uv took the registry's build."""
    if not target.local_build:
        return
    name, local = target.local_build.split("+", 1)
    m = re.search(rf"^{re.escape(name)}==(\S+)", body, re.M)
    if m is None or not m.group(1).endswith("+" + local):
        raise LockError(f"{target.name}: {name} resolved to {m.group(1) if m else 'nothing'}, not a +{local} build: "
                        f"download the {name} +{local} wheel for Python {target.python} {target.machine} from "
                        f"{target.index} into a folder and run `make lock FIND_LINKS=<folder>`")


def render(target: Target, exclude_newer: str, uv_version: str, body: str, no_deps_body: str) -> str:
    """The lock file's text: the header, uv's resolution, the no-deps part."""
    header = [f"# Lock of env/{os.path.basename(target.requirements)} for Python {target.python} on Linux "
              f"{target.machine}: generated by `make lock` (env/lock.py), do not edit.",
              "# Install: pip install --require-hashes -r <this file> (make venv: env/install_profile.py)"]
    fields = dict(identity(target), **{"exclude-newer": exclude_newer, "uv": uv_version})
    if target.index:
        fields["index"] = f"{target.index} (where {target.local_build} is published; pip adds it when needed)"
    header += [f"# {key}: {value}" for key, value in fields.items()]
    text = "\n".join(header) + "\n" + body
    if no_deps_body:
        text += NO_DEPS_LINE + "\n" + no_deps_body
    return text


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lock(target: Target, uv: str, find_links: Sequence[str], fresh: str, force: bool = False,
         exclude_newer: Optional[str] = None, log=print) -> bool:
    """Regenerate ``target``'s lock when it is stale (or ``force``); True when the file changed. The
    cut-off: ``exclude_newer`` when given, else the lock's own when it is not stale, else ``fresh``."""
    why = stale(target)
    if why is None and not force:
        return False
    old = read_header(target.path) if os.path.isfile(target.path) else {}
    cutoff = exclude_newer or (old.get("exclude-newer") if why is None else None) or fresh
    body = uv_compile(uv, target, cutoff, find_links)
    check_local_build(target, body)
    no_deps = uv_compile(uv, target, cutoff, find_links, only=target.no_deps) if target.no_deps else ""
    text = render(target, cutoff, uv_version(uv), body, no_deps)
    if os.path.isfile(target.path) and open(target.path).read() == text:
        return False
    os.makedirs(LOCK_DIR, exist_ok=True)
    with open(target.path, "w") as fh:
        fh.write(text)
    log(f"lock: wrote env/locks/{target.name} ({why or 'forced'}; exclude-newer {cutoff})")
    return True


def uv_version(uv: str) -> str:
    out = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=60).stdout.split()
    return out[1] if len(out) > 1 else "unknown"


def find_uv(given: Optional[str]) -> str:
    """The uv to run: ``given``, else the one beside this interpreter, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "uv")
    uv = shutil.which(given or (beside if os.path.isfile(beside) else "uv"))
    if not uv:
        raise LockError(f"uv not found ({given or 'uv'}): `make venv` installs it (pinned in env/requirements-*.txt)")
    return os.path.abspath(uv)  # uv runs in a temporary folder


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="regenerate every lock (with its recorded cut-off)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a lock is missing or stale")
    ap.add_argument("--path", action="store_true", help="print the lock of --profile for this interpreter")
    ap.add_argument("--profile", choices=("npu", "cuda", "cpu"), help="only this profile's locks")
    ap.add_argument("--uv", help="the uv executable (default: beside this Python, else on PATH)")
    ap.add_argument("--find-links", action="append", help="where local builds lie (default: pip's find-links)")
    ap.add_argument("--exclude-newer", help="the cut-off date for the locks written (default: now)")
    args = ap.parse_args(argv)
    targets = [t for t in TARGETS if args.profile in (None, t.profile)]
    if args.path:
        target = find(args.profile or "cpu")
        print(target.path if target else "")
        return 0 if target else 1
    if args.check:
        problems = [f"env/locks/{t.name}: {why}" for t in targets for why in [stale(t)] if why]
        print("\n".join(problems) or f"{len(targets)} locks up to date")
        return 1 if problems else 0
    try:
        uv = find_uv(args.uv)
        links = args.find_links or configured_find_links()
        fresh = now()
        changed = [t for t in targets if lock(t, uv, links, fresh, args.force, args.exclude_newer)]
    except LockError as exc:
        print(f"lock: {exc}", file=sys.stderr)
        return 1
    if not changed:
        again = " (all resolved again: the same files)" if args.force else ""
        print(f"lock: {len(targets)} locks up to date{again}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
