"""Facts of the emulated Ascend host shared by its stand-ins (blendstudy's test double, not Huawei's
software): the machine description (../machine.json), how many cards a process sees, and the
emulated .om file -- what the `atc` stand-in writes and the `ais_bench` stand-in runs.

An emulated .om is ``MAGIC``, a 4-byte little-endian header length, a JSON header (SoC, input shape,
the ATC arguments, the source ONNX's sha256) and the ONNX graph with its input fixed to that shape.
It is not Huawei's format: only these stand-ins read it.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
MACHINE: Dict[str, Any] = json.loads((ROOT / "machine.json").read_text())
MAGIC = b"BLENDSTUDY-EMULATED-OM\0"


def card_count() -> int:
    """Cards on the emulated host: machine.json's, or the first BLENDSTUDY_EMULATE_NPUS of them."""
    n = len(MACHINE["bus_ids"])
    raw = os.environ.get("BLENDSTUDY_EMULATE_NPUS", "")
    return max(1, min(n, int(raw))) if raw.strip().isdigit() else n


def visible_cards() -> List[int]:
    """The physical cards this process sees, in its own numbering (ASCEND_RT_VISIBLE_DEVICES renumbers)."""
    cards = list(range(card_count()))
    raw = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    if not raw:
        return cards
    wanted = [int(v) for v in raw.split(",") if v.strip().isdigit()]
    return [c for c in wanted if c in cards]


def write_om(path: Path, onnx_bytes: bytes, header: Dict[str, Any]) -> None:
    blob = json.dumps(header, sort_keys=True).encode()
    Path(path).write_bytes(MAGIC + struct.pack("<I", len(blob)) + blob + onnx_bytes)


def read_om(path: Path) -> Tuple[Dict[str, Any], bytes]:
    """(header, ONNX bytes) of an emulated .om; ValueError naming the file when it is not one."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path}: not an om model made by the emulated atc")
    (n,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    return json.loads(data[start:start + n]), data[start + n:]
