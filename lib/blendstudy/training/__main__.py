"""``python -m blendstudy.training``: the training command (blendstudy.training.cli)."""

import sys

from .cli import main

sys.exit(main())
