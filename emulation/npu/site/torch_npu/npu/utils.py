"""``torch_npu.npu.utils`` of the emulated torch_npu: the CANN version query."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

__all__ = ["get_cann_version"]

_KEYS = {"CANN": "runtime", "RUNTIME": "runtime", "COMPILER": "compiler", "TOOLKIT": "toolkit"}


def _toolkit_file() -> Optional[Path]:
    for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        root = os.environ.get(var, "")
        if root and (Path(root) / "version.cfg").is_file():
            return Path(root) / "version.cfg"
    here = Path(__file__).resolve().parents[3] / "cann" / "ascend-toolkit" / "latest" / "version.cfg"
    return here if here.is_file() else None


def get_cann_version(module: str = "CANN") -> str:
    """The emulated CANN's version (torch_npu 2.8 returns a str such as "8.5.0"): the toolkit's
    version.cfg (``<key>_running_version=[x:8.5.0]``), else machine.json's, else "" ."""
    key = _KEYS.get(str(module).upper(), "runtime")
    path = _toolkit_file()
    if path is not None:
        text = path.read_text()
        m = re.search(rf"^{key}_running_version=\[[^:\]]*:([^\]]+)\]", text, re.M)
        if m:
            return m.group(1).strip()
    try:
        import emulated_ascend

        return str(emulated_ascend.MACHINE.get("cann", ""))
    except ImportError:
        return ""
