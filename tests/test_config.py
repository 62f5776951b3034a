"""Tests for blendstudy.config: AdelaiDet/detectron2 YAML config loading."""

import copy
import pickle
from pathlib import Path

import pytest
import yaml

from blendstudy.config import (
    CONFIGS_DIR,
    Config,
    ConfigError,
    check_supported,
    list_shipped_configs,
    load_config,
    load_defaults,
)

EXPECTED_SHIPPED = {
    "BlendMask/R_50_1x",
    "BlendMask/R_50_3x",
    "BlendMask/R_101_3x",
    "BlendMask/R_101_dcni3_5x",
    "BlendMask/550_R_50_3x",
    "BlendMask/RT_R_50_4x_syncbn_shtw",
    "BlendMask/RT_R_50_4x_bn-head_syncbn_shtw",
}
#: configs of our own (not upstream): the embedded default's small model
OWN_CONFIGS = {"BlendMask/Tiny_synthetic"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_list_shipped_configs():
    names = list_shipped_configs()
    assert set(names) == EXPECTED_SHIPPED | OWN_CONFIGS
    assert names == sorted(names)
    bases = set(list_shipped_configs(include_bases=True)) - set(names)
    assert bases == {"BlendMask/Base-BlendMask", "BlendMask/Base-550", "BlendMask/Base-RT"}


@pytest.mark.parametrize("name", sorted(EXPECTED_SHIPPED))
def test_shipped_configs_load(name):
    cfg = load_config(name)
    assert cfg.MODEL.META_ARCHITECTURE == "BlendMask"
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "FCOS"
    assert load_config(name + ".yaml") == cfg


def test_dcni_config_loads_with_deformable_stages():
    cfg = load_config("BlendMask/R_101_dcni3_5x")
    assert cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE == [False, True, True, True]
    assert cfg.MODEL.RESNETS.DEFORM_MODULATED is True and cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS == 1
    assert cfg.MODEL.RESNETS.DEFORM_INTERVAL == 3 and cfg.INPUT.CROP.ENABLED is True
    # still refused: deformable stages on a basic-block ResNet (detectron2 asserts the same)
    with pytest.raises(ConfigError, match="MODEL.RESNETS.DEFORM_ON_PER_STAGE") as info:
        load_config("BlendMask/R_101_dcni3_5x", {"MODEL.RESNETS.DEPTH": 34, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64})
    assert "R_101_dcni3_5x.yaml" in str(info.value) and "bottleneck" in str(info.value)


def test_r101_3x_upstream_values():
    cfg = load_config("BlendMask/R_101_3x")
    assert cfg.MODEL.RESNETS.DEPTH == 101
    assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
    assert cfg.SOLVER.STEPS == [210000, 250000] and cfg.SOLVER.MAX_ITER == 270000
    assert cfg.SOLVER.BASE_LR == 0.01 and cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.INPUT.MIN_SIZE_TRAIN == [640, 672, 704, 736, 768, 800]
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    assert cfg.MODEL.PIXEL_MEAN == [103.53, 116.28, 123.675] and cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res3", "res4", "res5"]
    assert cfg.MODEL.FCOS.THRESH_WITH_CTR is True and cfg.MODEL.FCOS.USE_SCALE is False
    assert cfg.MODEL.FCOS.INFERENCE_TH_TEST == 0.05 and cfg.MODEL.FCOS.NMS_TH == 0.6
    assert cfg.MODEL.BASIS_MODULE.LOSS_ON is True
    assert cfg.MODEL.BLENDMASK.ATTN_SIZE == 14 and cfg.MODEL.BLENDMASK.BOTTOM_RESOLUTION == 56
    assert cfg.DATASETS.TEST == ["coco_2017_val"]
    assert cfg.OUTPUT_DIR == "output/blendmask/R_101_3x"


def test_550_and_rt_chains():
    c550 = load_config("BlendMask/550_R_50_3x")
    assert (c550.INPUT.MIN_SIZE_TEST, c550.INPUT.MAX_SIZE_TEST) == (550, 916)
    assert c550.MODEL.FCOS.TOP_LEVELS == 1 and c550.MODEL.FCOS.FPN_STRIDES == [8, 16, 32, 64]
    assert c550.SOLVER.STEPS == [210000, 250000]
    rt = load_config("BlendMask/RT_R_50_4x_bn-head_syncbn_shtw")
    assert rt.MODEL.FCOS.NORM == "SyncBN" and rt.MODEL.RESNETS.NORM == "SyncBN"
    assert rt.MODEL.FCOS.TOP_LEVELS == 0 and rt.MODEL.FCOS.IN_FEATURES == ["p3", "p4", "p5"]
    assert (rt.INPUT.MIN_SIZE_TEST, rt.INPUT.MAX_SIZE_TEST) == (512, 736)
    assert rt.MODEL.BACKBONE.FREEZE_AT == -1 and rt.SOLVER.MAX_ITER == 360000
    assert load_config("BlendMask/RT_R_50_4x_syncbn_shtw").MODEL.FCOS.NORM == "GN"


def test_fixture_config_loads_and_matches_dump(fixtures_dir):
    path = fixtures_dir / "adelaidet_blendmask_small" / "config.yaml"
    cfg = load_config(str(path))
    assert cfg.MODEL.RESNETS.WIDTH_PER_GROUP == 16
    assert cfg.MODEL.FPN.OUT_CHANNELS == 64
    # A full AdelaiDet dump: every key is known and nothing is added or changed on load.
    assert cfg.to_dict() == yaml.safe_load(path.read_text())


def test_defaults_are_adelaidet_defaults():
    d = load_defaults()
    assert d.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert d.MODEL.FCOS.TOP_LEVELS == 2 and d.MODEL.FCOS.NORM == "GN"
    assert d.MODEL.BASIS_MODULE.NORM == "SyncBN" and d.MODEL.TOP_MODULE.DIM == 16
    assert d.SOLVER.WEIGHT_DECAY_BIAS is None and d.GLOBAL.HACK == 1.0
    assert d.FLOAT32_PRECISION == ""


def test_config_object():
    cfg = load_config("BlendMask/R_50_1x")
    assert isinstance(cfg.MODEL.FCOS, Config) and cfg["MODEL"]["FCOS"] is cfg.MODEL.FCOS
    with pytest.raises(AttributeError):
        _ = cfg.MODEL.NOPE
    with pytest.raises(TypeError):
        cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(TypeError):
        cfg["SEED"] = 1
    plain = cfg.to_dict()
    assert type(plain) is dict and type(plain["MODEL"]) is dict and plain == cfg
    plain["MODEL"]["DEVICE"] = "cpu"
    assert cfg.MODEL.DEVICE == "cuda"
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg
    assert yaml.safe_load(cfg.dump()) == cfg.to_dict()
    derived = cfg.with_overrides({"MODEL.DEVICE": "cpu"})
    assert derived.MODEL.DEVICE == "cpu" and cfg.MODEL.DEVICE == "cuda"


def test_dump_round_trips(tmp_path):
    cfg = load_config("BlendMask/550_R_50_3x", ["MODEL.DEVICE", "cpu"])
    path = _write(tmp_path / "dumped.yaml", cfg.dump())
    assert load_config(str(path)) == cfg


def test_unknown_key_names_dotted_key_and_file(tmp_path):
    path = _write(tmp_path / "bad_key.yaml", "MODEL:\n  FCOS:\n    NUM_CLASSESS: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    msg = str(info.value)
    assert "MODEL.FCOS.NUM_CLASSESS" in msg and "bad_key.yaml" in msg
    assert "MODEL.FCOS.NUM_CLASSES" in msg.split("did you mean")[1]
    assert info.value.key == "MODEL.FCOS.NUM_CLASSESS"


@pytest.mark.parametrize(
    "body, key",
    [
        ("MODEL:\n  PIXEL_MEAN: 103.5\n", "MODEL.PIXEL_MEAN"),  # scalar for list
        ("MODEL:\n  FCOS:\n    NUM_CLASSES: eighty\n", "MODEL.FCOS.NUM_CLASSES"),  # str for int
        ("MODEL:\n  FCOS:\n    NUM_CLASSES: 1.5\n", "MODEL.FCOS.NUM_CLASSES"),  # float for int
        ("MODEL:\n  MASK_ON: 1\n", "MODEL.MASK_ON"),  # int for bool
        ("MODEL:\n  WEIGHTS: [a]\n", "MODEL.WEIGHTS"),  # list for str
        ("MODEL:\n  FCOS: 3\n", "MODEL.FCOS"),  # scalar for a sub-tree
        (
            "MODEL:\n  RESNETS:\n    DEFORM_ON_PER_STAGE: [0, 0, 0, 0]\n",
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE[0]",
        ),
    ],
)
def test_type_mismatch(tmp_path, body, key):
    path = _write(tmp_path / "bad_type.yaml", body)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert key in str(info.value) and "bad_type.yaml" in str(info.value)


def test_int_accepted_for_float(tmp_path):
    path = _write(tmp_path / "ints.yaml", "MODEL:\n  PIXEL_STD: [1, 2, 3]\n  FCOS:\n    NMS_TH: 1\n")
    cfg = load_config(str(path), check=False)
    assert cfg.MODEL.PIXEL_STD == [1.0, 2.0, 3.0] and isinstance(cfg.MODEL.FCOS.NMS_TH, float)


def test_override_forms():
    as_list = load_config(
        "BlendMask/R_101_3x",
        [
            "MODEL.FCOS.INFERENCE_TH_TEST",
            "0.3",
            "INPUT.MIN_SIZE_TEST",
            "600",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.BLENDMASK.VISUALIZE",
            "false",
            "SOLVER.STEPS",
            "(1, 2)",
        ],
    )
    assert as_list.MODEL.FCOS.INFERENCE_TH_TEST == 0.3 and as_list.INPUT.MIN_SIZE_TEST == 600
    assert as_list.MODEL.DEVICE == "cpu" and as_list.SOLVER.STEPS == [1, 2]
    as_dict = load_config(
        "BlendMask/R_101_3x", {"MODEL.FCOS.INFERENCE_TH_TEST": 0.3, "INPUT.MIN_SIZE_TEST": 600}
    )
    assert as_dict.MODEL.FCOS.INFERENCE_TH_TEST == 0.3 and as_dict.INPUT.MIN_SIZE_TEST == 600
    nested = load_config("BlendMask/R_101_3x", {"MODEL.FCOS": {"NMS_TH": 0.5}})
    assert nested.MODEL.FCOS.NMS_TH == 0.5 and nested.MODEL.FCOS.NUM_CLASSES == 80


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["MODEL.FCOS.NOPE", "1"], "MODEL.FCOS.NOPE"),
        (["MODEL.FCOS.NUM_CLASSES"], "odd length"),
        ({"MODEL.FCOS.NUM_CLASSES": "many"}, "MODEL.FCOS.NUM_CLASSES"),
        ({"MODEL.RESNETS.DEPTH": 152}, "MODEL.RESNETS.DEPTH=152"),  # known key, unsupported value
    ],
)
def test_bad_overrides(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config("BlendMask/R_50_1x", overrides)
    assert needle in str(info.value) and "R_50_1x.yaml" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="BlendMask/R_999_1x"):
        load_config("BlendMask/R_999_1x")
    path = _write(tmp_path / "child.yaml", '_BASE_: "missing-base.yaml"\n')
    with pytest.raises(ConfigError, match=r"child\.yaml.*missing-base\.yaml"):
        load_config(str(path))


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path / "broken.yaml", "MODEL:\n  FCOS: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*invalid YAML"):
        load_config(str(path))
    path = _write(tmp_path / "scalar.yaml", "just a string\n")
    with pytest.raises(ConfigError, match=r"scalar\.yaml"):
        load_config(str(path))


