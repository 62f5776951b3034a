"""The native BlendMask against AdelaiDet's real outputs (tests/fixtures), through `predict`."""

import json

import numpy as np
import pytest
import torch

from blendstudy.cli import main
from blendstudy.coco.rle import decode_rle
from blendstudy.ops import box_iou
from conftest import fixture

FIXTURE = fixture("adelaidet_blendmask_small")


def _match(exp, got):
    """Index in `got` for each expected instance: same class, best box IoU, closest score."""
    eb, gb = torch.tensor(exp["boxes"]).reshape(-1, 4), torch.tensor(got["boxes"]).reshape(-1, 4)
    ec, gc = torch.tensor(exp["classes"]), torch.tensor(got["classes"])
    es, gs = torch.tensor(exp["scores"]), torch.tensor(got["scores"])
    cost = box_iou(eb, gb) - 10.0 * (ec[:, None] != gc[None]).float() - 1e-3 * (es[:, None] - gs[None]).abs()
    order = torch.argsort(es, descending=True)
    taken, match = set(), {}
    for i in order.tolist():
        for j in torch.argsort(cost[i], descending=True).tolist():
            if j not in taken:
                taken.add(j)
                match[i] = j
                break
    return match


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity") / "pred.json"
    rc = main(["predict", "--config", str(FIXTURE / "config.yaml"), "--weights", str(FIXTURE / "model.pth"),
               "--device", "cpu", "--output-json", str(out), "--quiet", str(FIXTURE / "images")])
    assert rc == 0
    return json.loads(out.read_text())


def test_same_instances_boxes_scores_classes_masks(predicted):
    expected = json.loads((FIXTURE / "expected.json").read_text())["images"]
    assert sorted(predicted["images"]) == sorted(expected)
    for name, exp in expected.items():
        got = predicted["images"][name]
        assert (got["height"], got["width"]) == (exp["height"], exp["width"])
        assert len(got["boxes"]) == len(exp["boxes"]), name
        match = _match(exp, got)
        assert len(match) == len(exp["boxes"])
        em = decode_rle(exp["masks_rle"], (exp["height"], exp["width"]))
        gm = decode_rle(got["masks_rle"], (got["height"], got["width"]))
        for i, j in match.items():
            assert got["classes"][j] == exp["classes"][i], (name, i)
            np.testing.assert_allclose(got["boxes"][j], exp["boxes"][i], atol=0.01, rtol=0)
            assert abs(got["scores"][j] - exp["scores"][i]) <= 1e-4, (name, i)
            union = (em[i] | gm[j]).sum()
            iou = (em[i] & gm[j]).sum() / union if union else 1.0
            assert iou >= 0.99, (name, i, iou)
