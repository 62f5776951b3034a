"""The doctor's vocabulary: a check's result, what was found, the report, and the helpers every
group of checks uses (the installed version of a distribution, a guard that turns a raising check
into a failed one, env/detect_profile.py loaded by path from the source checkout)."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

__all__ = ["FAIL", "PASS", "REPO_ROOT", "SKIP", "Check", "DoctorReport", "Found", "load_detect_profile"]

PASS, FAIL, SKIP = "pass", "fail", "skip"

#: the source checkout this package runs from (an editable install): env/ and lib/ live there
REPO_ROOT = Path(__file__).resolve().parents[3]


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

