"""blendstudy.study.params_schema: every params file loads into the typed schema with the values it
had as an untyped dict, defaults from one place, `_BASE_` through the one loader config.py has, and a
one-line error naming file, key and expected type for anything the schema does not accept."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from blendstudy.config import ConfigError, load_config, read_base_chain
from blendstudy.paths import repo_root
from blendstudy.results import save_results
from blendstudy.study.params import ParamsError, StudyParams, runtime_for
from blendstudy.study.params_schema import AccuracyParams, DataSection, TimingParams

PARAMS_DIR = repo_root() / "params"
PARAMS_FILES = sorted(PARAMS_DIR.glob("*.yaml"))

# a few effective values per shipped file (inherited through _BASE_ or the schema's defaults)
EXPECTED = {
    "default": {"device": "auto", "timing.repeats": 2, "accuracy.data": "accuracy", "accuracy.n_boot": 1000,
                "data.benchmark.num_images": 40, "offline.int8": ["nncf", "nncf-accuracy"],
                "runtime.candidates": "auto", "evaluation.scaling": False, "model.missing_weights": "random"},
    "ci": {"timing.repeats": 1, "data.calibration.split": "ci_train",
           "offline.shapes": ["static"], "offline.compare_recipe": None, "runtime.max_settings": 2},
    "npu_emulated": {"device": "npu:1", "data.benchmark.num_images": 2, "data.benchmark.split": "ci_bench",
                     "data.benchmark.image_size": [240, 320], "accuracy.images": 2, "extras": [],
                     "offline.int8": False, "runtime.cpu_affinity": {"npu:0": "0", "npu:1": "1"},
                     "evaluation.devices": ["npu:0", "npu:1"], "timing.n_boot": 200},
    "npu_910b3": {"device": "npu:0", "timing.warmup": 10, "evaluation.processes": 8, "offline.int8": False,
                  "offline.backends": ["om", "onnxruntime"], "accuracy.data": "benchmark", "accuracy.n_boot": 1000,
                  "runtime.env": {"TASK_QUEUE_ENABLE": "2", "OMP_NUM_THREADS": "1"},
                  "references.ap.model card": {"bbox": 44.8, "segm": 39.5}},
    "r101_coco": {"model.missing_weights": "error", "data.val.num_images": None, "data.val.source": "coco",
                  "data.benchmark.annotations": "datasets/coco/annotations/instances_val2017.json"},
    "r101_synthetic": {"model.score_thresh": 0.05, "model.weights": None, "accuracy.images": None,
                       "evaluation.processes": 1, "evaluation.devices": None, "offline.shapes": ["dynamic"]},
    "r101_dcn_synthetic": {"offline.backends": [], "offline.int8": False, "offline.calibration_images": 16},
    "r101_p6_quick": {"timing.confidence": 0.95, "timing.n_boot": 200, "profile.warmup": 0,
                      "offline.host_recipe": "best_cpu", "data.benchmark.num_images": 3,
                      "data.benchmark.split": "r101_bench"},
}


def _at(params, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def _write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_shipped_file_is_checked_here():
    assert {p.stem for p in PARAMS_FILES} == set(EXPECTED)


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.stem)
def test_each_params_file_loads_to_its_values(path):
    params = StudyParams.load(path)
    for dotted, value in EXPECTED[path.stem].items():
        assert _at(params, dotted) == value, dotted
        assert type(_at(params, dotted)) is type(value), dotted
    assert isinstance(params.timing, TimingParams) and isinstance(params.accuracy, AccuracyParams)
    assert all(isinstance(s, DataSection) for s in params.data.values())
    json.dumps(params.to_dict())  # a plain mapping


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.stem)
def test_the_effective_params_keep_every_value_the_files_give(path):
    """What a file says is what loads: its own keys override its _BASE_'s (mappings merged key by key,
    lists replaced), and the schema only adds its defaults."""
    raw = yaml.safe_load(path.read_text())
    raw.pop("_BASE_", None)

    def contains(full, part, key=""):
        if isinstance(part, dict):
            for k, v in part.items():
                contains(full[k], v, f"{key}.{k}")
        else:
            assert full == part and type(full) is type(part), key

    contains(StudyParams.load(path).to_dict(), raw)


def test_defaults_come_from_the_schema(tmp_path):
    params = StudyParams.load(_write(tmp_path, "model: {config: x}\ndata: {benchmark: {num_images: 2}}\n"))
    assert params.device == "auto" and params.extras == [] and params.model.missing_weights == "error"
    assert params.accuracy == AccuracyParams() and params.accuracy.data == "benchmark"
    assert params.timing == TimingParams() and params.offline.int8 is False
    assert params.data.benchmark.source == "synthetic" and params.data.benchmark.image_size == [480, 640]
    assert params.evaluation.max_dets == 100 and params.evaluation.processes == 1
    assert runtime_for(params, "cpu") == ({}, None)


def test_sections_read_as_mappings(tmp_path):
    params = StudyParams.load(PARAMS_DIR / "ci.yaml")
    assert isinstance(params, Mapping) and isinstance(params.accuracy, Mapping)
    assert params.get("accuracy") is params.accuracy and params.accuracy.get("n_boot") == 200
    assert params.data["val"] is params.data.val and "calibration" in params.data
    assert "path" not in params and "name" not in params and "_BASE_" not in params
    assert {**params.to_dict(), "max_images": None}["timing"] == {"warmup": 1, "repeats": 1, "rounds": 1,
                                                                  "n_boot": 200, "confidence": 0.95}
    with pytest.raises(AttributeError):
        _ = params.data.nowhere


def test_the_results_json_stores_the_params_as_a_plain_mapping(tmp_path):
    params = StudyParams.load(PARAMS_DIR / "npu_emulated.yaml")
    out = save_results(tmp_path, "x", {"a": 1}, {**params.to_dict(), "max_images": 3})
    stored = json.loads(out.read_text())["params"]
    assert stored["runtime"]["cpu_affinity"] == {"npu:0": "0", "npu:1": "1"} and stored["max_images"] == 3
    assert StudyParams.from_mapping({k: v for k, v in stored.items() if k != "max_images"}) == params


@pytest.mark.parametrize("text, message", [
    ("timing: {repeats: two}", "timing.repeats: expected an integer, got 'two'"),
    ("timing: {repeats: true}", "timing.repeats: expected an integer, got True"),
    ("timing: {confidence: high}", "timing.confidence: expected a number, got 'high'"),
    ("device: 3", "device: expected a string, got 3"),
    ("model: {missing_weights: maybe}", "model.missing_weights: expected one of 'error', 'random', got 'maybe'"),
    ("data: {val: {image_size: [480, x]}}", "data.val.image_size: expected a list of (an integer) or a list of "
                                            "(a list of (an integer)), got [480, 'x']"),
    ("data: {val: [1]}", "data.val: expected a mapping, got [1]"),
    ("runtime: {candidates: manual}", "runtime.candidates: expected one of 'auto' or a list of (a mapping), "
                                      "got 'manual'"),
    ("offline: {shapes: [static, wobbly]}", "offline.shapes[1]: expected one of 'static', 'dynamic', got 'wobbly'"),
    ("evaluation: {scaling: [1, two]}", "evaluation.scaling: expected true or false or a list of (an integer), "
                                        "got [1, 'two']"),
    ("extras: 3", "extras: expected a string or a list of (a string), got 3"),
    ("timing: {repeat: 2}", "timing.repeat: unknown key (known: warmup, repeats, rounds, n_boot, confidence)"),
    ("timming: {repeats: 2}", "timming: unknown key (known: model, device, data"),
    ("data: {val: {sorce: coco}}", "data.val.sorce: unknown key (known: source, root"),
])
def test_a_bad_value_is_one_line_naming_file_key_and_type(tmp_path, text, message):
    path = _write(tmp_path, "model: {config: x}\n" + text + "\n")
    with pytest.raises(ParamsError) as err:
        StudyParams.load(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert "\n" not in str(err.value)


def test_the_error_names_the_file_of_the_chain_that_has_the_key(tmp_path):
    _write(tmp_path, "model: {config: x}\ntiming: {repeats: two}\n", "base.yaml")
    child = _write(tmp_path, "_BASE_: base.yaml\ntiming: {warmup: 1}\n", "child.yaml")
    with pytest.raises(ParamsError, match=r"base\.yaml: timing\.repeats: expected an integer, got 'two'$"):
        StudyParams.load(child)


def test_repository_files_are_named_relative_to_the_root():
    with pytest.raises(ParamsError) as err:
        StudyParams.load("params/ci.yaml", {"timing": {"repeats": "two"}})
    assert str(err.value) == "params/ci.yaml (overrides): timing.repeats: expected an integer, got 'two'"


def test_accepted_variants(tmp_path):
    text = ("model: {config: x, score_thresh: 1}\nextras: default\noffline: {int8: true}\n"
            "evaluation: {scaling: [1, 2]}\nruntime: {env: {A: 2}, cpu_affinity: 3, candidates: [{name: a}]}\n")
    params = StudyParams.load(_write(tmp_path, text))
    assert params.model.score_thresh == 1.0 and type(params.model.score_thresh) is float  # int for a number
    assert params.extras == "default" and params.offline.int8 is True and params.evaluation.scaling == [1, 2]
    assert runtime_for(params, "cpu") == ({"A": "2"}, [3]) and params.runtime.candidates == [{"name": "a"}]
    assert StudyParams.load(_write(tmp_path, "model: {config: x}\noffline: {int8: nncf}\n")).offline.int8 == "nncf"


def test_model_config_is_required(tmp_path):
    with pytest.raises(ParamsError, match=r"x\.yaml: model\.config: required, not set$"):
        StudyParams.load(_write(tmp_path, "device: cpu\n"))


def test_from_mapping_checks_like_a_file():
    params = StudyParams.from_mapping({"model": {"config": "x"}, "data": {"benchmark": {"source": "folder"}}},
                                      path="compare")
    assert params.name == "compare" and params.path == Path("compare") and params.data.benchmark.source == "folder"
    with pytest.raises(ParamsError, match=r"^compare: accuracy\.max_lost: expected an integer, got 0\.5$"):
        StudyParams.from_mapping({"model": {"config": "x"}, "accuracy": {"max_lost": 0.5}}, path="compare")


def test_one_base_loader_for_configs_and_params(tmp_path):
    _write(tmp_path, "_BASE_: b.yaml\nx: 1\n", "a.yaml")
    _write(tmp_path, "_BASE_: [c.yaml]\ny: 2\n", "b.yaml")
    _write(tmp_path, "z: 3\n", "c.yaml")
    chain = read_base_chain(tmp_path / "a.yaml", lambda p: yaml.safe_load(p.read_text()),
                            lambda p, m: ValueError(f"{p.name}: {m}"))
    assert [(p.name, d) for p, d in chain] == [("c.yaml", {"z": 3}), ("b.yaml", {"y": 2}), ("a.yaml", {"x": 1})]
    # the same messages for a cycle and a missing base, from configs and params alike
    _write(tmp_path, "_BASE_: a.yaml\n", "c.yaml")
    with pytest.raises(ParamsError, match=r"_BASE_ cycle through 'a\.yaml'"):
        StudyParams.load(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"_BASE_ cycle through 'a\.yaml'"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path, "_BASE_: nowhere.yaml\n", "d.yaml")
    with pytest.raises(ParamsError, match=r"d\.yaml: _BASE_ file 'nowhere\.yaml' not found"):
        StudyParams.load(tmp_path / "d.yaml")
    with pytest.raises(ConfigError, match=r"d\.yaml: _BASE_ file 'nowhere\.yaml' not found"):
        load_config(tmp_path / "d.yaml")
