"""Ascend helpers: the ATC command that turns the exported .onnx into an .om, and the SoC to compile for."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

from blendstudy.backends.common import INPUT_NAME, BackendError, PathLike

_NPU_SMI_ROW = re.compile(r"^\|\s*\d+\s+(?:Ascend)?(\d{3}[0-9A-Za-z]*)\s+\|")


def atc_command(onnx_path: PathLike, output: PathLike, soc_version: str, input_shape: Sequence[int],
                precision_mode: Optional[str] = None) -> List[str]:
    """argv of ATC converting `onnx_path` to `output`.om for `soc_version` (e.g. "Ascend910B3") with a fixed
    input shape: (N, C, H, W), or (H, W) for (1, 3, H, W). ATC appends ".om" itself, so a trailing ".om"
    on `output` is dropped. precision_mode: ATC's --precision_mode (e.g. "force_fp32", "allow_fp32_to_fp16");
    None keeps ATC's default for the SoC, which lowers convolutions to fp16 on most Ascend parts."""
    if not soc_version:
        raise BackendError("atc needs --soc_version (e.g. Ascend910B3): none given and none read from the device "
                           "(npu-smi info shows it)")
    dims = [int(d) for d in input_shape]
    if len(dims) == 2:
        dims = [1, 3] + dims
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise BackendError(f"atc input shape must be (N, C, H, W) or (H, W) of positive sizes, got {list(input_shape)}")
    out = str(output)
    if out.endswith(".om"):
        out = out[:-3]
    argv = ["atc", f"--model={Path(onnx_path)}", "--framework=5", f"--output={out}",
            f"--soc_version={soc_version}", f"--input_shape={INPUT_NAME}:{','.join(str(d) for d in dims)}"]
    if precision_mode:
        argv.append(f"--precision_mode={precision_mode}")
    return argv


def parse_npu_smi(text: str) -> Optional[str]:
    """The SoC of the first chip in `npu-smi info`'s table ("| 0     910B3     | OK ..." -> "Ascend910B3")."""
    for line in text.splitlines():
        m = _NPU_SMI_ROW.match(line.strip())
        if m:
            return "Ascend" + m.group(1)
    return None


def soc_version() -> Optional[str]:
    """The Ascend SoC of this machine's first NPU (ATC's --soc_version), or None where there is no NPU.
    Asks torch_npu when it is installed, else parses `npu-smi info`."""
    if importlib.util.find_spec("torch_npu") is not None:
        try:
            import torch
            import torch_npu  # noqa: F401  (registers torch.npu)

            if torch.npu.is_available():
                name = str(torch.npu.get_device_name(0) or "")
                if name:
                    return name if name.startswith("Ascend") else "Ascend" + name
        except Exception:  # a broken driver install: fall back to npu-smi
            pass
    exe = shutil.which("npu-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_npu_smi(proc.stdout) if proc.returncode == 0 else None
