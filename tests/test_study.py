"""blendstudy.study.params and .context: params files, their _BASE_ chain, path checks naming the
parameter, the run folder, the synthetic data sections, the runtime a params file gives a device,
and the accuracy gate decided once with the params' thresholds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from blendstudy.data.images import read_image
from blendstudy.loading import load_pipeline
from blendstudy.paths import repo_root
from blendstudy.structures import Detections
from blendstudy.study.context import Context, StudySpec, gate_ground_truth, gate_section
from blendstudy.study.params import (
    ParamsError,
    StudyParams,
    benchmark_images,
    check_paths,
    open_dataset,
    resolve_config,
    resolve_weights,
    run_dir,
    runtime_for,
)

REPO_ROOT = repo_root()


def load_study_pipeline(params, device="cpu"):
    return load_pipeline(resolve_config(params), resolve_weights(params), device, warn_random=False)

PARAMS_DIR = REPO_ROOT / "params"
PARAMS_FILES = sorted(PARAMS_DIR.glob("*.yaml"))


def test_the_repo_has_its_params_files():
    names = {p.stem for p in PARAMS_FILES}
    assert {"default", "ci", "r101_coco", "r101_synthetic", "npu_910b3"} <= names


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.stem)
def test_every_params_file_loads(path):
    params = StudyParams.load(path)
    assert params.name == path.stem
    assert Path(params.path).resolve() == path.resolve()
    assert "_BASE_" not in params
    assert params.model.config
    for section in ("benchmark", "val"):
        assert section in params.data, section
    assert isinstance(params.data.benchmark, Mapping)  # attribute access gives nested (read-only mapping) nodes
    assert isinstance(params.get("runtime", {}), Mapping)


def test_params_by_relative_name_from_the_repo_root():
    params = StudyParams.load("params/default.yaml")
    assert params.name == "default"


def test_npu_params_inherit_from_r101_coco():
    npu, coco = StudyParams.load(PARAMS_DIR / "npu_910b3.yaml"), StudyParams.load(PARAMS_DIR / "r101_coco.yaml")
    assert npu.device == "npu:0" and npu.runtime.env == {"TASK_QUEUE_ENABLE": "2", "OMP_NUM_THREADS": "1"}
    assert npu.model == coco.model and npu.data == coco.data
    assert npu.timing == coco.timing


def test_base_merging(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("model: {config: x, weights: w}\ntiming: {warmup: 1, repeats: 2}\n"
                                        "runtime: {env: {A: '1', B: '2'}}\nextras: [p4, best]\n")
    (tmp_path / "sub" / "mid.yaml").write_text("_BASE_: ../base.yaml\ntiming: {repeats: 3}\ndevice: cpu\n")
    (tmp_path / "sub" / "child.yaml").write_text("_BASE_: mid.yaml\nruntime: {env: {B: '5'}}\nextras: [p1]\n")
    p = StudyParams.load(tmp_path / "sub" / "child.yaml")
    assert p.name == "child"
    assert p.timing.warmup == 1 and p.timing.repeats == 3 and p.runtime.env == {"A": "1", "B": "5"}
    assert p.model.weights == "w" and p.device == "cpu" and p.extras == ["p1"]  # lists replace, mappings merge
    with pytest.raises(AttributeError):
        _ = p.missing
    o = StudyParams.load(tmp_path / "sub" / "child.yaml",
                         overrides={"timing": {"warmup": 7}, "model": {"weights": None}})
    assert o.timing.warmup == 7 and o.timing.repeats == 3 and o.model.weights is None


def test_base_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ParamsError, match="cycle"):
        StudyParams.load(tmp_path / "a.yaml")


def test_missing_base(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: nowhere.yaml\n")
    with pytest.raises(ParamsError, match=r"nowhere\.yaml.*not found"):
        StudyParams.load(tmp_path / "a.yaml")


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {config: [unclosed\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml: invalid YAML"):
        StudyParams.load(bad)


def test_not_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match=r"list\.yaml: expected a mapping"):
        StudyParams.load(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match=r"nope\.yaml: params file not found"):
        StudyParams.load(tmp_path / "nope.yaml")
    assert issubclass(ParamsError, ValueError)


@pytest.mark.parametrize("name", ["r101_coco", "npu_910b3"])
def test_check_paths_names_the_parameter_and_the_file(name):
    params = StudyParams.load(PARAMS_DIR / f"{name}.yaml")
    if (REPO_ROOT / "datasets" / "coco").exists() or (REPO_ROOT / "weights" / "R_101_3x.pth").exists():
        pytest.skip("COCO / R_101_3x are present in this checkout")
    with pytest.raises(ParamsError) as info:
        check_paths(params)
    msg = str(info.value)
    assert f"{name}.yaml" in msg
    assert re.search(r"parameter (data\.(benchmark|val)\.(annotations|images)|model\.weights)\b", msg), msg
    assert "does not exist" in msg


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


SYNTH = """
model: {{config: BlendMask/Tiny_synthetic, weights: {weights}, missing_weights: {missing}}}
data:
  benchmark: {{source: synthetic, root: {root}, split: tb, seed: 2, num_images: 2, image_size: [48, 64]}}
  val: {{source: synthetic, root: {root}, split: tv, seed: 1, num_images: 3, image_size: [48, 64]}}
