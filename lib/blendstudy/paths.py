"""Where things are: the repository checkout and the package's shipped files (one place)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

__all__ = ["PACKAGE_DIR", "SHIPPED_WEIGHTS", "repo_root", "resolve_in_repo"]

PACKAGE_DIR = Path(__file__).resolve().parent
#: checkpoints shipped inside the package, by the name params files and the CLI use
SHIPPED_WEIGHTS = {"tiny_synthetic": PACKAGE_DIR / "weights" / "tiny_synthetic.pth"}


def _is_checkout(d: Path) -> bool:
    return (d / "notebooks").is_dir() and (d / "params").is_dir()


def repo_root() -> Path:
    """The checkout holding notebooks/ and params/: the one this (editable) package lives in, else
    the working directory or one of its parents, else the working directory itself."""
    here = PACKAGE_DIR.parents[1]
    if _is_checkout(here):
        return here
    cwd = Path.cwd()
    for d in (cwd, *cwd.parents):
        if _is_checkout(d):
            return d
    return cwd


def resolve_in_repo(path: Union[str, Path]) -> Path:
    """An absolute path as given; a relative one against the working directory if it exists there,
    else against the repository root (params files name paths relative to the root)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return repo_root() / p
