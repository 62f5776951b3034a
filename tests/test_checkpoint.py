"""blendstudy.checkpoint: strict loading of AdelaiDet layouts, readable errors, refusing pickled code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from blendstudy.checkpoint import (
    CheckpointError,
    LoadReport,
    compare_state_dict,
    load_weights,
    random_state_dict_from_layout,
    read_state_dict,
)
from blendstudy.config import load_config
from blendstudy.model import build_model
from conftest import fixture

R101_TENSORS = 634
R101_VALUES = 55_134_467


def small_dir() -> Path:
    return fixture("adelaidet_blendmask_small")


def small_model():
    return build_model(load_config(small_dir() / "config.yaml"))


def assert_clear_error(exc: CheckpointError, path: Path) -> str:
    msg = str(exc)
    first = msg.splitlines()[0]
    assert first.startswith(str(path)), msg
    assert "Traceback" not in msg
    return msg


# ------------------------------------------------------------------------------------------------
# R-101 layout (official checkpoint's names and shapes)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r101_layout() -> Path:
    return fixture("blendmask_R_101_3x_state_dict.tsv")


@pytest.fixture(scope="module")
def r101_model():
    return build_model(load_config("BlendMask/R_101_3x"))


@pytest.fixture(scope="module")
def r101_files(tmp_path_factory, r101_layout):
    sd = random_state_dict_from_layout(r101_layout, seed=1)
    d = tmp_path_factory.mktemp("r101")
    wrapped, bare = d / "R_101_3x.pth", d / "R_101_3x_bare.pth"
    torch.save({"model": sd}, wrapped)
    torch.save(sd, bare)
    probe = {k: sd[k].clone() for k in ("backbone.fpn_lateral3.weight", "top_layer.bias")}
    del sd
    return wrapped, bare, probe


def test_layout_file_describes_634_tensors(r101_layout):
    sd = random_state_dict_from_layout(r101_layout, seed=0)
    assert len(sd) == R101_TENSORS
    assert sum(v.numel() for v in sd.values()) == R101_VALUES


@pytest.mark.parametrize("which", ["wrapped", "bare"])
def test_r101_layout_loads_strictly(r101_model, r101_files, which):
    wrapped, bare, probe = r101_files
    path = wrapped if which == "wrapped" else bare
    report = load_weights(r101_model, path, strict=True)
    assert isinstance(report, LoadReport)
    assert report.ok, report.summary()
    assert report.coverage == 1.0
    assert report.tensors == R101_TENSORS == report.model_tensors
    assert report.values == R101_VALUES == report.model_values
    assert report.file_bytes == os.path.getsize(path)
    assert "strict match" in report.summary()
    state = r101_model.state_dict()
    for name, value in probe.items():
        assert torch.equal(state[name], value)


def test_small_checkpoint_into_r101_model_is_refused(r101_model):
    path = small_dir() / "model.pth"
    with pytest.raises(CheckpointError) as info:
        load_weights(r101_model, path, strict=True)
    msg = assert_clear_error(info.value, path)
    assert "does not fit this model" in msg.splitlines()[0]
    assert "missing in checkpoint (" in msg
    assert "shape mismatch (name, checkpoint, model) (" in msg
    report = compare_state_dict(r101_model, read_state_dict(path), str(path))
    assert "backbone.bottom_up.res4.22.conv3.weight" in report.missing
    mismatched = {m[0]: m for m in report.shape_mismatches}
    assert mismatched["backbone.fpn_lateral3.weight"][1:] == ((64, 128, 1, 1), (256, 512, 1, 1))
    assert not report.ok
    assert 0.0 < report.coverage < 1.0


def test_r101_layout_into_r50_model_is_refused(r101_files):
    wrapped, _, _ = r101_files
    r50 = build_model(load_config("BlendMask/R_50_3x"))
    with pytest.raises(CheckpointError) as info:
        load_weights(r50, wrapped, strict=True)
    msg = assert_clear_error(info.value, wrapped)
    assert "unexpected in checkpoint" in msg
    assert "backbone.bottom_up.res4.1" in msg  # res4.6 .. res4.22 exist only in R-101
    report = compare_state_dict(r50, read_state_dict(wrapped), str(wrapped))
    assert not report.missing and not report.shape_mismatches
    assert len({k.split(".")[3] for k in report.unexpected}) == 17
    assert all(k.startswith("backbone.bottom_up.res4.") for k in report.unexpected)


# ------------------------------------------------------------------------------------------------
# The small AdelaiDet fixture
# ------------------------------------------------------------------------------------------------


def test_small_fixture_loads_strictly():
    path = small_dir() / "model.pth"
    model = small_model()
    report = load_weights(model, path, strict=True)
    assert report.ok and report.coverage == 1.0, report.summary()
    file_state = read_state_dict(path)
    assert report.tensors == len(file_state) == report.model_tensors
    model_state = model.state_dict()
    for name, value in file_state.items():
        assert torch.equal(model_state[name], value), name


def test_partial_checkpoint_non_strict(tmp_path):
    sd = read_state_dict(small_dir() / "model.pth")
    names = sorted(sd)
    dropped = names[::25]
    reshaped = names[3]
    kept = {k: v for k, v in sd.items() if k not in dropped}
    kept[reshaped] = torch.zeros(tuple(kept[reshaped].shape) + (2,))
    kept["something.extra"] = torch.ones(3)
    path = tmp_path / "partial.pth"
    torch.save({"model": kept}, path)

    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_weights(model, path, strict=True)
    report = load_weights(model, path, strict=False)
    assert not report.ok
    assert sorted(report.missing) == sorted(dropped)
    assert [m[0] for m in report.shape_mismatches] == [reshaped]
    assert report.unexpected == ["something.extra"]
    expected_cov = (len(names) - len(dropped) - 1) / len(names)
    assert report.coverage == pytest.approx(expected_cov)
    assert report.coverage < 1.0
    after = model.state_dict()
    for name in names:
        if name in dropped or name == reshaped:
            assert torch.equal(after[name], before[name]), name
        else:
            assert torch.equal(after[name], sd[name]), name
    summary = report.summary()
    assert "missing in checkpoint" in summary and "unexpected in checkpoint" in summary


# ------------------------------------------------------------------------------------------------
# Unreadable files
# ------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "no such" in assert_clear_error(info.value, path)
    with pytest.raises(CheckpointError):
        load_weights(torch.nn.Linear(1, 1), path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "empty" in assert_clear_error(info.value, path)


def test_truncated_file(tmp_path):
    data = (small_dir() / "model.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "not a loadable PyTorch checkpoint" in assert_clear_error(info.value, path)


def test_text_file_named_pth(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "not a loadable PyTorch checkpoint" in assert_clear_error(info.value, path)


def test_text_file_is_not_reported_as_refused_pickle(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    msg = assert_clear_error(info.value, path)
    assert "refusing to unpickle" not in msg and "pickled objects other than tensors" not in msg


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "expected a state dict" in assert_clear_error(info.value, path)
    path2 = tmp_path / "no_tensors.pth"
    torch.save({"model": {"iteration": 3}}, path2)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path2)
    assert "no tensors" in assert_clear_error(info.value, path2)


# ------------------------------------------------------------------------------------------------
# Pickled code is refused, never executed
# ------------------------------------------------------------------------------------------------


class SomeObject:
    """An arbitrary class instance stored in a checkpoint."""

    def __init__(self):
        self.value = 3


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_pickled_class_instance_is_refused(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"model": {"w": torch.zeros(2), "obj": SomeObject()}}, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    msg = assert_clear_error(info.value, path)
    assert "refusing to unpickle" in msg


@pytest.mark.parametrize("zipfile", [True, False])
def test_pickled_code_is_refused_and_not_executed(tmp_path, zipfile):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2), "x": Payload(marker)}}, path,
               _use_new_zipfile_serialization=zipfile)
    with pytest.raises(CheckpointError) as info:
        load_weights(torch.nn.Linear(2, 1), path, strict=False)
    msg = assert_clear_error(info.value, path)
    assert "refusing to unpickle" in msg
    assert not marker.exists(), "the checkpoint's pickled code ran"
    # the payload is live: an unsafe load would have executed it
    torch.load(path, weights_only=False)
    assert marker.exists()