"""


def test_check_paths_missing_weights(tmp_path):
    params = StudyParams.load(_write(tmp_path, SYNTH.format(weights=tmp_path / "w.pth", missing="error",
                                                            root=tmp_path)))
    with pytest.raises(ParamsError, match=r"p\.yaml: parameter model\.weights: .*w\.pth does not exist"):
        check_paths(params)


@pytest.mark.parametrize("weights, missing", [("tiny_synthetic", "error"), ("null", "error"), ("random", "error"),
                                              ("/nonexistent/w.pth", "random")])
def test_check_paths_accepts(tmp_path, weights, missing):
    check_paths(StudyParams.load(_write(tmp_path, SYNTH.format(weights=weights, missing=missing, root=tmp_path))))


def test_check_paths_coco_annotations_not_set(tmp_path):
    text = "model: {config: x, weights: null}\ndata:\n  val: {source: coco, images: /tmp}\n"
    with pytest.raises(ParamsError, match=r"parameter data\.val\.annotations: not set"):
        check_paths(StudyParams.load(_write(tmp_path, text)))


def test_check_paths_unknown_source(tmp_path):
    text = "model: {config: x, weights: null}\ndata:\n  benchmark: {source: ftp}\n"
    with pytest.raises(ParamsError, match=r"parameter data\.benchmark\.source: unknown source 'ftp'"):
        check_paths(StudyParams.load(_write(tmp_path, text)))


def test_check_paths_folder(tmp_path):
    text = f"model: {{config: x, weights: null}}\ndata:\n  benchmark: {{source: folder, images: {tmp_path}/pics}}\n"
    params = StudyParams.load(_write(tmp_path, text))
    with pytest.raises(ParamsError, match=r"parameter data\.benchmark\.images"):
        check_paths(params)
    (tmp_path / "pics").mkdir()
    check_paths(params)


def test_synthetic_sections(tmp_path):
    params = StudyParams.load(_write(tmp_path, SYNTH.format(weights="null", missing="error", root=tmp_path)))
    paths = benchmark_images(params)
    assert len(paths) == 2 and all(p.exists() and p.suffix == ".png" for p in paths)
    assert all(str(p).startswith(str(tmp_path)) for p in paths)
    assert len(benchmark_images(params, limit=1)) == 1
    val = open_dataset(params, "val")
    assert len(val) == 3


def test_gate_ground_truth_only_for_a_trained_model_on_annotated_images(tmp_path):
    trained = StudyParams.load(_write(tmp_path, SYNTH.format(weights="tiny_synthetic", missing="error",
                                                             root=tmp_path)))
    loaded = load_study_pipeline(trained, device="cpu")
    truth, note = gate_ground_truth(trained, loaded)
    assert truth is not None and len(truth) == 2 and "max change 0.3" in note
    random = StudyParams.load(_write(tmp_path, SYNTH.format(weights="null", missing="error", root=tmp_path)))
    assert gate_ground_truth(random, load_study_pipeline(random, device="cpu")) == (None, pytest.approx(
        "random weights: no AP check (the instance gate still runs)"))
    folder = StudyParams.load(_write(tmp_path, SYNTH.format(weights="tiny_synthetic", missing="error", root=tmp_path)
                                     + f"  benchmark: {{source: folder, images: {tmp_path}}}\n"))
    truth, note = gate_ground_truth(folder, loaded)
    assert truth is None and "folder" in note
    loaded.pipeline.model.proposal_generator.fcos_head.num_classes = 80  # a COCO model on the shapes
    truth, note = gate_ground_truth(trained, loaded)
    assert truth is None and "80 classes" in note


def test_accuracy_gates_report_ap_and_verdicts(tmp_path):
    params = StudyParams.load(_write(tmp_path, SYNTH.format(weights="tiny_synthetic", missing="error",
                                                            root=tmp_path)))
    loaded = load_study_pipeline(params, device="cpu")
    images = {p.name: read_image(p) for p in benchmark_images(params)}
    run = {n: loaded.pipeline(im) for n, im in images.items()}
    empty = {n: Detections(d.boxes[:0], d.scores[:0], d.classes[:0], d.image_size, masks=d.masks[:0])
             for n, d in run.items()}  # every detection dropped
    ctx = Context(StudySpec(str(params.path), str(tmp_path)), params, loaded, images)
    reports, gates, note = ctx.gates({"a": run, "b": dict(run), "none": empty}, [("a", "b"), ("a", "none")])
    assert list(reports) == ["b vs a", "none vs a"] and "AP on" in note
    assert reports["b vs a"].ap.change == {"bbox": 0.0, "segm": 0.0}
    assert gates["b vs a"] is True
    assert gates["none vs a"] is False
    # the verdict is decided once, with the params' thresholds, and stored with the report
    assert reports["b vs a"].gate is True and reports["none vs a"].gate is False
    assert reports["b vs a"].verdict == "pass" and reports["none vs a"].verdict == "fail"
    assert reports["b vs a"].gate_thresholds.max_ap_change == 0.3
    # beside every verdict the AP change's paired bootstrap interval over the images
    assert reports["b vs a"].ap_change_ci == {"bbox": [0.0, 0.0], "segm": [0.0, 0.0]}
    assert reports["b vs a"].to_dict()["ap_change_ci"] == {"bbox": [0.0, 0.0], "segm": [0.0, 0.0]}


def test_the_gate_runs_on_its_own_images(tmp_path):
    text = SYNTH.format(weights="tiny_synthetic", missing="error", root=tmp_path) + "accuracy: {data: val, images: 2}\n"
    params = StudyParams.load(_write(tmp_path, text))
    assert gate_section(params) == ("val", 2) and gate_section(params, max_images=1) == ("val", 1)
    loaded = load_study_pipeline(params, device="cpu")
    images = {p.name: read_image(p) for p in benchmark_images(params)}
    ctx = Context(StudySpec(str(params.path), str(tmp_path)), params, loaded, images)
    val = open_dataset(params, "val")
    assert ctx.gate_images() == [val.image_path(i).name for i in val.image_ids[:2]]
    assert next(iter(ctx.gate_inputs().values())).shape == (48, 64, 3)
    reports, gates, note = ctx.gates({"a": ctx.outputs("baseline"), "b": ctx.outputs("baseline")}, [("a", "b")])
    assert ctx.outputs("baseline") is ctx.outputs("baseline")  # computed once per process
    assert reports["b vs a"].images == 2 and reports["b vs a"].ap.images == 2 and gates == {"b vs a": True}
    assert "AP on instances_tv.json" in note
    bad = StudyParams.load(_write(tmp_path, text.replace("data: val", "data: nowhere")))
    with pytest.raises(ParamsError, match=r"parameter accuracy\.data: no data\.nowhere section"):
        gate_section(bad)


def test_run_dir(tmp_path):
    params = StudyParams.load(PARAMS_DIR / "ci.yaml")
    root = run_dir(params, tmp_path / "out")
    assert root == tmp_path / "out"
    assert (root / "results").is_dir() and (root / "figures").is_dir()
    assert run_dir(params, tmp_path / "out") == root  # again: no error


def test_runtime_for_a_device(tmp_path):
    text = ("model: {config: x}\nruntime:\n  env: {TASK_QUEUE_ENABLE: 2, OMP_NUM_THREADS: 1}\n"
            "  cpu_affinity: {npu:1: \"144-167\", npu:2: \"96-119\", default: \"0-3\"}\n")
    params = StudyParams.load(_write(tmp_path, text))
    env, cores = runtime_for(params, "npu:1")
    assert env == {"TASK_QUEUE_ENABLE": "2", "OMP_NUM_THREADS": "1"} and cores == list(range(144, 168))
    assert runtime_for(params, "npu:2")[1] == list(range(96, 120))
    assert runtime_for(params, "cpu")[1] == [0, 1, 2, 3]
    one = StudyParams.load(_write(tmp_path, "model: {config: x}\nruntime: {cpu_affinity: \"2,5-6\"}\n"))
    assert runtime_for(one, "anything") == ({}, [2, 5, 6])


def test_runtime_for_nothing():
    assert runtime_for(StudyParams.load(PARAMS_DIR / "default.yaml"), "cpu") == ({}, None)
