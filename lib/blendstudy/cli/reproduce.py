"""`python -m blendstudy reproduce --params params/default.yaml`: every notebook with papermill."""

from __future__ import annotations

import argparse

from blendstudy.study.protocol import NOTEBOOKS
from blendstudy.study.runner import run_study


def cmd_reproduce(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.notebooks.split(",") if n.strip()] if args.notebooks else None
    run_study(args.params, out_root=args.out_root, notebooks=names, kernel=args.kernel,
              exclude_input=not args.with_code)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reproduce", help="run every notebook with papermill into artifacts/<params name>/")
    r.add_argument("--params", default="params/default.yaml", help="params YAML (default: %(default)s)")
    r.add_argument("--out-root", default="artifacts", help="the run goes to <out-root>/<params name>/")
    r.add_argument("--notebooks", default=None,
                   help=f"comma-separated subset of: {','.join(NOTEBOOKS)} (default: all, in this order)")
    r.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    r.add_argument("--with-code", action="store_true", help="keep the code cells in report.html")
    r.set_defaults(func=cmd_reproduce)