def test_base_chain_in_tmp_dir(tmp_path):
    (tmp_path / "bases").mkdir()
    _write(
        tmp_path / "bases" / "root.yaml",
        "MODEL:\n"
        '  META_ARCHITECTURE: "BlendMask"\n'
        '  BACKBONE:\n    NAME: "build_fcos_resnet_fpn_backbone"\n'
        '  PROPOSAL_GENERATOR:\n    NAME: "FCOS"\n'
        '  RESNETS:\n    OUT_FEATURES: ["res3", "res4", "res5"]\n'
        '  FPN:\n    IN_FEATURES: ["res3", "res4", "res5"]\n'
        "  PANOPTIC_FPN:\n    COMBINE:\n      ENABLED: False\n"
        "  FCOS:\n    NMS_TH: 0.5\nSOLVER:\n  STEPS: (10, 20)\n",
    )
    _write(tmp_path / "bases" / "mid.yaml", '_BASE_: "root.yaml"\nMODEL:\n  FCOS:\n    NMS_TH: 0.4\n')
    leaf = _write(tmp_path / "leaf.yaml", '_BASE_: "bases/mid.yaml"\nMODEL:\n  RESNETS:\n    DEPTH: 34\n')
    cfg = load_config(str(leaf))
    assert cfg.MODEL.FCOS.NMS_TH == 0.4 and cfg.MODEL.RESNETS.DEPTH == 34
    assert cfg.SOLVER.STEPS == [10, 20] and cfg.MODEL.FCOS.NUM_CLASSES == 80
    # An error inside a base names the base file.
    _write(tmp_path / "bases" / "mid.yaml", '_BASE_: "root.yaml"\nMODEL:\n  FCOS:\n    NMS: 0.4\n')
    with pytest.raises(ConfigError, match=r"bases/mid\.yaml: unknown config key MODEL\.FCOS\.NMS"):
        load_config(str(leaf))
    # Cycles are reported, not recursed forever.
    _write(tmp_path / "bases" / "root.yaml", '_BASE_: "../leaf.yaml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(leaf))


def test_check_supported_directly():
    cfg = load_config("BlendMask/R_50_1x")
    check_supported(cfg, "R_50_1x.yaml")
    bad = cfg.with_overrides(
        {"MODEL.FCOS.USE_DEFORMABLE": True, "MODEL.BASIS_MODULE.NAME": "Other", "INPUT.FORMAT": "L"},
        check=False,
    )
    with pytest.raises(ConfigError) as info:
        check_supported(bad, "custom.yaml")
    msg = str(info.value)
    assert msg.startswith("custom.yaml: ")
    for key in ("MODEL.FCOS.USE_DEFORMABLE", "MODEL.BASIS_MODULE.NAME", "INPUT.FORMAT"):
        assert key in msg
    inconsistent = cfg.with_overrides({"MODEL.FCOS.FPN_STRIDES": [8, 16]}, check=False)
    with pytest.raises(ConfigError, match="MODEL.FCOS.FPN_STRIDES"):
        check_supported(inconsistent, "x.yaml")
    with pytest.raises(ConfigError, match="MODEL.META_ARCHITECTURE"):
        check_supported(load_defaults(), "defaults.yaml")


def test_package_data_layout():
    assert (CONFIGS_DIR / "defaults.yaml").is_file()
    for name in EXPECTED_SHIPPED:
        assert (CONFIGS_DIR / (name + ".yaml")).is_file()
