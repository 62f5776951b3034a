"""The study's notebooks as a user meets them: committed clean, regenerable, and runnable end to end.

(a) every notebook is committed without outputs and has exactly one `parameters` cell;
(b) tools/make_notebooks.py regenerates the committed files byte for byte;
(c) the whole study runs on params/ci.yaml through blendstudy.reproduce.run_study and every notebook
    writes its results JSON (slow: a few minutes on 2 cores; still part of `make test`).
"""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

from blendstudy.reproduce import NOTEBOOKS, STAGE_NOTEBOOKS, StudyError, run_study

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "tools" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_study_has_exactly_its_notebooks():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean_with_one_parameters_cell(name):
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged parameters"
    assert tagged[0].cell_type == "code"
    # the embedded default: papermill with no parameters runs params/default.yaml
    assert 'params_file = "params/default.yaml"' in tagged[0].source
    assert "out_dir = None" in tagged[0].source
    assert nb.cells[0].cell_type == "markdown", f"{name}: the story comes first"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"


def test_generator_reproduces_the_committed_notebooks_byte_for_byte(tmp_path):
    written = _generator().write_notebooks(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.ipynb" for n in NOTEBOOKS)
    for path in written:
        committed = NOTEBOOK_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} differs from tools/make_notebooks.py: run `python tools/make_notebooks.py`")


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


STAGE_KEYS = {"stage", "latency", "first_call_ms", "samples_ms", "comparisons", "accuracy", "gate"}
EXPECTED_KEYS = {
    "env_check": {"device", "npu", "environment"},
    "weights_check": {"weights", "random_weights", "check", "summary"},
    "baseline": {"latency", "samples_ms", "first_call_ms", "profiles", "efficiency"},
    "p0_resize": STAGE_KEYS,
    "p1_decode": STAGE_KEYS | {"decode_profiles"},
    "p2_runtime": {"sweep", "best", "latency", "samples_ms", "accuracy", "gate"},
    "p3_compile": STAGE_KEYS | {"compile"},
    "p4_pad64": STAGE_KEYS | {"shapes", "dynamo_counters", "extras"},
    "p5_eval": {"metrics", "timing", "samples_ms", "num_images", "score_thresh", "max_dets", "evaluated"},
    "summary": {"versions", "chain", "accuracy", "coco", "notebooks"},
}


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
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "Summary" in report and "data:image/png;base64" in report
