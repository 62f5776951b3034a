"""The study's notebooks as a user meets them: jupytext pairs, committed clean, small, and runnable.

(a) every notebook is a pair -- notebooks/<name>.py (py:percent, the source) and <name>.ipynb
    (committed without outputs) -- in sync, with exactly one `parameters` cell;
(b) a save through jupytext's contents manager (what JupyterLab uses under `make lab`) writes both;
    `make venv` installs the git filter nbstripout (a commit takes no outputs, execution counts or
    language_info) and JupyterLab's settings (a .py opens as a notebook; a save of notebooks/ is
    written as git commits it; opening one leaves it unmodified);
(c) cells are calls and displays: no code cell over 12 lines, all notebooks under 300 lines of code;
(d) the whole study runs on params/ci.yaml through blendstudy.study.runner.run_study, every notebook
    writes its results JSON, and every measurement states a non-interactive worker process.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import torch

from blendstudy.device import no_native_bf16
from blendstudy.study.protocol import NOTEBOOKS, STAGE_NOTEBOOKS
from blendstudy.study.runner import StudyError, run_study

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
LAB_SETUP = ROOT / "env" / "jupyterlab"


def _as_committed(rel):
    """A file as git holds it (the index: what the next commit takes); outside a git checkout, the file."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "show", f":./{rel}"], capture_output=True)
    except OSError:  # no git
        done = None
    if done is not None and done.returncode == 0:
        return done.stdout.decode("utf-8")
    return (ROOT / rel).read_text(encoding="utf-8")


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_study_has_exactly_its_notebooks_as_pairs():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.py")) == sorted(NOTEBOOKS)
    assert 'formats = "ipynb,py:percent"' in (ROOT / "jupytext.toml").read_text()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_pair_is_in_sync_clean_with_one_parameters_cell(name):
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    twin = jupytext.read(NOTEBOOK_DIR / f"{name}.py")
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in twin.cells], (
        f"notebooks/{name}.py and .ipynb differ: run `jupytext --sync notebooks/{name}.py`")
    assert nb.metadata.kernelspec.name == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged parameters"
    assert [c for c in twin.cells if "parameters" in c.metadata.get("tags", [])][0].source == tagged[0].source
    assert tagged[0].cell_type == "code"
    # the embedded default: papermill with no parameters runs params/default.yaml
    assert 'params_file = "params/default.yaml"' in tagged[0].source
    assert "out_dir = None" in tagged[0].source
    assert nb.cells[0].cell_type == "markdown", f"{name}: the story comes first"
    # what a commit takes (a run in the working file is the git filter's to strip)
    committed = nbformat.reads(_as_committed(f"notebooks/{name}.ipynb"), as_version=4)
    fix = (f"`make venv` installs the git filter that strips them; then `git add notebooks/{name}.ipynb` "
           f"(or `.venv/bin/nbstripout --keep-id --extra-keys metadata.language_info notebooks/{name}.ipynb`)")
    assert "language_info" not in committed.metadata, f"{name}: the kernel's language_info is staged: {fix}"
    for cell in _code(committed):
        assert cell.outputs == [], f"{name}: a code cell has outputs: {fix}"
        assert cell.execution_count is None, f"{name}: a code cell has an execution count: {fix}"


def test_cells_are_calls_and_displays():
    total = 0
    for name in NOTEBOOKS:
        for cell in _code(jupytext.read(NOTEBOOK_DIR / f"{name}.py")):
            lines = len(cell.source.splitlines())
            assert lines <= 12, f"{name}: a code cell of {lines} lines is a library function waiting to be written"
            total += lines
    assert total < 300, f"{total} lines of code in the notebooks"


def test_a_save_through_jupyterlabs_contents_api_writes_both_files(tmp_path):
    """What `make lab` does on save: jupytext's contents manager writes the .ipynb AND its .py twin."""
    import asyncio

    from jupytext import AsyncTextFileContentsManager  # the manager jupytext's server extension installs

    for f in ("jupytext.toml", "notebooks/p4_pad64.ipynb", "notebooks/p4_pad64.py"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, tmp_path / f)
    cm = AsyncTextFileContentsManager(root_dir=str(tmp_path))
    model = asyncio.run(cm.get("notebooks/p4_pad64.ipynb"))
    model["content"].cells[-1].source += "\nprint('edited in JupyterLab')"
    asyncio.run(cm.save(model, "notebooks/p4_pad64.ipynb"))
    assert "print('edited in JupyterLab')" in (tmp_path / "notebooks/p4_pad64.py").read_text()
    saved = nbformat.read(str(tmp_path / "notebooks/p4_pad64.ipynb"), as_version=4)
    assert "print('edited in JupyterLab')" in saved.cells[-1].source


