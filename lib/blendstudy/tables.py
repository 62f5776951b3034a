"""Tables as the notebooks and the report show them: one treatment for every table.

:func:`show` turns a pandas DataFrame into a :class:`Table` that a notebook displays: no index,
every cell as text (floats to three significant digits, dicts as ``KEY=value``, lists joined,
missing values as "-"), text wrapped inside the page's width instead of cut with "...", and the
columns that hold one value on every row said once in a caption above the table instead of on
each row. The ``emulated`` column (blendstudy.emulation) is never lifted: a table made on the
emulated stack keeps it on every row.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from blendstudy.emulation import says_emulated

__all__ = ["Table", "ci_text", "items", "kv_text", "lift_constants", "merge_ci", "show", "sig", "text"]

#: significant digits of every float a table shows
DIGITS = 3
#: what a missing value (None, NaN) reads as
MISSING = "-"
#: what a table without rows says
EMPTY = "(no rows)"
#: columns that stay on every row even when constant
KEEP = ("emulated",)

_STYLE = ("<style>.bs-table{max-width:100%;margin:0.4em 0 1em 0}"
          ".bs-table table{table-layout:auto !important;width:auto;max-width:100%;border-collapse:collapse;"
          "margin:0 !important}"
          ".bs-table th,.bs-table td{white-space:normal !important;overflow-wrap:break-word;vertical-align:top;"
          "text-align:left !important;padding:0.25em 0.6em !important;max-width:36em !important;"
          "border-bottom:1px solid #ddd !important}"
          ".bs-table td.num{text-align:right !important}"
          ".bs-table .bs-caption{margin:0 0 0.3em 0;color:#444;font-size:0.92em}"
          ".bs-table .bs-title{font-weight:bold;margin:0 0 0.2em 0}</style>")


def sig(x: float, digits: int = DIGITS) -> str:
    """``x`` to ``digits`` significant digits, never in exponent notation: 0.2597376 -> "0.260",
    136.16 -> "136", 1234.56 -> "1235" (an integer part is never cut), 0 -> "0"; NaN -> "-"."""
    x = float(x)
    if math.isnan(x):
        return MISSING
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    decimals = max(digits - 1 - math.floor(math.log10(abs(x))), 0)
    out = f"{x:.{decimals}f}"
    if float(out) != 0 and len(out.lstrip("-").replace(".", "").lstrip("0")) > digits and decimals > 0:
        out = f"{x:.{decimals - 1}f}"  # 9.996 rounds up to "10.00": one digit fewer
    return out


def kv_text(mapping: Mapping[str, Any], sep: str = " ") -> str:
    """A dict as ``KEY=value`` items, in its order: {"A": 1, "B": "x"} -> "A=1 B=x"; nested dicts
    in parentheses; an empty dict -> "-"."""
    if not mapping:
        return MISSING
    parts = []
    for k, v in mapping.items():
        value = f"({kv_text(v, sep)})" if isinstance(v, Mapping) else text(v)
        parts.append(f"{k}={value}")
    return sep.join(parts)


def ci_text(value: Optional[float], low: Optional[float], high: Optional[float]) -> str:
    """A value with its confidence interval beside it: "1.69 (1.63-1.80)"; without an interval
    the value alone; without a value "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if low is None or high is None or any(math.isnan(float(b)) for b in (low, high)):
        return sig(value)
    return f"{sig(value)} ({sig(low)}-{sig(high)})"


