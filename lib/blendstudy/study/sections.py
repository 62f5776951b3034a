"""The sections every stage notebook shares, one call each, rendering the same tables everywhere
(blendstudy.tables.show: no index, CIs beside their values, what is constant said once above), and
the finding each notebook ends with, computed from the results it has just saved.

    display(*sections.latency(study, result))
    display(sections.finding(study, "p3_compile"))
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from IPython.display import Markdown

from blendstudy import report, tables
from blendstudy.results import load_results
from blendstudy.study.notebook_lines import FINDERS

__all__ = ["accuracy", "finding", "latency", "paired", "recipes", "roofline", "show", "stages"]


def show(study: Any, df: Any, title: str = "", **caption: Any) -> tables.Table:
    """tables.show with the run's weights (and ``caption``'s items) said once above the table."""
    return tables.show(df, title=title, caption={"weights": study.weights, **caption})


def recipes(study: Any, result: Any) -> tables.Table:
    """What changes: the recipes measured, their switches, and any switch this device skipped."""
    return show(study, result.recipes, "Recipes")


def latency(study: Any, result: Any, first_call: bool = True) -> List[Any]:
    """Each recipe's latency (the first call apart) and the processes that measured it."""
    df = report.latency_table(list(result.latency.items()))
    if first_call and getattr(result, "first_call_ms", None):
        df = df.assign(**{"first call ms": [result.first_call_ms.get(r) for r in result.latency]})
    return [show(study, df, "Latency (ms)"), tables.show(report.process_table(result.processes),
                                                         title="Measuring processes")]


def paired(study: Any, comparisons: Mapping[str, Any]) -> List[Any]:
    """The paired A/Bs (speedup above 1 = B faster, with its bootstrap CI) and their one-line summaries."""
    lines = "\n".join(f"- {c.summary()}" for c in comparisons.values())
    return [show(study, report.paired_table(comparisons), "Paired A/B"), Markdown(lines or "-")]


def accuracy(study: Any, reports: Mapping[str, Any], gate: Mapping[str, Any], note: str = "") -> List[Any]:
    """The accuracy gate: each comparison's agreement and AP change, and the verdicts in one line."""
    return [show(study, report.accuracy_table(reports), "Accuracy against the reference"),
            Markdown(report.gate_line(gate, note, reports))]


def stages(study: Any, profiles: Mapping[str, Any], transpose: bool = False) -> Any:
    """Stage profiles (median ms per stage): one column per pipeline, or one row with ``transpose``."""
    if not profiles:
        return Markdown("No stage profiles in these results.")
    df = report.stage_table(profiles)
    return show(study, (df.T if transpose else df).reset_index(), "Stages (ms)")


def finding(study: Any, notebook: str, extra: Optional[str] = None) -> Markdown:
    """This run's finding for ``notebook``, computed from the results JSON it saved (the same line
    the report's front page shows)."""
    saved = load_results(study.run_folder / "results", notebook)
    line = FINDERS[notebook](saved)
    return Markdown(f"**Found in this run:** {line}" + (f" {extra}" if extra else ""))


def roofline(study: Any, rows: Any, figure: str, title: str) -> List[Any]:
    """The roofline: per pipeline (summary) and per part (table), and the figure of each part's
    share of its precision's measured peak (blendstudy.roofline_report)."""
    from IPython.display import Image

    from blendstudy import roofline_report

    if not rows:
        return [Markdown("No roofline rows in these results.")]
    path = roofline_report.plot_roofline(rows, study.figure(figure), title=title)
    return [tables.show(roofline_report.roofline_summary(rows), title="Roofline per pipeline"),
            tables.show(roofline_report.roofline_frame(rows), title="Roofline per part"), Image(filename=str(path))]


def where_they_differ(rows: Any, reference: str, others: List[str]) -> Any:
    """One line per pipeline of ``others`` against ``reference`` from the roofline rows: network and
    host time, the network's precision and share of its peak (roofline_report.network_and_host)."""
    from blendstudy import roofline_report

    lines = [line for o in others if (line := roofline_report.network_and_host(rows, reference, o))]
    return Markdown("\n".join(f"- {line}" for line in lines) if lines else
                    f"No roofline rows of {reference} to set the backends against.")
