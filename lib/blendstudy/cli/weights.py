"""`python -m blendstudy weights`: a checkpoint against a config (size, tensors, coverage)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blendstudy.checkpoint import compare_state_dict, read_state_dict
from blendstudy.cli.common import EXIT_PARTIAL
from blendstudy.config import load_config
from blendstudy.jsonable import to_jsonable
from blendstudy.model import build_model


def cmd_weights(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    model = build_model(cfg)
    path = Path(args.weights)
    state = read_state_dict(path)
    report = compare_state_dict(model, state, str(path), path.stat().st_size)
    params = sum(p.numel() for p in model.parameters())
    print(report.summary(limit=args.limit))
    print(f"  model parameters (trainable tensors only): {params:,}")
    if args.json:
        Path(args.json).write_text(json.dumps(to_jsonable({"report": report, "coverage": report.coverage,
                                                           "ok": report.ok, "parameters": params}), indent=2))
    return 0 if report.ok else EXIT_PARTIAL


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("weights", help="check a checkpoint against a config (size, tensors, coverage)")
    w.add_argument("--config", required=True)
    w.add_argument("--weights", required=True)
    w.add_argument("--limit", type=int, default=20, help="names listed per problem kind")
    w.add_argument("--json", default=None, help="also write the report as JSON here")
    w.set_defaults(func=cmd_weights)