def _git(repo, *args, **kwargs):
    # PATH without the venv: git runs the filter as it would from any shell
    env = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                 if not p.startswith(sys.prefix))}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env,
                          **kwargs).stdout


def _ran_in_jupyterlab(nb):
    """What Run All adds to a notebook: outputs, execution counts, the kernel's language_info."""
    ran = nbformat.from_dict(json.loads(json.dumps(nb)))
    ran.metadata["language_info"] = {"name": "python", "version": "3.11.7", "file_extension": ".py"}
    for count, cell in enumerate(_code(ran), 1):
        cell.execution_count = count
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran\n")]
        cell.metadata["scrolled"] = True
    return ran


def test_make_venv_installs_the_git_filter_and_jupyterlabs_settings(tmp_path):
    """env/jupyterlab/install.py (`make venv`) into a fresh repository: a commit of notebooks that ran
    takes none of the run, and every notebook as committed is the filter's own output (a fresh clone's
    `git status` is clean)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    setup = [sys.executable, str(LAB_SETUP / "install.py")]
    # not a git checkout: the settings only, and no error
    said = subprocess.run(setup + ["--repo", str(tmp_path), "--prefix", str(tmp_path / "venv0")],
                          check=True, capture_output=True, text=True).stdout
    assert "skipped" in said

    repo, venv = tmp_path / "repo", tmp_path / "venv"
    _git(tmp_path, "init", "-q", str(repo))
    shutil.copy(ROOT / ".gitattributes", repo)
    (repo / "notebooks").mkdir()
    committed = _as_committed("notebooks/env_check.ipynb")  # one notebook: each run of the filter takes seconds
    (repo / "notebooks" / "env_check.ipynb").write_text(committed, encoding="utf-8")
    said = subprocess.run(setup + ["--repo", str(repo), "--prefix", str(venv)], check=True, capture_output=True,
                          text=True).stdout
    assert "installed" in said
    clean = _git(repo, "config", "filter.nbstripout.clean").strip()
    assert clean == f'"{sys.executable}" -m nbstripout --keep-id' and os.path.isabs(sys.executable)
    assert _git(repo, "config", "filter.nbstripout.extrakeys").split() == ["metadata.language_info"]
    assert _git(repo, "check-attr", "filter", "notebooks/env_check.ipynb").strip().endswith("nbstripout")

    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "notebooks")
    assert _git(repo, "show", "HEAD:notebooks/env_check.ipynb") == committed  # the filter's own form
    # open, Run All, save (outside `make lab`, the outputs stay in the file): git takes none of it
    path = repo / "notebooks" / "env_check.ipynb"
    nbformat.write(_ran_in_jupyterlab(nbformat.read(str(path), as_version=4)), str(path))
    assert '"outputs": []' not in path.read_text()
    _git(repo, "add", "notebooks/env_check.ipynb")
    assert _git(repo, "status", "--porcelain") == ""

    overrides = venv / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    assert overrides.read_text() == (LAB_SETUP / "overrides.json").read_text()
    # .py opens with jupytext's notebook view, by the name its JupyterLab extension registers
    factory = json.loads(overrides.read_text())["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"]
    extension = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyterlab-jupytext" / "static"
    assert any(f'FACTORY="{factory}"' in js.read_text(encoding="utf-8") for js in extension.glob("*.js"))
    from traitlets.config.loader import PyFileConfigLoader

    server = PyFileConfigLoader("jupyter_server_config.py", path=str(venv / "etc" / "jupyter")).load_config()
    assert server.ServerApp.contents_manager_class.__name__ == "StudyContentsManager"


def test_lab_saves_notebooks_as_git_commits_them_and_opens_them_unmodified(tmp_path):
    """Under `make lab`: a save of a notebook that ran writes both files exactly as committed (the git
    filter's form, as the test above shows for env_check: a fresh clone's `git status` is clean), and a
    notebook opens with the language_info its kernel reports (JupyterLab marks it modified otherwise)."""
    from jupyter_client.manager import start_new_kernel
    from traitlets.config.loader import PyFileConfigLoader

    pairs = [f"notebooks/{name}{ext}" for name in NOTEBOOKS for ext in (".ipynb", ".py")]
    for rel in ["jupytext.toml", *pairs]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(_as_committed(rel), encoding="utf-8")
    (tmp_path / "env" / "jupyterlab").mkdir(parents=True)
    shutil.copy(LAB_SETUP / "jupyter_server_config.py", tmp_path / "env" / "jupyterlab")
    config = PyFileConfigLoader("jupyter_server_config.py", path=str(tmp_path / "env" / "jupyterlab")).load_config()
    cm = config.ServerApp.contents_manager_class(root_dir=str(tmp_path))

    kernel, client = start_new_kernel(kernel_name="python3")
    try:
        reported = client.kernel_info(reply=True, timeout=60)["content"]["language_info"]
    finally:
        client.stop_channels()
        kernel.shutdown_kernel(now=True)
    for path in ("notebooks/env_check.ipynb", "notebooks/env_check.py"):
        model = asyncio.run(cm.get(path))
        assert json.loads(json.dumps(model["content"].metadata["language_info"])) == reported

    for name in NOTEBOOKS:
        model = asyncio.run(cm.get(f"notebooks/{name}.ipynb"))
        model["content"] = json.loads(json.dumps(_ran_in_jupyterlab(model["content"])))  # as the browser sends it
        asyncio.run(cm.save(model, f"notebooks/{name}.ipynb"))
        for rel in (f"notebooks/{name}.ipynb", f"notebooks/{name}.py"):
            assert (tmp_path / rel).read_text(encoding="utf-8") == _as_committed(rel), (
                f"{rel} is not as a save writes it: `git add` it with the git filter installed (`make venv`)")
    # a notebook elsewhere (an executed copy) keeps its outputs
    (tmp_path / "scratch").mkdir()
    asyncio.run(cm.save(model, "scratch/ran.ipynb"))
    assert all(cell.outputs for cell in _code(nbformat.read(str(tmp_path / "scratch" / "ran.ipynb"), as_version=4)))


def test_a_missing_path_stops_the_study_naming_the_parameter_and_the_cell(tmp_path):
    params = tmp_path / "missing_coco.yaml"
    params.write_text(f"_BASE_: {ROOT / 'params' / 'ci.yaml'}\n"
                      "data:\n  val:\n    source: coco\n"
                      f"    annotations: {tmp_path / 'nowhere' / 'instances_val2017.json'}\n"
                      f"    images: {tmp_path / 'nowhere'}\n")
    with pytest.raises(StudyError) as err:
        run_study(params, out_root=tmp_path / "artifacts", notebooks=["env_check"], log=lambda _: None)
    msg = str(err.value)
    assert "notebook env_check failed in cell" in msg
    assert "data.val.annotations" in msg
    assert err.value.notebook == "env_check" and err.value.cell is not None
    assert err.value.executed.is_file()  # the executed copy keeps the traceback


def test_reproduce_cli_reports_a_missing_params_file(tmp_path, capsys):
    from blendstudy.cli import main

    rc = main(["reproduce", "--params", str(tmp_path / "nope.yaml"), "--out-root", str(tmp_path)])
    assert rc != 0
    assert "nope.yaml" in capsys.readouterr().err


STAGE_KEYS = {"stage", "latency", "first_call_ms", "samples_ms", "comparisons", "accuracy", "gate", "recipes"}
EXPECTED_KEYS = {
    "env_check": {"device", "npu", "environment"},
    "weights_check": {"weights", "random_weights", "check", "summary"},
    "baseline": {"latency", "samples_ms", "first_call_ms", "profiles", "efficiency"},
    "p0_resize": STAGE_KEYS,
    "p1_decode": STAGE_KEYS | {"decode_profiles"},
    "p2_runtime": {"sweep", "best", "latency", "samples_ms", "accuracy", "gate"},
    "p3_compile": STAGE_KEYS | {"compile"},
    "p4_pad64": STAGE_KEYS | {"shapes", "dynamo_counters", "extras"},
    "p6_offline": {"backends", "exports", "latency", "comparisons", "accuracy", "gate", "memory", "errors"},
    "p5_eval": {"metrics", "timing", "samples_ms", "num_images", "score_thresh", "max_dets", "evaluated"},
    "summary": {"versions", "chain", "accuracy", "coco", "notebooks"},
}


MEASURED = ("baseline", "p0_resize", "p1_decode", "p2_runtime", "p3_compile", "p4_pad64", "p6_offline")


@pytest.mark.slow
def test_the_whole_study_runs_on_ci_params(tmp_path):
    run = run_study(ROOT / "params" / "ci.yaml", out_root=tmp_path, log=lambda _: None)
    assert run == (tmp_path / "ci").resolve()
    assert set(EXPECTED_KEYS) == set(NOTEBOOKS)
    records = {}
    for name in NOTEBOOKS:
        assert (run / f"{name}.ipynb").is_file(), f"executed copy of {name} missing"
        path = run / "results" / f"{name}.json"
        assert path.is_file(), f"{name} wrote no results JSON"
        rec = json.loads(path.read_text())
        assert {"name", "params", "environment", "figures", "extra"} <= set(rec)
        missing = EXPECTED_KEYS[name] - set(rec["extra"])
        assert not missing, f"{name}: results lack {sorted(missing)}"
        for figure in rec["figures"].values():
            assert (path.parent / figure).is_file(), f"{name}: figure {figure} missing"
        if name in MEASURED:  # measured in a worker process that states itself
            processes = rec["effective_runtime"]
            assert processes, f"{name}: no effective_runtime"
            for role, proc in processes.items():
                assert proc["interactive"] is False, (name, role)
                assert proc["torch_threads"] >= 1 and proc["cpu_affinity"], (name, role)
        records[name] = rec["extra"]
    for stage, name in STAGE_NOTEBOOKS.items():
        stats = records[name]["latency"][stage]
        assert stats["n"] >= 1 and stats["mean"] > 0, f"{name}: no latency for {stage}"
        if stage != "baseline":
            assert records[name]["gate"] and all(isinstance(ok, bool) for ok in records[name]["gate"].values())
    # every table says whether the weights were random
    assert records["baseline"]["random_weights"] == records["weights_check"]["random_weights"]
    assert [row["stage"] for row in records["summary"]["chain"]] == list(STAGE_NOTEBOOKS)
    assert (run / "runtime" / "runtime_best.json").is_file()
    # P2 is a real pair across two processes: the two sides ran in different workers
    sides = json.loads((run / "results" / "p2_runtime.json").read_text())["effective_runtime"]
    assert sides["p1 side"]["pid"] != sides["p2 side"]["pid"]
    # every shape was met apart from the measured samples; P3 under dynamo's default recompile limit
    # (ci's one shape: compiled; the embedded default's 9 shapes leave one eager), P4 under 32
    from blendstudy.optimize import RECOMPILE_LIMIT, default_recompile_limit

    assert {(row["recompile_limit"], row["graph"]) for row in records["p3_compile"]["compile"]} == {
        (default_recompile_limit(), "compiled")}
    assert {(row["recipe"], row["recompile_limit"], row["graph"]) for row in records["p4_pad64"]["compile"]} == {
        ("p3", default_recompile_limit(), "compiled"), ("p4", RECOMPILE_LIMIT, "compiled")}
    # P4's extras ran in the stage's worker and read its p4 measurements back instead of repeating them
    p4 = records["p4_pad64"]
    assert p4["extras"]["runs"]["p4"]["samples_ms"] == p4["samples_ms"]["p4"]
    assert p4["extras"]["paired_vs_baseline"]["p4"] == p4["comparisons"]["p4 vs baseline"]
    # P6: every offline backend measured (none failed to load) against the baseline and the fastest recipe
    p6 = records["p6_offline"]
    assert not p6["errors"] and {b["runtime"] for b in p6["backends"]} == {"onnxruntime", "openvino"}
    assert all(f"{b['backend']} vs baseline" in p6["comparisons"] for b in p6["backends"])
    assert {m["pipeline"] for m in p6["memory"]} >= {"baseline", "onnxruntime static", "openvino static"}
    # int8 by NNCF (params/ci.yaml: offline.int8 [nncf]) ran as an OpenVINO backend of its own, and the
    # roofline counts its dense network in int8 against the measured int8 peak (P4's recipes: fp32 here)
    assert "openvino static-nncf" in {b["backend"] for b in p6["backends"]}
    assert {(r["part"], r["precision"]) for r in p6["roofline"] if r["pipeline"] == "openvino static-nncf"} \
        >= {("dense network", "int8")}
    # offline.bf16 (auto): where this CPU computes bf16 natively OpenVINO ran the static fp32 export in bf16,
    # its dense network counted against the bf16 peak; elsewhere the run says why it made no such variant
    if no_native_bf16(torch.device("cpu")) is None:
        assert {(r["part"], r["precision"]) for r in p6["roofline"] if r["pipeline"] == "openvino static-bf16"} \
            >= {("dense network", "bf16")}
    else:
        assert "bf16 variant not made" in p6["notes"]
    assert {r["pipeline"] for r in p4["extras"]["roofline"]} >= {"baseline", "p4"}
    assert all(r["fraction_of_peak"] is None or r["fraction_of_peak"] > 0 for r in p4["extras"]["roofline"])
    # a backend's peak memory comes from its own fresh worker; the PyTorch recipes' from workers of their own
    pids = {m["pipeline"]: m["process"]["pid"] for m in p6["memory"]}
    for b in p6["backends"]:
        assert pids[b["backend"]] == p6["processes"][b["backend"]]["pid"]
    assert len({pids["baseline"], *(p6["processes"][b["backend"]]["pid"] for b in p6["backends"])}) \
        == 1 + len(p6["backends"])
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "Summary" in report and "data:image/png;base64" in report
