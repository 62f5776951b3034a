"""Load detectron2 / AdelaiDet `.pth` checkpoints safely and report how they fit a model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


@dataclass
class LoadReport:
    """How a state dict fits a model (names are the model's parameter/buffer names)."""

    path: str
    file_bytes: int
    tensors: int
    values: int
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatches: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    model_tensors: int = 0
    model_values: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    @property
    def coverage(self) -> float:
        """Fraction of the model's tensors the checkpoint provides with the right shape."""
        if self.model_tensors == 0:
            return 0.0
        good = self.model_tensors - len(self.missing) - len(self.shape_mismatches)
        return good / self.model_tensors

    def summary(self, limit: int = 10) -> str:
        lines = [f"{self.path}: {self.file_bytes / 2**20:.1f} MiB, {self.tensors} tensors, "
                 f"{self.values:,} values; model has {self.model_tensors} tensors, "
                 f"{self.model_values:,} values; coverage {self.coverage:.1%}"]

        def listing(title: str, items: List[Any]) -> None:
            if items:
                shown = ", ".join(str(i) for i in items[:limit])
                more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
                lines.append(f"  {title} ({len(items)}): {shown}{more}")

        listing("missing in checkpoint", self.missing)
        listing("unexpected in checkpoint", self.unexpected)
        listing("shape mismatch (name, checkpoint, model)", self.shape_mismatches)
        if self.ok:
            lines.append("  strict match: every tensor present with the right shape")
        return "\n".join(lines)


def file_sha256(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (a checkpoint's identity in records)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read `{"model": state_dict}` (detectron2/AdelaiDet) or a bare state dict with
    torch.load(weights_only=True): pickled code is refused, never executed. Values that are
    numpy arrays (detectron2's converted .pkl-style) are turned into tensors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError (zip), EOFError ...
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = next((ln for ln in lines if ln.startswith(("Unsupported", "Trying to", "invalid load key"))),
                      lines[0] if lines else type(exc).__name__)
        if "Unsupported global" in text or "GLOBAL" in text:
            msg = f"it contains pickled objects other than tensors; refusing to unpickle them ({reason})"
        else:
            msg = reason
        raise CheckpointError(f"{path}: not a loadable PyTorch checkpoint: {msg}") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict or {{'model': state_dict}}, got {type(obj).__name__}")
    state: Dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            state[str(k)] = v
        elif hasattr(v, "__array__"):
            state[str(k)] = torch.as_tensor(v)
    if not state:
        raise CheckpointError(f"{path}: contains no tensors")
    return state


def _model_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return dict(model.state_dict())


def compare_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str = "<memory>",
                       file_bytes: int = 0) -> LoadReport:
    expected = _model_state(model)
    report = LoadReport(path=path, file_bytes=file_bytes, tensors=len(state),
                        values=sum(int(v.numel()) for v in state.values()),
                        model_tensors=len(expected),
                        model_values=sum(int(v.numel()) for v in expected.values()))
    for name, tensor in expected.items():
        if name not in state:
            report.missing.append(name)
        elif tuple(state[name].shape) != tuple(tensor.shape):
            report.shape_mismatches.append((name, tuple(state[name].shape), tuple(tensor.shape)))
    report.unexpected = sorted(k for k in state if k not in expected)
    return report


def load_weights(model: nn.Module, path: Union[str, Path], strict: bool = True) -> LoadReport:
    """Load a checkpoint into `model`. strict: any missing/unexpected/mis-shaped tensor raises
    CheckpointError with the readable report (a checkpoint for another model fails here)."""
    state = read_state_dict(path)
    report = compare_state_dict(model, state, str(path), os.path.getsize(path))
    if strict and not report.ok:
        raise CheckpointError(f"{path}: does not fit this model\n{report.summary()}")
    usable = {k: v for k, v in state.items()
              if k not in report.unexpected and k not in {m[0] for m in report.shape_mismatches}}
    model.load_state_dict(usable, strict=False)
    return report


def random_state_dict_from_layout(tsv_path: Union[str, Path], seed: int = 0) -> Dict[str, torch.Tensor]:
    """A random state dict with the names/shapes/dtypes of a `name<TAB>shape<TAB>dtype` layout file
    (the official checkpoint's layout, for tests that cannot download it)."""
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for line in Path(tsv_path).read_text().splitlines():
        if not line.strip():
            continue
        name, shape_s, dtype_s = line.split("\t")
        shape = tuple(int(x) for x in shape_s.strip("()").split(",") if x.strip())
        dtype = getattr(torch, dtype_s.strip())
        if dtype.is_floating_point:
            out[name] = torch.randn(shape, generator=gen).to(dtype)
        else:
            out[name] = torch.zeros(shape, dtype=dtype)
    return out
