"""Tests of blendstudy.data: image reader, file listing, COCO dataset wrapper, synthetic generator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools import mask as mask_util

from blendstudy.data import (
    SHAPES,
    CocoDataset,
    DatasetError,
    ImageFolder,
    ImageReadError,
    SyntheticConfig,
    generate_synthetic_coco,
    list_images,
    read_image,
    render_synthetic_image,
    write_bad_images,
)

# pycocotools' decode (annToMask) warns under numpy >= 2; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _reference_bgr(path: Path) -> np.ndarray:
    """detectron2 semantics written with PIL's own EXIF helper: transpose, convert RGB, flip to BGR."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[:, :, ::-1]


def _tree_digest(root: Path) -> Dict[str, str]:
    """sha256 of every file under root, keyed by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Dict[str, Path]:
    return write_bad_images(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    """8 images of 240x320 with 4..8 objects: occlusion, rings and polygons all occur."""
    out = tmp_path_factory.mktemp("syn")
    return generate_synthetic_coco(out, 8, seed=3, image_size=[(240, 320), (200, 180)], objects_per_image=(4, 8))


# ---------------------------------------------------------------------------------------------- read_image


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "not_image"])
def test_read_image_bad_inputs_raise_with_path(bad, kind):
    with pytest.raises(ImageReadError) as info:
        read_image(bad[kind])
    msg = str(info.value)
    assert msg.startswith(f"{bad[kind]}: ")
    assert "\n" not in msg
    assert info.value.path == str(bad[kind])
    assert isinstance(info.value, ValueError)


def test_read_image_messages_say_what_is_wrong(bad, tmp_path):
    assert "no such file" in str(pytest.raises(ImageReadError, read_image, bad["missing"]).value)
    assert "empty" in str(pytest.raises(ImageReadError, read_image, bad["empty"]).value)
    assert "truncated" in str(pytest.raises(ImageReadError, read_image, bad["truncated"]).value)
    assert "not a recognised image" in str(pytest.raises(ImageReadError, read_image, bad["not_image"]).value)
    assert "not a regular file" in str(pytest.raises(ImageReadError, read_image, tmp_path).value)


def test_read_image_rejects_unknown_format(bad):
    with pytest.raises(ValueError, match="format"):
        read_image(bad["gray"], format="YUV")


@pytest.mark.parametrize("kind", ["gray", "rgba", "palette", "gray16", "exif_rotated"])
def test_read_image_matches_detectron2_semantics(bad, kind):
    img = read_image(bad[kind])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.flags.c_contiguous
    np.testing.assert_array_equal(img, _reference_bgr(bad[kind]))
    rgb = read_image(bad[kind], format="RGB")
    np.testing.assert_array_equal(rgb, img[:, :, ::-1])


def test_read_image_odd_modes_values(bad):
    gray = read_image(bad["gray"])
    assert gray.shape == (24, 32, 3)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    np.testing.assert_array_equal(gray[0, :, 0], np.arange(32) * 8)

    rgba = read_image(bad["rgba"], format="RGB")  # alpha dropped, not composited
    assert rgba.shape == (16, 16, 3)
    assert rgba[0, 0].tolist() == [10, 20, 30] and rgba[0, 15].tolist() == [200, 100, 50]

    pal = read_image(bad["palette"], format="RGB")
    assert pal[0, 0].tolist() == [255, 0, 0] and pal[0, 15].tolist() == [0, 0, 255]

    g16 = read_image(bad["gray16"])  # PIL clips 16-bit values to 0..255
    assert g16.shape == (1, 6, 3)
    assert g16[0, :, 0].tolist() == [0, 100, 255, 255, 255, 255]


def test_read_image_applies_exif_orientation(bad):
    with Image.open(bad["exif_rotated"]) as im:
        assert im.size == (60, 40)  # stored W x H
    rgb = read_image(bad["exif_rotated"], format="RGB").astype(int)
    assert rgb.shape == (60, 40, 3)  # H and W swapped
    expect = {(10, 10): (0, 0, 255), (10, 30): (255, 0, 0), (50, 10): (255, 255, 255), (50, 30): (0, 255, 0)}
    for (y, x), colour in expect.items():
        assert np.abs(rgb[y, x] - np.array(colour)).max() <= 8, (y, x, rgb[y, x])


# ---------------------------------------------------------------------------------------------- list_images


def test_list_images(tmp_path, bad):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ["b.jpg", "A.PNG", "c.TIFF", "d.webp", "notes.txt", ".hidden.jpg", "e.jpeg"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub.png").mkdir()
    odd = tmp_path / "odd.dat"
    odd.write_bytes(b"x")
    got = list_images([odd, folder])
    assert got == [odd] + [folder / n for n in ["A.PNG", "b.jpg", "c.TIFF", "d.webp", "e.jpeg"]]
    assert list_images(str(folder)) == got[1:]
    with pytest.raises(ImageReadError, match="nope"):
        list_images([folder, tmp_path / "nope"])

    iterated = list(ImageFolder(folder))
    assert len(ImageFolder(folder)) == 5
    assert iterated[0] == ("A.PNG", folder / "A.PNG")


# ---------------------------------------------------------------------------------------------- CocoDataset


def test_coco_dataset_mapping(small_ds):
    ds = CocoDataset(small_ds.ann_file, small_ds.image_dir)
    assert len(ds) == 8 and ds.image_ids == list(range(1, 9))
    assert ds.category_ids == list(range(1, len(SHAPES) + 1))
    assert ds.class_names == list(SHAPES)
    for cid in ds.category_ids:
        assert ds.contiguous_to_category_id[ds.category_id_to_contiguous[cid]] == cid
    assert sorted(ds.category_id_to_contiguous.values()) == list(range(len(SHAPES)))
    assert ds.subset(3) == [1, 2, 3] and ds.subset(None) == ds.image_ids and ds.subset(100) == ds.image_ids
    info = ds.image_info(2)
    assert ds.image_path(2) == small_ds.image_dir / info["file_name"] and ds.image_path(2).is_file()
    assert read_image(ds.image_path(2)).shape[:2] == (info["height"], info["width"])
    assert all(a["image_id"] == 2 for a in ds.annotations(2))
    with pytest.raises(KeyError):
        ds.image_info(999)


def test_coco_dataset_errors(tmp_path, small_ds):
    with pytest.raises(DatasetError, match="missing.json"):
        CocoDataset(tmp_path / "missing.json", small_ds.image_dir)
    with pytest.raises(DatasetError, match="no_images"):
        CocoDataset(small_ds.ann_file, tmp_path / "no_images")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(DatasetError, match="broken.json.*malformed JSON"):
        CocoDataset(broken, small_ds.image_dir)
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DatasetError, match="wrong.json"):
        CocoDataset(wrong, small_ds.image_dir)


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_byte_identical_per_seed(tmp_path):
    kwargs = dict(image_size=(96, 128), objects_per_image=(2, 5))
    a = generate_synthetic_coco(tmp_path / "a", 3, seed=7, **kwargs)
    b = generate_synthetic_coco(tmp_path / "b", 3, seed=7, **kwargs)
    c = generate_synthetic_coco(tmp_path / "c", 3, seed=8, **kwargs)
    da, db, dc = _tree_digest(a.root), _tree_digest(b.root), _tree_digest(c.root)
    assert len(da) == 4 and da == db
    assert set(da) == set(dc)
    assert all(da[k] != dc[k] for k in da)
    # image i depends on (seed, i) only, not on how many images are generated
    d = generate_synthetic_coco(tmp_path / "d", 1, seed=7, **kwargs)
    assert _tree_digest(d.image_dir) == {k.split("/", 1)[1]: v for k, v in da.items() if k.startswith("train/")
                                         and k.endswith("000001.png")}
    with pytest.raises(FileExistsError):
        generate_synthetic_coco(tmp_path / "a", 3, seed=7, **kwargs)
    generate_synthetic_coco(tmp_path / "a", 2, seed=7, overwrite=True, **kwargs)
    assert sorted(p.name for p in a.image_dir.iterdir()) == ["000001.png", "000002.png"]


def test_synthetic_annotations_match_painted_pixels(small_ds):
    ds = CocoDataset(small_ds.ann_file, small_ds.image_dir)
    data = json.loads(small_ds.ann_file.read_text(encoding="utf-8"))
    assert [c["supercategory"] for c in data["categories"]] == ["shape"] * len(SHAPES)
    kinds = {"polygon": 0, "rle": 0}
    occluded = 0
    for index, image_id in enumerate(ds.image_ids):
        rendered = small_ds.render(index)
        info = ds.image_info(image_id)
        np.testing.assert_array_equal(read_image(ds.image_path(image_id), format="RGB"), rendered.image)
        anns = ds.annotations(image_id)
        assert len(anns) == len(rendered.annotations) >= 1
        assert rendered.label_map.shape == (info["height"], info["width"])
        for k, (ann, shape, full_area) in enumerate(zip(anns, rendered.shapes, rendered.full_areas), start=1):
            painted = rendered.label_map == k
            decoded = ds.coco.annToMask(ann).astype(bool)
            np.testing.assert_array_equal(decoded, painted)  # exact, pixel for pixel
            assert ann["iscrowd"] == 0 and ann["area"] == int(painted.sum())
            rle = mask_util.encode(np.asfortranarray(painted.astype(np.uint8)))
            assert ann["bbox"] == mask_util.toBbox(rle).astype(int).tolist()
            assert ann["area"] >= max(32, 0.3 * full_area)
            assert ds.class_names[ds.category_id_to_contiguous[ann["category_id"]]] == shape
            if isinstance(ann["segmentation"], list):
                kinds["polygon"] += 1
                assert shape != "ring" and ann["area"] == full_area
            else:
                kinds["rle"] += 1
                assert isinstance(ann["segmentation"]["counts"], str)
                assert shape == "ring" or ann["area"] < full_area
                occluded += ann["area"] < full_area
    assert kinds["polygon"] > 0 and kinds["rle"] > 0 and occluded > 0


def test_synthetic_without_occlusion_and_class_subset(tmp_path):
    cfg = SyntheticConfig(image_sizes=((160, 160),), objects_per_image=(5, 5), classes=("star", "ring"),
                          occlusion=False)
    for index in range(3):
        r = render_synthetic_image(1, index, cfg)
        assert r.full_areas == [a["area"] for a in r.annotations]  # nothing covered
        assert set(r.shapes) <= {"star", "ring"}
        for shape, ann in zip(r.shapes, r.annotations):
            assert isinstance(ann["segmentation"], list) == (shape == "star")
    with pytest.raises(ValueError, match="unknown shape"):
        SyntheticConfig(classes=("blob",))


def test_synthetic_object_sizes_and_colours():
    cfg = SyntheticConfig(objects_per_image=(6, 6))
    areas, colours = [], {}
    for index in range(6):
        r = render_synthetic_image(0, index, cfg)
        for k, (shape, full) in enumerate(zip(r.shapes, r.full_areas), start=1):
            areas.append(full)
            colours.setdefault(shape, []).append(r.image[r.label_map == k].mean(axis=0))
    areas = np.array(areas)
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas < 96 ** 2)).any() and (areas >= 96 ** 2).any()
    spread = [np.ptp(np.array(c), axis=0).max() for c in colours.values() if len(c) >= 2]
    assert spread and max(spread) > 60  # the same class comes in very different colours


def test_synthetic_large_image(tmp_path):
    ds = generate_synthetic_coco(tmp_path / "big", 1, seed=0, image_size=(2304, 3840), objects_per_image=(3, 3))
    coco = CocoDataset(ds.ann_file, ds.image_dir)
    info = coco.image_info(1)
    assert (info["height"], info["width"]) == (2304, 3840)
    rendered = ds.render(0)
    anns = coco.annotations(1)
    assert len(anns) == 3
    for k, ann in enumerate(anns, start=1):
        np.testing.assert_array_equal(coco.coco.annToMask(ann).astype(bool), rendered.label_map == k)
    assert max(a["area"] for a in anns) > 96 ** 2
