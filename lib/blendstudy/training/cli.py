"""Train the native BlendMask from scratch on the synthetic shapes dataset (the embedded default).

Command line (``make tiny-model``)::

    python -m blendstudy.training --schedule tiny --out lib/blendstudy/weights/tiny_synthetic.pth \
        [--minutes 55] [--device auto] [--resume] [--iterations N] [--threads 1]

``--recipe`` is an older name of ``--schedule`` and ``python -m blendstudy.train`` an older name
of the command; both still work. Data are generated deterministically into ``artifacts/_data/``
(re-generated when missing); the checkpoint is evaluated with the real inference path on a
held-out validation split and the metrics are written next to it as JSON
(blendstudy.training.loop).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .loop import train
from .schedule import SCHEDULES


def build_parser(prog: str = "python -m blendstudy.training") -> argparse.ArgumentParser:
    """The training command's arguments."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--schedule", "--recipe", dest="schedule", default="tiny", choices=sorted(SCHEDULES),
                   help="the training schedule (hyper-parameter set); --recipe is its older name")
    p.add_argument("--out", type=Path, default=Path("lib/blendstudy/weights/tiny_synthetic.pth"))
    p.add_argument("--minutes", type=float, default=None, help="wall-clock cap of training (minutes)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--resume", action="store_true", help="continue from <work-dir>/last.pth")
    p.add_argument("--iterations", type=int, default=None, help="override the schedule's step count")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0 = torch default). 1 is the default: on a shared 2-core "
                        "machine 2 threads were measured 4x slower than 1 (OpenMP waits on a busy core)")
    p.add_argument("--data-root", type=Path, default=Path("artifacts/_data"))
    p.add_argument("--work-dir", type=Path, default=None, help="resumable checkpoints (default "
                   "artifacts/_train/<schedule>)")
    p.add_argument("--no-eval", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m blendstudy.training") -> int:
    """Run the training command; prints the run's iterations, minutes and AP as one JSON line."""
    a = build_parser(prog).parse_args(argv)
    work = a.work_dir or Path("artifacts/_train") / a.schedule
    rec = train(SCHEDULES[a.schedule], a.out, a.data_root, work, minutes=a.minutes, device=a.device,
                resume=a.resume, iterations=a.iterations, threads=a.threads, evaluate_after=not a.no_eval)
    print(json.dumps({k: rec.get(k) for k in ("iterations", "training_minutes", "bbox", "segm")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
