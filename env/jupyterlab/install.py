#!/usr/bin/env python3
"""Set a checkout up for the notebooks (`make venv` and `make lab` run it with the venv's python).

1. JupyterLab's settings: `overrides.json` (beside this file) goes to
   `<venv>/share/jupyter/lab/settings/`, where JupyterLab reads defaults for every user. It opens a
   `.py` with jupytext's notebook view ("Jupytext Notebook"); Open With > Editor still shows the text.
   `<venv>/etc/jupyter/jupyter_server_config.py` loads `jupyter_server_config.py` (beside this file):
   saves of notebooks/ are written as git commits them, and opening one leaves it unmodified.
2. The git filter `nbstripout`, which `.gitattributes` applies to every `*.ipynb`: its commands go
   into the repository's own config (`.git/config`), naming this interpreter by its absolute path,
   so that a git without the venv on PATH runs them too. It strips outputs, execution counts and
   the metadata a kernel adds (`language_info`); cell ids and the other metadata stay. Where the
   checkout is not the top of a git repository, or git is missing, the filter is left out.

Standard library only:

    .venv/bin/python env/jupyterlab/install.py [--repo DIR] [--prefix VENV]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
#: the metadata nbstripout strips besides its defaults: what a kernel writes when a notebook opens
EXTRA_KEYS = "metadata.language_info"


def filter_config(python: str) -> Dict[str, str]:
    """The git config entries of the filter, run with `python` (which has nbstripout)."""
    command = f'"{python}" -m nbstripout --keep-id'
    return {
        "filter.nbstripout.clean": command,
        "filter.nbstripout.smudge": "cat",
        "filter.nbstripout.required": "true",  # a commit fails, instead of taking outputs, if it cannot run
        "filter.nbstripout.extrakeys": EXTRA_KEYS,
        "diff.ipynb.textconv": command + " -t",
    }


def _git(repo: str, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)
    except OSError:  # no git
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def install_filter(repo: str, python: str) -> str:
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top is None or os.path.realpath(top) != os.path.realpath(repo):
        return "git filter nbstripout: skipped (not the top of a git checkout)"
    for key, value in filter_config(python).items():
        subprocess.run(["git", "-C", repo, "config", "--local", key, value], check=True)
    return "git filter nbstripout: installed in .git/config"


def install_settings(prefix: str) -> str:
    target = os.path.join(prefix, "share", "jupyter", "lab", "settings")
    os.makedirs(target, exist_ok=True)
    shutil.copyfile(os.path.join(HERE, "overrides.json"), os.path.join(target, "overrides.json"))
    return "JupyterLab settings: .py opens as a notebook"


def install_server_config(prefix: str) -> str:
    target = os.path.join(prefix, "etc", "jupyter")
    os.makedirs(target, exist_ok=True)
    config = os.path.join(HERE, "jupyter_server_config.py")
    with open(os.path.join(target, "jupyter_server_config.py"), "w", encoding="utf-8") as f:
        f.write(f"# written by {os.path.relpath(__file__, REPO)} (make venv): the study's server settings\n"
                f"load_subconfig({config!r})  # noqa: F821\n")
    return "notebooks/ saved without outputs"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=REPO, help="the checkout whose git config gets the filter")
    parser.add_argument("--prefix", default=sys.prefix, help="the venv that gets JupyterLab's settings")
    args = parser.parse_args(argv)
    # sys.executable as started (the venv's bin/python), not resolved: the symlink's target lacks nbstripout
    python = os.path.abspath(sys.executable)
    done = [install_settings(args.prefix), install_server_config(args.prefix), install_filter(args.repo, python)]
    print("; ".join(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
