"""Run the whole study: every notebook in order with papermill, then an HTML report.

`run_study("params/default.yaml")` executes notebooks/<name>.ipynb for each name of NOTEBOOKS with
the parameters ``params_file`` and ``out_dir`` into ``artifacts/<params name>/`` (the executed
notebooks beside ``results/<notebook>.json`` and ``figures/*.png``, which the notebooks write), stops
at the first failing notebook with a :class:`StudyError` that names the notebook, the cell and the
error line, and renders the executed summary notebook to ``artifacts/<params name>/report.html`` (whose
first line, for a run on the emulated Ascend stack, says that no latency in it is an NPU's) and every
executed notebook beside it as ``<name>.html``, which the report links.
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import nbformat
import papermill as pm
from nbconvert import HTMLExporter
from papermill.exceptions import PapermillExecutionError

from blendstudy.emulation import EMULATED_BANNER, emulated
from blendstudy.errors import UserError
from blendstudy.paths import repo_root
from blendstudy.study.protocol import NOTEBOOKS

PathLike = Union[str, Path]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class StudyError(UserError):
    """A notebook of the study failed; the message says which notebook, which cell and why.

    notebook: the notebook's name; cell: its 1-based cell number in notebooks/<name>.ipynb (None
    when the failure was not in a cell); executed: the executed copy, with the traceback in it.
    """

    def __init__(self, message: str, notebook: str, cell: Optional[int] = None,
                 executed: Optional[Path] = None) -> None:
        super().__init__(message)
        self.notebook = notebook
        self.cell = cell
        self.executed = executed


def _strip(text: str) -> str:
    return _ANSI.sub("", text)


def _source_cell_number(source_notebook: Path, cell_source: str, cell_index: int) -> int:
    """1-based number of the failing cell in the source notebook: the cell with the failing source,
    else papermill's index less the "injected-parameters" cell it inserted before it."""
    try:
        cells = json.loads(source_notebook.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        cells = []
    for i, cell in enumerate(cells):
        text = cell.get("source", "")
        if (text if isinstance(text, str) else "".join(text)) == cell_source:
            return i + 1
    return max(cell_index, 1)


def _failing_line(traceback: Sequence[str]) -> Optional[str]:
    """The notebook line the error came from: the last '---->' marker of the cell's frame."""
    lines = _strip("\n".join(traceback)).splitlines()
    for line in lines:  # the first frame is the cell itself
        m = re.match(r"\s*-+>\s*(\d+)\s(.*)", line)
        if m:
            return f"line {m.group(1)}: {m.group(2).strip()}"
    return None


def _describe_failure(name: str, source: Path, executed: Path, exc: Exception) -> StudyError:
    if isinstance(exc, PapermillExecutionError):
        cell = _source_cell_number(source, exc.source, exc.cell_index)
        error = f"{exc.ename}: {_strip(str(exc.evalue)).strip()}".rstrip(": ")
        where = _failing_line(exc.traceback)
        msg = (f"notebook {name} failed in cell {cell} (In [{exc.exec_count}])"
               + (f" at {where}" if where else "") + f"\n  {error}\n  executed copy: {executed}")
        return StudyError(msg, name, cell, executed)
    first = _strip(str(exc)).strip().splitlines()
    why = f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
    return StudyError(f"notebook {name} did not run: {why}\n  executed copy (if any): {executed}",
                      name, None, executed)


_BANNER_HTML = (f'<p style="background:#fde8e8;color:#8b1a1a;padding:8px 12px;margin:0;font-weight:bold">'
                f'{html.escape(EMULATED_BANNER)}</p>')


def _emulated_run(run: Path) -> bool:
    """True when any results JSON of the run folder says it was made on the emulated Ascend stack."""
    for path in sorted((run / "results").glob("*.json")):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("environment", {}).get("emulated"):
                return True
        except (OSError, ValueError):
            continue
    return emulated()


def render_report(executed_notebook: PathLike, html_path: PathLike, exclude_input: bool = True) -> Path:
    """HTML of an executed notebook (figures embedded); code cells hidden unless exclude_input=False."""
    nb = nbformat.read(str(executed_notebook), as_version=4)
    exporter = HTMLExporter(exclude_input=exclude_input, exclude_input_prompt=exclude_input,
                            exclude_output_prompt=exclude_input)
    body, _ = exporter.from_notebook_node(nb)
    if _emulated_run(Path(executed_notebook).parent):  # the first line says no latency here is an NPU's
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _BANNER_HTML, body, count=1)
    out = Path(html_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def run_study(params_file: PathLike, out_root: PathLike = "artifacts", notebooks: Optional[Sequence[str]] = None,
              kernel: str = "python3", log: Callable[[str], None] = print, exclude_input: bool = True) -> Path:
    """Execute the study's notebooks for one params file; returns artifacts folder of the run.

    params_file: a params YAML (relative to the working directory or to the repository root).
    out_root: the run goes to <out_root>/<params file stem>/ (relative to the working directory).
    notebooks: names (of NOTEBOOKS) to run, in the study's order; default all of them.
    Each executed notebook is written to <run>/<name>.ipynb as it runs (also when it fails).
    Raises StudyError at the first failing notebook. The report (<run>/report.html) is rendered
    from <run>/summary.ipynb whenever that notebook ran, and with it every executed notebook of the
    run folder as <run>/<name>.html (the report links them).
    """
    root = repo_root()
    params = Path(params_file)
    if not params.is_absolute() and not params.exists():
        params = root / params
    if not params.is_file():
        raise StudyError(f"{params_file}: params file not found", "params")
    params = params.resolve()
    selected = list(NOTEBOOKS) if notebooks is None else list(notebooks)
    unknown = [n for n in selected if n not in NOTEBOOKS]
    if unknown:
        raise StudyError(f"unknown notebook(s) {unknown}; the study has {', '.join(NOTEBOOKS)}", unknown[0])
    selected = [n for n in NOTEBOOKS if n in selected]
    run = (Path(out_root) / params.stem).resolve()
    run.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    for k, name in enumerate(selected, 1):
        source = root / "notebooks" / f"{name}.ipynb"
        executed = run / f"{name}.ipynb"
        if not source.is_file():
            raise StudyError(f"{source}: notebook not found (notebooks/{name}.py is its source: "
                             f"`jupytext --sync notebooks/{name}.py` writes it)", name)
        log(f"[{k}/{len(selected)}] {name} ...")
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(source), str(executed),
                                parameters={"params_file": str(params), "out_dir": str(run)},
                                kernel_name=kernel, cwd=str(root), progress_bar=False, log_output=False)
        except Exception as exc:  # PapermillExecutionError, a dead kernel, a missing kernel ...
            raise _describe_failure(name, source, executed, exc) from exc
        log(f"[{k}/{len(selected)}] {name} done in {time.perf_counter() - t0:.1f} s")

    if "summary" in selected:
        html = render_report(run / "summary.ipynb", run / "report.html", exclude_input=exclude_input)
        for name in NOTEBOOKS:  # the report links every executed notebook as <name>.html
            if (run / f"{name}.ipynb").is_file():
                render_report(run / f"{name}.ipynb", run / f"{name}.html", exclude_input=exclude_input)
        log(f"report: {html}")
    log(f"study {params.stem}: {len(selected)} notebook(s) in {time.perf_counter() - started:.1f} s -> {run}")
    return run


__all__ = ["StudyError", "render_report", "run_study"]
