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
# # P0 — resize on the device
#
# The seed's profile put **34.8 ms** of the 144 ms baseline in `ResizeShortestEdge.apply_image()`:
# a CPU resize of the full-size uint8 image before it ever reaches the device. P0 uploads the
# uint8 image as it is (4× fewer bytes than float) and resizes on the device with bilinear
# `F.interpolate` (half-pixel centres; when shrinking, the filter widens with the scale, as PIL's
# does). Seed: **144.0 → 95.9 ms (−33.4 %)**. Seed 001 made the same move with torchvision's
# functional transforms on a GPU: pre-processing 13.45 → 1.75 ms at 1333×800 and 128.44 → 11.02 ms
# at 3840×2304.
#
# The price is accuracy, a little: PIL's / OpenCV's bilinear on uint8 and `F.interpolate` on float
# differ by rounding, so boxes move slightly — the seed measured box IoU **0.9972** and score
# difference 0.0014 between CPU and NPU after the change (0.9999 before). The gate below checks the
# same thing against this study's baseline. On a CPU-only machine "the device" is the CPU, so the
# gain here is only a faster resize than PIL's: the uint8 image is read in place and resized by
# torch's vectorised uint8 kernel (PIL's arithmetic, within 2 grey levels of it), and the
# normalisation converts it to float as it writes the padded batch. The NPU gain comes from taking
# the work off the host.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
from IPython.display import Image, Markdown, display

from blendstudy import stage_figures
from blendstudy.measure.pixels import resize_difference_summary
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
result = protocol.run_stage(study, "p0", "baseline")
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
# ## The images themselves
#
# Before any detection: the baseline's resized images (PIL) against this stage's, grey level by
# grey level (0–255), per image (`blendstudy.measure.pixels.resize_difference`): mean, 99th
# percentile and
# largest absolute difference, and the share of values that differ at all.

# %%
display(sections.show(study, resize_difference_summary(result.resize_difference), "Resized pixels: PIL vs device"))

# %% [markdown]
# ## What this run found
#
# Per image, the share of resized values that differ from PIL's and the largest, 99th-percentile and mean
# difference in grey levels (`blendstudy.stage_figures.plot_pixel_difference`), the largest first.

# %%
path = stage_figures.plot_pixel_difference(result, study.figure("p0_resize_pixels.png"))
display(Markdown(f"results: `{study.save('p0_resize', result)}`"))
display(sections.finding(study, "p0_resize"), Image(filename=str(path)))
