"""blendstudy.loading: a model without a checkpoint, initialised as AdelaiDet does or so that it detects."""

from __future__ import annotations

import numpy as np
import pytest

from blendstudy.data.synthetic import render_synthetic_image
from blendstudy.loading import RANDOM_INITS, load_pipeline


def _image() -> np.ndarray:
    return np.ascontiguousarray(render_synthetic_image(1, 0).image[:, :, ::-1])


def test_the_detecting_random_init_gives_the_post_nms_load():
    """AdelaiDet's initialisation (classifier prior 0.01) leaves nothing above the 0.05 threshold;
    "detecting" leaves POST_NMS_TOPK_TEST instances with boxes of positive size, and is seeded."""
    plain = load_pipeline("BlendMask/Tiny_synthetic", None, "cpu", warn_random=False)
    busy = load_pipeline("BlendMask/Tiny_synthetic", None, "cpu", warn_random=False, random_init="detecting")
    top_k = busy.pipeline.model.proposal_generator.settings.post_nms_topk
    a, b = plain.pipeline(_image()), busy.pipeline(_image())
    assert len(a.boxes) == 0 and len(b.boxes) == top_k
    assert bool(((b.boxes[:, 2:] - b.boxes[:, :2]) > 0).all())
    again = load_pipeline("BlendMask/Tiny_synthetic", None, "cpu", warn_random=False, random_init="detecting")
    assert np.array_equal(again.pipeline(_image()).boxes.numpy(), b.boxes.numpy())


def test_a_checkpoint_replaces_the_random_init_and_unknown_names_are_refused():
    trained = [load_pipeline("BlendMask/Tiny_synthetic", "tiny_synthetic", "cpu", random_init=r) for r in RANDOM_INITS]
    assert np.array_equal(trained[0].pipeline(_image()).boxes.numpy(), trained[1].pipeline(_image()).boxes.numpy())
    with pytest.raises(ValueError, match="random_init must be one of"):
        load_pipeline("BlendMask/Tiny_synthetic", None, "cpu", random_init="busy")
