"""`python -m blendstudy <command>`: the same library functions the notebooks call.

Commands (registered from the explicit list COMMANDS): predict, weights, bench, profile, compare,
eval, export, reproduce, doctor. Errors a user can fix (a bad file, a missing path, an unavailable device) print
one line `blendstudy: <what>` and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from blendstudy.cli import bench, compare, doctor, eval, export, predict, reproduce, weights
from blendstudy.cli.common import EXIT_USER_ERROR, USER_ERRORS, UserError

__all__ = ["COMMANDS", "UserError", "build_parser", "main"]

#: every command module, in the order `--help` lists them; each has register(subparsers)
COMMANDS = (predict, weights, bench, compare, eval, export, reproduce, doctor)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blendstudy", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        msg = str(exc).strip()
        if isinstance(exc, FileNotFoundError) and exc.filename:
            msg = f"{exc.filename}: {exc.strerror or 'not found'}"
        print(f"blendstudy: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("blendstudy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
