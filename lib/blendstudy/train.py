"""Older name of the training command: ``python -m blendstudy.train`` runs
``python -m blendstudy.training`` (blendstudy.training.cli), ``--recipe`` included."""

from __future__ import annotations

import sys

from blendstudy.training.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m blendstudy.train"))
