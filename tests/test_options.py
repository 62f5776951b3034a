"""InferenceOptions and the switches as data: every field is read where its docs say, every switch
changes the options AND what runs (a switch declared with no effect fails here), recipes are
checked in one place, and the params files' ``extras`` name lists of blendstudy.optimize."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from blendstudy import optimize
from blendstudy.data.images import read_image
from blendstudy.loading import load_pipeline
from blendstudy.options import HOST_FIELDS, InferenceOptions, read_by
from blendstudy.pipeline import Pipeline
from blendstudy.runtime import RuntimeConfig
from conftest import fixture

CPU = torch.device("cpu")
FIELDS = [f.name for f in fields(InferenceOptions)]


@pytest.fixture(autouse=True)
def avx512_cpu(monkeypatch):
    """As on a CPU with AVX-512: the bf16 switches are applied, not skipped."""
    from blendstudy import device as devmod

    monkeypatch.setattr(devmod, "cpu_capability", lambda: "AVX512")


# ---- the record -----------------------------------------------------------------------------------


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = inspect.getattr_static(obj, attr)
        return obj.fget if isinstance(obj, property) else obj
    raise ImportError(dotted)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_read_where_its_metadata_says(name):
    code = inspect.getsource(_resolve(read_by(name)))
    assert f".{name}" in code, f"{read_by(name)} does not read options.{name}"


def test_the_defaults_are_adelaidets_and_the_record_is_frozen():
    opts = InferenceOptions()
    assert opts.changed() == {}
    with pytest.raises(FrozenInstanceError):
        opts.resize = "device"  # type: ignore[misc]


@pytest.mark.parametrize("bad", [{"resize": "gpu"}, {"decode": "fast"}, {"dtype": "int8"}, {"blend_chunk": 0},
                                 {"blend_upsample": "cubic"}, {"half_parts": ("head",)}, {"compile_targets": ("x",)},
                                 {"recompile_limit": 0}, {"dtype": "bfloat16", "half_parts": ("backbone",)}])
def test_invalid_options_are_refused(bad):
    with pytest.raises(ValueError):
        InferenceOptions(**bad)


def test_every_field_is_set_by_some_switch():
    set_by = {name for s in optimize.SWITCHES.values() for name in s.sets}
    assert set(FIELDS) == set_by
    assert set(HOST_FIELDS) <= set(FIELDS)


def test_host_switches_are_derived_from_what_they_set():
    assert set(optimize.HOST_SWITCHES) == {"device_resize", "sync_free_decode", "runtime", "pad64", "raw_masks",
                                           "blend_matmul", "blend_chunks"}


# ---- recipes checked in one place ---------------------------------------------------------------


def test_recipe_options_compose_the_switches():
    opts, skipped = optimize.recipe_options("p4", CPU)
    assert skipped == {}
    assert opts.changed() == {"resize": "device", "decode": "sync_free", "runtime": True,
                              "compile_targets": ("backbone",), "pad_multiple": optimize.PAD_MULTIPLE,
                              "recompile_limit": optimize.RECOMPILE_LIMIT}
    both, _ = optimize.recipe_options(["mixed_half", "half_towers", "compile_backbone", "compile_model"], CPU)
    assert both.half_parts == ("backbone", "basis_module", "tower_convs") and both.half_dtype == "bfloat16"
    assert both.compile_targets == ("backbone", "proposal_generator", "basis_module")
    assert optimize.recipe_options(["half"], torch.device("cuda"))[0].dtype == "float16"


def test_recipe_options_refuse_unknown_and_exclusive_and_skip_unsupported(monkeypatch):
    from blendstudy import device as devmod

    with pytest.raises(ValueError, match="warp"):
        optimize.recipe_options("p4+warp", CPU)
    with pytest.raises(ValueError, match="exclude each other"):
        optimize.recipe_options(["half_towers", "half"], CPU)
    monkeypatch.setattr(devmod, "cpu_capability", lambda: "AVX2")
    opts, skipped = optimize.recipe_options(["half", "channels_last"], CPU)
    assert "no AVX-512" in skipped["half"] and opts.dtype == "float32" and opts.channels_last
    assert "contiguous" in devmod.unsupported_switch("npu", "channels_last")


# ---- every switch does something ----------------------------------------------------------------


class _Trace(TorchFunctionMode):
    """The torch calls of a run with their tensors' dtype, shape and layout."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        self.calls.append((getattr(func, "__name__", repr(func)),
                           tuple((t.dtype, tuple(t.shape), t.is_contiguous()) for t in tensors)))
        return func(*args, **kwargs)


