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
# # Baseline
#
# The reference every stage is measured against: the pipeline as detectron2 + AdelaiDet run it —
# PIL bilinear resize of the uint8 image on the CPU (`ResizeShortestEdge`), normalisation and
# padding to a multiple of 32, the network in eager fp32, AdelaiDet's decode with its host
# synchronisations, full-image mask pasting.
#
# The seed measured **144.0 ms** per image on the 910B3 (P50 143.0, P90 150.5, P99 193.8 ms,
# 6.9 images/s; AdelaiDet's model card: 94 ms on a 1080Ti; the CPU: ~26 s) and profiled 11 stages
# to find where it goes; the first finding was the CPU resize, **34.8 ms**. Seed 001 (Mask R-CNN
# on an RTX 3080) showed how the image changes with the input size: at 1333×800 pre-processing
# took 13.45 of 72.3 ms, at 3840×2304 it took 128.44 of 569.92 ms, and mask post-processing
# grew from 15.74 to 173.72 ms — costs that scale with the original image, not the network input.
#
# Below: the end-to-end latency of the baseline on the benchmark images (the first call —
# allocator warm-up — reported apart), the stage profile at the two sizes of seed 001, the
# profiler's own overhead, and how much of the device's measured matmul peak the network reaches.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
from IPython.display import Image, Markdown, display

from blendstudy import report
from blendstudy.study import protocol, sections

study = protocol.open_study(params_file, out_dir, max_images)  # a missing path stops here, naming it
display(Markdown(study.header()))

# %% [markdown]
# Everything below is measured in a **worker process** (`blendstudy.measure.worker`), not in this
# notebook's kernel: torch_npu turns its dispatch queue off in any interactive interpreter, and thread
# counts and core binding are read when a process starts. The worker starts with the stage's runtime
# already in place; the tables say which process measured what.

# %% [markdown]
# ## The study's stages

# %%
result = protocol.run_baseline(study)
display(sections.recipes(study, result))

# %% [markdown]
# ## End-to-end latency

# %%
run = result.runs["baseline"]
display(sections.show(study, report.latency_table([("baseline", run.stats)]).assign(
    **{"first call ms": run.first_call_ms, "peak memory MiB": run.peak_memory_mb}), "Latency (ms)"))

# %%
path = report.plot_latency_distribution(
    result.samples_ms, study.figure("baseline_latency.png"), title="Baseline: per-image latency")
display(Image(filename=str(path)))

# %% [markdown]
# ## Where the time goes
#
# Every stage boundary synchronises the device, so each stage is charged its own queued work;
# the difference between the profiled total and an unprofiled end-to-end run is the profiler's
# overhead (shown, not hidden). Sizes are the original images' (width × height).

# %%
display(sections.stages(study, result.profiles))
display(sections.show(study, report.profile_overhead_table(result.profiles).reset_index(), "Profiler overhead"))

# %%
path = report.plot_stage_breakdown(
    {f"baseline {s}": p.stage_ms for s, p in result.profiles.items()}, study.figure("baseline_stages.png"),
    title="Baseline: where the time goes")
display(Image(filename=str(path)))

# %% [markdown]
# ## Efficiency
#
# FLOPs of the network for one benchmark image (convolutions and matmuls, `torch.utils.flop_counter`)
# at the measured mean latency, against the device's measured dense-matmul throughput: how far the
# end-to-end pipeline is from what the hardware can do.

# %%
display(sections.show(study, report.efficiency_row(result.efficiency), "FLOP efficiency"))
if result.deform_cost:  # R_101_dcni3_5x: what its deformable stages cost (seed 003's question)
    display(sections.show(study, result.deform_cost, "Deformable stages"))
display(Markdown(f"results: `{study.save('baseline', result)}`"))
display(sections.finding(study, "baseline"))
