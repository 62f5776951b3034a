"""P6's kernel side: what it takes from P4's results instead of measuring it again."""

from __future__ import annotations

from blendstudy.measure.roofline import Peaks, rows
from blendstudy.results import ExtrasResult
from blendstudy.study import offline
from blendstudy.study.offline_stage import fastest_pytorch, recipe_roofline

PEAKS = Peaks({"fp32": 100e9}, "AVX2", [], 2048)


class FakeStudy:
    """Records what P6 would run in its stage worker."""

    def __init__(self):
        self.calls = []

    def call(self, spec, fn, *args):
        self.calls.append((fn, args))
        return ["measured"]


def test_p4s_rows_and_tail_recipe_are_reused_and_measured_only_without_them():
    extras = ExtrasResult(tail_recipe="best_cpu",
                          roofline=rows("best_cpu", {"backbone+FPN": 10.0}, {"backbone+FPN": 1e9}, {}, PEAKS)
                          + rows("p4", {"backbone+FPN": 20.0}, {"backbone+FPN": 1e9}, {}, PEAKS))
    study = FakeStudy()
    assert fastest_pytorch(study, None, "offline_cpu", None, extras) == "best_cpu"
    assert [r.pipeline for r in recipe_roofline(study, None, "best_cpu", extras)] == ["best_cpu"]
    assert study.calls == []
    assert recipe_roofline(study, None, "best", extras) == ["measured"]
    assert recipe_roofline(study, None, "best", None) == ["measured"]
    assert study.calls == [(offline.recipe_rows, ("best",))] * 2
    assert fastest_pytorch(study, None, "offline_cpu", "p4", extras) == "p4"