def _what_runs(pipe: Pipeline, image) -> tuple:
    """The model's structure (modules, parameter dtypes and layouts), what building did and, unless a
    part is compiled (not run in a unit test), every torch call of one image."""
    structure = ([(n, type(m).__name__) for n, m in pipe.model.named_modules()],
                 [(n, p.dtype, p.is_contiguous()) for n, p in pipe.model.named_parameters()])
    done = sorted(k for k in pipe.recipe_info if k != "switches")
    if "compile" in pipe.recipe_info:
        return structure, done, None
    trace = _Trace()
    with torch.no_grad(), trace:
        pipe(image)
    return structure, done, trace.calls


@pytest.fixture(scope="module")
def small():
    root = fixture("adelaidet_blendmask_small")
    torch.manual_seed(0)
    loaded = load_pipeline(root / "config.yaml", str(root / "model.pth"), "cpu", warn_random=False)
    base = Pipeline(loaded.pipeline.model, 256, 400)
    image = read_image(fixture("adelaidet_blendmask_small", "images") / "img0.png")
    return base, image


@pytest.fixture(scope="module")
def baseline_runs(small):
    base, image = small
    return _what_runs(optimize.build_pipeline(base, [], runtime=RuntimeConfig("noop")), image)


def _effect(small, baseline_runs, name: str) -> str:
    """'' when the switch changes both the options and what runs, else what it fails to change."""
    base, image = small
    opts, skipped = optimize.recipe_options([name], CPU)
    if skipped:
        return f"skipped here: {skipped}"
    if opts == InferenceOptions():
        return "it changes no option"
    if _what_runs(optimize.build_pipeline(base, [name], runtime=RuntimeConfig("noop")), image) == baseline_runs:
        return f"it sets {opts.changed()} but nothing that runs changes"
    return ""


@pytest.mark.parametrize("name", sorted(optimize.SWITCHES))
def test_every_switch_changes_the_options_and_what_runs(small, baseline_runs, name, dynamo_limit):
    assert _effect(small, baseline_runs, name) == ""


def test_a_switch_declared_without_an_effect_fails(small, baseline_runs, monkeypatch):
    fake = {"nothing": optimize.Switch("nothing", "extra", "declared, no option"),
            # an option that changes nothing on these images: fewer detections than the chunk
            "idle": optimize.Switch("idle", "extra", "declared, no effect", {"blend_chunk": 10 ** 6})}
    monkeypatch.setattr(optimize, "SWITCHES", {**optimize.SWITCHES, **fake})
    assert _effect(small, baseline_runs, "nothing") == "it changes no option"
    assert _effect(small, baseline_runs, "idle").endswith("but nothing that runs changes")


def test_the_options_reach_the_model_at_construction():
    from blendstudy.config import load_config
    from blendstudy.model import build_model

    opts = InferenceOptions(lazy_attention=True, blend_upsample="matmul", blend_chunk=8)
    model = build_model(load_config("BlendMask/Tiny_synthetic"), opts)
    assert model.options is opts and model.lazy_attention
    assert (model.blender.upsample, model.blender.chunk) == ("matmul", 8)
    copy = model.with_options(InferenceOptions())
    assert not copy.lazy_attention and (copy.blender.upsample, copy.blender.chunk) == ("interpolate", None)
    assert copy.top_layer.weight is not model.top_layer.weight
    assert torch.equal(copy.top_layer.weight, model.top_layer.weight)
    assert torch.equal(copy.pixel_mean, model.pixel_mean) and copy.input_format == model.input_format


# ---- the extras of the params files -------------------------------------------------------------


def test_named_extras_are_recipes_and_lists_still_work():
    for name, recipes in optimize.EXTRA_RECIPES.items():
        assert optimize.extra_recipes(name) == recipes
        assert all(optimize.recipe_switches(r) for r in recipes if r != "baseline")
    assert optimize.extra_recipes(["p4+fold_bn"]) == ["p4+fold_bn"]
    assert optimize.extra_recipes(None) == [] == optimize.extra_recipes([])
    with pytest.raises(ValueError, match="named lists"):
        optimize.extra_recipes("nope")
    with pytest.raises(ValueError, match="warp"):
        optimize.extra_recipes(["p4+warp"])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "params").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_params_files_extras_resolve(path):
    import yaml

    extras = (yaml.safe_load(path.read_text()) or {}).get("extras", [])  # a file without: its _BASE_'s
    assert isinstance(optimize.extra_recipes(extras), list)
