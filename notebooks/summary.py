# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Summary
#
# The seed's tables rebuilt from this run's results (`artifacts/<params>/results/*.json`, one per
# notebook): every stage's latency (mean, P50, P90, P99, throughput, improvement over the
# baseline), the chain of changes with relative and cumulative gains, each stage's accuracy against
# the baseline, and the COCO AP beside the published numbers the params name. The seed's own chain
# on the 910B3 for comparison: 144.0 → 95.9 → 79.6 → 62.5 → 51.5 → **39.5 ms** (−72.6 %); COCO
# val2017 with P0–P4: 38.0 box / 34.2 mask AP (model card: 44.8 / 39.5).
#
# Numbers from a CPU or a tiny synthetic model are not the seed's numbers: the shape of the chain
# (which stage pays off where) is the result, and the environment is recorded with each value.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
import pandas as pd
from IPython.display import Image, Markdown, display

from blendstudy import report
from blendstudy.study import protocol

study = protocol.open_study(params_file, out_dir, max_images)  # a missing path stops here, naming it
display(Markdown(study.header()))

# %%
result = protocol.summarize(study)  # read back from this run's results/*.json
display(pd.DataFrame(result.versions).assign(weights=study.weights))

# %% [markdown]
# ## The optimisation chain

# %%
display(pd.DataFrame(result.chain).assign(weights=study.weights))

# %% [markdown]
# The latencies above come from different notebooks, i.e. different processes and minutes; on a
# shared machine they drift. The chain below uses the notebooks' paired A/B instead: each stage's
# median speedup against the previous stage and the baseline, measured interleaved in one process,
# and the baseline's mean carried along by those ratios (`paired_ms`). P2 has no pair: its setting
# holds for a whole process (the sweep in p2_runtime is its evidence), and the later stages' pairs
# run with it on both sides.

# %%
display(pd.DataFrame(result.paired_chain).assign(weights=study.weights))
chained = [(r["stage"], r["paired_ms"]) for r in result.paired_chain if r["paired_ms"] == r["paired_ms"]]

# %%
path = report.plot_speedup_waterfall(
    chained, study.figure("summary_waterfall.png"),
    title=f"paired chain: {chained[0][0]} {chained[0][1]:.1f} ms -> " f"{chained[-1][0]} {chained[-1][1]:.1f} ms")
display(Image(filename=str(path)))

# %%
path = report.plot_latency_cdf(
    protocol.stage_samples(study), study.figure("summary_latency_cdf.png"), title="Latency CDF of each stage")
display(Image(filename=str(path)))

# %% [markdown]
# ## Accuracy of each stage against the baseline

# %%
display(report.accuracy_table(result.accuracy).assign(weights=study.weights))
display(report.coco_table(result.coco).assign(weights=study.weights) if result.coco else Markdown("no COCO AP"))
display(Markdown(f"results: `{study.save('summary', result)}`"))
