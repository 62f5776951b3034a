"""The one treatment every shown table gets (blendstudy.tables)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from blendstudy.emulation import EMULATE_VAR, EMULATED_NOTE
from blendstudy.report import paired_chain_table, process_table
from blendstudy.tables import EMPTY, ci_text, items, kv_text, lift_constants, merge_ci, show, sig, text


@pytest.mark.parametrize("value, expected", [
    (0.2597376, "0.260"), (136.16, "136"), (1234.56, "1235"), (0.0, "0"), (-72.61, "-72.6"),
    (0.000141549, "0.000142"), (9.996, "10.0"), (0.99960, "1.00"), (0.9903, "0.990"), (1.0, "1.00"),
    (float("nan"), "-"), (float("inf"), "inf")])
def test_sig_three_significant_digits_never_an_exponent(value, expected):
    assert sig(value) == expected


def test_text_of_each_kind_of_cell():
    assert text(None) == "-" and text(float("nan")) == "-" and text(np.float64(2.597376e-01)) == "0.260"
    assert text(True) == "yes" and text(False) == "no" and text(np.int64(27180)) == "27180"
    assert text({"OMP_NUM_THREADS": "2", "X": 1}) == "OMP_NUM_THREADS=2 X=1"
    assert text([384, 576]) == "384, 576" and text([]) == "-" and text("p4") == "p4"


def test_kv_text_nested_and_empty():
    assert kv_text({"selected": "plain", "available": ["plain"], "inner": {"a": 0.5}}) == \
        "selected=plain available=plain inner=(a=0.500)"
    assert kv_text({}) == "-"


def test_ci_text_beside_its_value():
    assert ci_text(1.6912, 1.634, 1.8011) == "1.69 (1.63-1.80)"
    assert ci_text(1.5, None, 2.0) == "1.50" and ci_text(None, 1, 2) == "-" and ci_text(float("nan"), 1, 2) == "-"
    assert ci_text(1.5, float("nan"), 2.0) == "1.50"


def test_lift_constants_keeps_the_emulated_column_and_one_row_tables():
    df = pd.DataFrame({"emulated": ["x", "x"], "recipe": ["a", "b"], "weights": ["w.pth", "w.pth"],
                       "images": [40, 40], "ms": [1.0, 2.0]})
    out, lifted = lift_constants(df)
    assert list(out.columns) == ["emulated", "recipe", "ms"] and lifted == {"weights": "w.pth", "images": "40"}
    one, none = lift_constants(df.head(1))
    assert list(one.columns) == list(df.columns) and none == {}


def test_merge_ci_puts_intervals_beside_their_values():
    df = pd.DataFrame({"stage": ["a", "b"], "speedup": [1.0, 1.234], "speedup CI": ["", "1.10-1.30"]})
    assert merge_ci(df)["speedup (CI)"].tolist() == ["1.00", "1.23 (1.10-1.30)"]
    df = pd.DataFrame({"comparison": ["x"], "median speedup": [1.69], "CI low": [1.63], "CI high": [1.80],
                       "images": [40]})
    merged = merge_ci(df)
    assert list(merged.columns) == ["comparison", "median speedup (CI)", "images"]
    assert merged["median speedup (CI)"][0] == "1.69 (1.63-1.80)"


def test_show_no_index_text_cells_caption_and_wrapping_html():
    df = pd.DataFrame({"recipe": ["baseline", "p4"], "latency_ms": [100.94104891, 39.5123],
                       "detail": ["x" * 120, "short"], "weights": ["tiny.pth", "tiny.pth"]}, index=[7, 9])
    t = show(df, title="latency", caption={"params": "default"})
    assert list(t.frame.columns) == ["recipe", "latency_ms", "detail"]
    assert t.frame["latency_ms"].tolist() == ["101", "39.5"] and t.numeric == ["latency_ms"]
    assert t.caption == {"params": "default", "weights": "tiny.pth"}
    page = t._repr_html_()
    assert "x" * 120 in page and "..." not in page  # the whole text, wrapped by the page, never cut
    assert "<th>latency ms</th>" in page and ">7<" not in page and ">9<" not in page  # no index
    assert "white-space:normal" in page and "params: default · weights: tiny.pth" in page
    assert str(t).startswith("**latency**") and "| 101 " in str(t)


def test_show_takes_records_and_says_when_empty():
    assert show([{"a": 1, "b": 2.5}]).frame.to_dict("records") == [{"a": "1", "b": "2.50"}]
    empty = show(pd.DataFrame(), title="COCO AP")
    assert EMPTY in empty._repr_html_() and EMPTY in str(empty)


def test_dicts_become_key_value_text_in_the_process_table():
    df = process_table({"worker": {"pid": 1, "interactive": False, "torch_threads": 2, "cpu_affinity": [0, 1],
                                   "env": {"OMP_NUM_THREADS": "2", "MALLOC_TRIM_THRESHOLD_": "1"}}})
    assert df["env"][0] == "OMP_NUM_THREADS=2 MALLOC_TRIM_THRESHOLD_=1"


def test_items_side_by_side_and_emulated(monkeypatch):
    df = items(seed={"python": "3.9", "cann": "8.5.0"}, **{"this run": {"python": "3.11"}})
    assert df["item"].tolist() == ["python", "cann"] and df["seed"].tolist() == ["3.9", "8.5.0"]
    assert show(df).frame["this run"].tolist() == ["3.11", "-"]  # the key a mapping lacks
    monkeypatch.setenv(EMULATE_VAR, "npu")
    shown = show(items(value={"a": 1, "b": 2}))
    assert shown.frame["emulated"].tolist() == [EMULATED_NOTE] * 2  # never lifted into the caption


def test_paired_chain_columns_name_their_sign_and_show_merges_the_ci():
    comps = {"p0 vs baseline": {"median_speedup": 1.25, "ci_low": 1.2, "ci_high": 1.3}}
    t = show(paired_chain_table(["baseline", "p0"], comps, baseline_ms=100.0))
    assert "paired speedup vs baseline (above 1 = faster) (CI)" in t.frame.columns
    assert t.frame.iloc[1]["paired speedup vs baseline (above 1 = faster) (CI)"] == "1.25 (1.20-1.30)"
    assert not any(math.isnan(float(x)) for x in t.frame["paired_ms"])
