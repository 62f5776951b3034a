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
# # P4 — pad to 64, raise the recompile limit
#
# With `dynamic=False` every input shape is its own compiled graph, and COCO's images come in
# many sizes: after resizing to 800 on the short side the long side still varies pixel by pixel.
# Padded to 32 (the backbone's size divisibility) val2017 gives more shapes than dynamo's default
# recompile limit (8), so part of the images silently run eager and some pay a recompilation. P4
# pads to a multiple of **64** (fewer, coarser shapes) and raises the recompile limit to **32** so
# every shape gets — and keeps — its graph. Seed: **51.5 → 39.5 ms (−23.3 %, cumulative −72.6 %)**;
# P50 39.33, P90 42.00, P99 47.45 ms, 25.31 images/s. The section on shapes below says what every
# shape got in this run, P3's eager fallbacks beside P4's.
#
# Padding changes what the network sees at the borders (more zeros), so the gate checks that boxes
# stay put.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
from IPython.display import Image, Markdown, display

from blendstudy import fallbacks, report, stage_figures
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
result = protocol.run_stage(study, "p4", "p3")
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
# ## Distinct shapes, compiled graphs and eager fallbacks
#
# Every distinct padded input shape is one compiled graph. The shapes the benchmark images give at
# the previous stage's padding and at 64; what each shape got in this worker — P3 under dynamo's
# default recompile limit, P4 under 32, each pipeline its own graphs — and dynamo's own counters
# for this process (`unique_graphs`: graphs compiled so far, all pipelines of this notebook together).

# %%
display(sections.show(study, fallbacks.distinct_shapes_table(result.shapes), "Distinct shapes"))
display(sections.show(study, fallbacks.by_recipe(result.compile), "Compiled and eager, by recipe"))
display(Markdown(f"**Found:** {fallbacks.finding(result.compile)}"))
display(Markdown(f"dynamo counters: `{result.dynamo_counters}`"))

# %% [markdown]
# ## Beyond the seed
#
# Recipes on top of P4: the ones the params' `extras` list names. A recipe is a list of named
# switches: the recipes are defined in `blendstudy.optimize.RECIPES` (P4 plus one switch each, and
# the chains `best` and `best_cpu`), what each switch changes in `blendstudy.optimize.SWITCHES` --
# among them seed 001's half precision and raw masks (no full-image paste), 004's Conv-BN folding,
# BlendMask's top layer computed only at the detections left after NMS, and the blender in
# cache-sized chunks. A switch this device cannot run is skipped; a recipe that is then the same
# pipeline as another says so in the table. Each: latency, the gate against the baseline (AP
# included), and the stage profile at seed 001's two sizes, where raw masks matter most (its mask
# post-processing: 15.74 → 1.74 ms at 1333×800, 173.72 → 2.99 ms at 3840×2304).

# %%
result.extras = protocol.run_extras(study, "p4")  # the same worker as the stage
display(sections.show(study, report.extras_table(result.extras), "Beyond the seed"))
display(*sections.accuracy(study, result.extras.accuracy, result.extras.gate))

# %% [markdown]
# ### The tail: the images or the machine?
#
# P99/P50 over the benchmark mixes two things: images that cost more (more pixels after resizing,
# more detections to blend) and the machine's own jitter (a shared host, frequency, preemption). The
# fastest recipe's run is split here (`blendstudy.measure.latency.tail_breakdown`): the same ratio over the
# per-image medians (the content's part, the repeats' jitter taken out), and a control run of ONE
# image — the run's median one — called as many times as the run had calls: nothing in it depends
# on content, so its P99/P50 is this machine's jitter floor at this latency.

# %%
display(sections.show(study, report.tail_table(result.extras.tail_recipe, result.extras.tail), "The tail"))
display(sections.stages(study, result.extras.profiles, transpose=True))

# %%
path = report.plot_stage_breakdown(
    {k: p.stage_ms for k, p in result.extras.profiles.items()}, study.figure("p4_extras_stages.png"),
    title="P4 and beyond: where the time goes")
display(Image(filename=str(path)))

# %% [markdown]
# ### Roofline: how far each part is from the machine's peak
#
# For the baseline, P4 and every recipe beyond it, per part of the pipeline: the FLOPs it executes
# (counted on the recipe's eager twin over the first `profile.images` benchmark images: padding,
# lazy attention and raw masks change them), its median time in a profiled pass of the recipe as
# measured (compiled), the FLOP/s that gives, and the share of this worker's measured GEMM peak for
# the part's precision (fp32 and bf16/fp16 by torch, int8 by ONNX Runtime; `blendstudy.measure.roofline`).
# Host parts (resize, paste) have no GEMM FLOPs: their time alone says what they cost.

# %%
display(*sections.roofline(study, result.extras.roofline, "p4_roofline.png", "P4 and beyond: each part's FLOP/s, "
                                                                               "% of its peak"))

# %% [markdown]
# ## What this run found
#
# The distinct padded shapes at the previous stage's padding and at 64 (sized by their images, eager
# ones crossed), and the fastest recipe's tail split into the images' part and the machine's
# (`blendstudy.stage_figures.plot_shapes_and_tail`).

# %%
path = stage_figures.plot_shapes_and_tail(result, study.figure("p4_pad64_shapes_tail.png"))
display(Markdown(f"results: `{study.save('p4_pad64', result)}`"))
display(sections.finding(study, "p4_pad64"), Image(filename=str(path)))
