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
# # Summary: what this run found
#
# The front page of the study (`report.html` is this notebook): first the run's findings -- the
# fastest pipeline of each kind (PyTorch recipe, offline backend) that passes the accuracy gate,
# with its paired speedup against the baseline and its confidence interval, the seed's chain beside
# this run's, peak memory, every gate, and one line per notebook saying what it found, linked to
# its executed copy -- then the seed's tables rebuilt from this run's results
# (`artifacts/<params>/results/*.json`, one per notebook). The seed's own chain on the 910B3: 144.0
# → 95.9 → 79.6 → 62.5 → 51.5 → **39.5 ms** (−72.6 %); COCO val2017 with P0–P4: 38.0 box / 34.2
# mask AP (model card: 44.8 / 39.5).
#
# Numbers from a CPU or a tiny synthetic model are not the seed's numbers: the shape of the chain
# (which stage pays off where) is the result, and the environment is recorded with each value.
# Speedups are paired medians (above 1 = faster); latency changes are in percent (negative =
# faster).

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
from IPython.display import Image, Markdown, display

from blendstudy import report, tables
from blendstudy.study import findings, protocol

study = protocol.open_study(params_file, out_dir, max_images)  # a missing path stops here, naming it
display(Markdown(study.header()))

# %%
display(findings.front_page(study.run_folder))  # read back from this run's results/*.json

# %% [markdown]
# ## The seed's tables from this run
#
# Every stage's latency, each from its own notebook (unpaired means: mean, P50, P90, P99 in ms,
# throughput in images/s).

# %%
result = protocol.summarize(study)  # read back from this run's results/*.json
display(tables.show(result.versions, caption={"weights": study.weights}))

# %% [markdown]
# ## The optimisation chain

# %%
display(tables.show(result.chain, caption={"weights": study.weights}))

# %% [markdown]
# The latencies above come from different notebooks, i.e. different processes and minutes; on a
# shared machine they drift. The chain below uses the notebooks' paired A/B instead: each stage's
# median speedup against the previous stage and the baseline, measured interleaved in one process,
# and the baseline's mean carried along by those ratios (`paired_ms`). P2's pair runs across two
# processes (one per runtime setting; the sweep in p2_runtime is its evidence), and the later
# stages' pairs run with its setting on both sides.

# %%
display(tables.show(result.paired_chain, caption={"weights": study.weights}))
chained = [(r["stage"], r["paired_ms"]) for r in result.paired_chain if r["paired_ms"] == r["paired_ms"]]

# %%
path = report.plot_speedup_waterfall(chained, study.figure("summary_waterfall.png"))  # the paired chain
display(Image(filename=str(path)))

# %%
path = report.plot_latency_cdf(
    protocol.stage_samples(study), study.figure("summary_latency_cdf.png"), title="Latency CDF of each stage")
display(Image(filename=str(path)))

# %% [markdown]
# ## Accuracy of each stage against the baseline
#
# What is the same on every row (images compared, the gate's thresholds, the weights) is said once
# above each table.

# %%
display(tables.show(report.accuracy_table(result.accuracy), caption={"weights": study.weights}))
display(tables.show(report.coco_table(result.coco), title="COCO AP", caption={"weights": study.weights}))
display(Markdown(f"results: `{study.save('summary', result)}`"))
