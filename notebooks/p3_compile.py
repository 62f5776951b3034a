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
# # P3 — compile the backbone
#
# ResNet-101 + FPN is most of the network's operators. In eager mode each one is dispatched on its
# own; `torch.compile(backbone, backend="npu", dynamic=False)` hands the whole backbone to the
# graph engine (TorchAir/GE on Ascend; inductor on cuda and cpu here), which fuses and schedules it
# as one graph. Seed: **62.5 → 51.5 ms (−17.6 %, cumulative −64.2 %)**, at the price of a
# first compilation of about **200 s** — reported apart below, never mixed into the latency.
#
# `dynamic=False` compiles one graph per input shape, and P3 keeps dynamo's default recompile
# limit (8), as the seed did: with COCO's varied image sizes the backbone recompiles until the limit
# is hit, and every later shape runs eager for good — the problem P4 solves. The benchmark images
# of the embedded default span COCO's aspect ratios so that this shows here too (the last section
# counts the fallbacks). The runtime setting of P2 (`runtime.env`, `runtime.cpu_affinity`, the
# sweep's best) is applied to this process.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
from IPython.display import Image, Markdown, display

from blendstudy import fallbacks, stage_figures
from blendstudy.study import protocol, sections

study = protocol.open_study(params_file, out_dir, max_images)  # a missing path stops here, naming it
display(Markdown(study.header()))

# %% [markdown]
# Everything below is measured in a **worker process** (`blendstudy.measure.worker`), not in this
# notebook's kernel: torch_npu turns its dispatch queue off in any interactive interpreter, and thread
# counts and core binding are read when a process starts. The worker starts with the stage's runtime
# already in place; the tables say which process measured what.

# %% [markdown]
# ## What changes

# %%
result = protocol.run_stage(study, "p3", "p2")
display(sections.recipes(study, result))

# %% [markdown]
# ## Latency
#
# Each pipeline on the same benchmark images in one worker process; every compiled recipe first
# compiles each distinct input shape (reported apart, below or in P3's table), then the first call
# (allocation, warm-up) is reported apart from the measured calls.

# %%
display(*sections.latency(study, result))

# %% [markdown]
# ## Paired A/B
#
# Per image, the two pipelines run back to back (order alternating) for several rounds; the
# speedup is the per-image ratio of medians (> 1: this stage is faster), with a bootstrap
# confidence interval over images (`blendstudy.measure.latency.paired_compare`).

# %%
display(*sections.paired(study, result.comparisons))

# %% [markdown]
# ## Accuracy gate
#
# The stage's detections against the baseline's (fp32) on the same images: instances paired by
# box IoU, then box IoU, score and class agreement, mask IoU and lost instances
# (`blendstudy.measure.agreement.compare_runs`). The gate passes when the mean box IoU reaches
# `accuracy.min_mean_box_iou`, no reference instance above `accuracy.gate_score` is lost and —
# with a trained model on annotated images — neither bbox nor segm COCO AP on these images moves
# by more than `accuracy.max_ap_change` points (decided once, when the stage is measured).

# %%
display(*sections.accuracy(study, result.accuracy, result.gate, result.ap_note))

# %% [markdown]
# ## Compilation, reported apart: compiled shapes and eager fallbacks
#
# Before anything was measured, P3 met each distinct input shape of the benchmark images once, under
# dynamo's default recompile limit: one row per shape, its first call's time (the compile, apart from
# the latency above), and whether it got a compiled graph or — past the limit — runs eager, on every
# call of each of its images. Every pipeline compiles its own graphs (`blendstudy.optimize.own_forward`).

# %%
display(sections.show(study, fallbacks.shape_table(result.compile)))
display(Markdown(f"**Found:** {fallbacks.finding(result.compile)}"))

# %% [markdown]
# ## What this run found
#
# Per padded shape, its first call (the compile, where a graph was made) against a steady call of
# the shape's first image, P3's and P2's; eager shapes in red (`blendstudy.stage_figures.plot_compile`).

# %%
path = stage_figures.plot_compile(result, study.figure("p3_compile_shapes.png"))
display(Markdown(f"results: `{study.save('p3_compile', result)}`"))
display(sections.finding(study, "p3_compile"), Image(filename=str(path)))
