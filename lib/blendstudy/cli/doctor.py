"""`python -m blendstudy doctor`: what this machine would install and run, every known problem as
a named check (pass / fail / skip), in one screen."""

from __future__ import annotations

import argparse

from blendstudy import doctor


def cmd_doctor(args: argparse.Namespace) -> int:
    report = doctor.run_checks(args.device)
    print(doctor.format_report(report))
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("doctor", help="check this machine for the study: profile, versions, known NPU problems")
    d.add_argument("--device", default="auto", help="the device the study would use (auto, cpu, cuda[:N], npu[:N])")
    d.set_defaults(func=cmd_doctor)