def text(value: Any) -> str:
    """One cell as text: None/NaN "-", bools "yes"/"no", ints as they are, floats to DIGITS
    significant digits, dicts as KEY=value, lists and tuples joined with ", "."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return sig(float(value))
    if isinstance(value, Mapping):
        return kv_text(value)
    if isinstance(value, (list, tuple, set)):
        return ", ".join(text(v) for v in value) if value else MISSING
    return str(value)


@says_emulated
def items(key: str = "item", **columns: Mapping[str, Any]) -> pd.DataFrame:
    """Mappings side by side as a table: one row per key (in first-seen order) under ``key``, one
    column per mapping (its keyword), None where a mapping lacks the key:
    items(seed={"python": "3.9"}, run={"python": "3.11"})."""
    keys = list(dict.fromkeys(k for m in columns.values() for k in m))
    return pd.DataFrame({key: [str(k) for k in keys], **{n: [m.get(k) for k in keys] for n, m in columns.items()}})


def lift_constants(df: pd.DataFrame, keep: Sequence[str] = KEEP) -> Tuple[pd.DataFrame, Dict[str, str]]:
    """The columns holding one value on every row (as text), taken out of a table of two or more
    rows and returned as {column: value}; columns of ``keep`` stay. A one-row table is unchanged."""
    if len(df) < 2:
        return df, {}
    lifted: Dict[str, str] = {}
    for col in df.columns:
        if str(col) in keep:
            continue
        values = {text(v) for v in df[col]}
        if len(values) == 1:
            lifted[str(col)] = values.pop()
    return df.drop(columns=list(lifted)), lifted


def merge_ci(df: pd.DataFrame) -> pd.DataFrame:
    """Confidence intervals beside their values: a column "X" with a column "X CI" (text
    "low-high") becomes "X (CI)" holding "value (low-high)"; a value column followed by "CI low"
    and "CI high" becomes "<value column> (CI)" holding "value (low-high)". Other columns as given."""
    df = df.copy()
    for col in [c for c in df.columns if isinstance(c, str) and c.endswith(" CI") and c[:-3] in df.columns]:
        base = col[:-3]
        df[base] = [text(v) + (f" ({ci})" if isinstance(ci, str) and ci.strip() else "")
                    for v, ci in zip(df[base], df[col])]
        df = df.drop(columns=[col]).rename(columns={base: f"{base} (CI)"})
    cols = list(df.columns)
    if "CI low" in cols and "CI high" in cols and cols.index("CI low") > 0:
        base = cols[cols.index("CI low") - 1]
        df[base] = [ci_text(v, lo, hi) if isinstance(v, Real) else text(v)
                    for v, lo, hi in zip(df[base], df["CI low"], df["CI high"])]
        df = df.drop(columns=["CI low", "CI high"]).rename(columns={base: f"{base} (CI)"})
    return df


def _numeric(series: pd.Series) -> bool:
    vals = [v for v in series if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(vals) and all(isinstance(v, Real) and not isinstance(v, bool) for v in vals)


def _header(column: Any) -> str:
    """A column name as a header that can wrap: underscores read as spaces."""
    return str(column).replace("_", " ")


@dataclass
class Table:
    """A table as shown: ``frame`` (every cell text), which columns are numbers (right-aligned),
    a ``caption`` of what holds for every row, an optional ``title``. Displays as HTML in a
    notebook (``_repr_html_``) and as markdown text elsewhere (``str``); without rows, as EMPTY."""

    frame: pd.DataFrame
    numeric: List[str] = field(default_factory=list)
    caption: Dict[str, str] = field(default_factory=dict)
    title: str = ""

    def caption_text(self) -> str:
        """The lifted columns as one line: "images: 40 · weights: tiny.pth"."""
        return " · ".join(f"{_header(k)}: {v}" for k, v in self.caption.items())

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(_header(c))}</th>" for c in self.frame.columns)
        rows = []
        for _, row in self.frame.iterrows():
            cells = "".join(f'<td{" class=num" if c in self.numeric else ""}>{html.escape(str(v))}</td>'
                            for c, v in row.items())
            rows.append(f"<tr>{cells}</tr>")
        title = f'<p class="bs-title">{html.escape(self.title)}</p>' if self.title else ""
        caption = f'<p class="bs-caption">{html.escape(self.caption_text())}</p>' if self.caption else ""
        if self.frame.empty:
            return f'{_STYLE}<div class="bs-table">{title}<p class="bs-caption">{EMPTY}</p></div>'
        return (f'{_STYLE}<div class="bs-table">{title}{caption}<table><thead><tr>{head}</tr></thead>'
                f'<tbody>{"".join(rows)}</tbody></table></div>')

    def __str__(self) -> str:
        lines = [f"**{self.title}**"] if self.title else []
        if self.caption:
            lines.append(self.caption_text())
        lines.append(EMPTY if self.frame.empty else self.frame.to_markdown(index=False, disable_numparse=True))
        return "\n\n".join(lines)

    __repr__ = __str__


def show(df: Any, title: str = "", lift: bool = True, caption: Optional[Mapping[str, Any]] = None,
         keep: Iterable[str] = KEEP) -> Table:
    """``df`` as shown: the index dropped, confidence intervals beside their values
    (:func:`merge_ci`), constant columns lifted into the caption (``lift``; ``keep`` stays),
    ``caption`` items put before them, every cell as text (:func:`text`). ``df`` may also be a
    list of records (dicts), as the results JSON keeps tables."""
    df = merge_ci((df if isinstance(df, pd.DataFrame) else pd.DataFrame(list(df))).reset_index(drop=True))
    lifted: Dict[str, str] = {}
    if lift:
        df, lifted = lift_constants(df, tuple(keep))
    numeric = [str(c) for c in df.columns if _numeric(df[c])]
    frame = pd.DataFrame({str(c): [text(v) for v in df[c]] for c in df.columns}, columns=[str(c) for c in df.columns])
    return Table(frame, numeric, {**{k: text(v) for k, v in (caption or {}).items()}, **lifted}, title)
