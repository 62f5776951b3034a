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
# # P6 — the network as an offline model
#
# The seed's chain ends with an eager or compiled PyTorch model. Ascend users deploy differently (seed
# 002, `docs/reference_study.md`): export the network, convert it offline with ATC to an `.om` model,
# run it with `ais_bench`'s `InferSession`, and keep pre- and post-processing on the host. It is also
# what BlendMask users have asked AdelaiDet for since 2020 (its issue #43, "Does BlendMask support
# export to onnx?", answered by exporting the dense part -- backbone, FPN, head outputs, bases -- and
# decoding on the host), and what a user with only CPUs picks instead of eager PyTorch: ONNX Runtime
# or OpenVINO.
#
# Here the dense part (backbone + FPN + FCOS head with BlendMask's attention + basis module) is
# exported to ONNX (`python -m blendstudy export` does the same), checked with `onnx.checker` and
# against eager PyTorch, and run by each engine of the params' `offline` section: one fixed-size
# model per padded size (as P4's compiled graphs) and/or one with dynamic H/W, optionally int8
# (calibrated on training images, never the evaluation images) and, where the CPU computes bfloat16
# natively, the fp32 model run by OpenVINO in bf16 (the precision best_cpu's half switches use). The
# host side is the study's own pipeline with the host switches of the best PyTorch recipe -- on a CPU
# without pad 64 (`offline_cpu`): that is P4's remedy for dynamo's recompile limit, which an offline
# engine does not have. Each backend runs in a fresh worker process of its own: session creation
# apart from steady latency, paired A/B against the baseline
# and against the fastest PyTorch recipe, the accuracy gate against the fp32 baseline, and peak
# memory (seed 004's column) of each pipeline alone in its process.

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

# %%
result = protocol.run_offline(study)
display(sections.show(study, [{k: v for k, v in e.items() if k != "dirs"} for e in result.exports], "Exports"))
display(Markdown(f"host switches of **{result.host_recipe}**; fastest PyTorch recipe: **{result.fastest}**"
                 + "".join(f"\n- **{k}**: {v}" for k, v in {**result.errors, **result.notes}.items())))

# %% [markdown]
# ## Session creation and latency
#
# Creating a session (loading, optimising or compiling the graph) is a one-off cost, reported apart;
# so is each shape's first call. The steady latency is the study's end-to-end latency over the
# benchmark images.

# %%
display(sections.show(study, result.backends, "Backends"))
display(sections.show(study, report.latency_table(list(result.latency.items())), "Latency (ms)"))

# %% [markdown]
# ## Paired A/B
#
# Each offline pipeline against the baseline and against the fastest PyTorch recipe, image by image
# in the same worker (> 1: the offline pipeline is faster).

# %%
display(*sections.paired(study, result.comparisons))

# %% [markdown]
# ## Accuracy gate and memory
#
# Against the fp32 baseline: box IoU, lost instances and -- with a trained model -- the AP change.
# Peak memory: the device's where it reports one, else the process's resident high-water mark, each
# pipeline measured alone in a fresh process (a backend's before any PyTorch recipe is built in its
# worker).

# %%
display(*sections.accuracy(study, result.accuracy, result.gate, result.ap_note))
display(sections.show(study, [{k: v for k, v in m.items() if k != "process"} for m in result.memory], "Peak memory"))

# %% [markdown]
# ## Where the time goes
#
# The stage profile of each offline pipeline (`dense network` is the engine's share).

# %%
display(sections.stages(study, result.profiles))

# %% [markdown]
# ### Roofline
#
# Per backend and part, as in P4: the dense network's FLOPs are those of the PyTorch network it was
# exported from (the same convolutions), its precision as the engine runs it (fp32 as exported, bf16
# for OpenVINO's bf16 variant, int8), against this backend's worker's measured GEMM peak for that
# precision.

# %%
display(*sections.roofline(study, result.roofline, "p6_roofline.png", "P6: each part's FLOP/s, % of its peak"))
# %% [markdown]
# Each backend against the PyTorch recipe it is paired with (its roofline rows come first in the table,
# P4's where P4 measured that recipe, else measured in the stage's worker): is the difference the
# network -- its precision, its share of the peak -- or the host work around it?
# %%
display(sections.where_they_differ(result.roofline, result.fastest, [b["backend"] for b in result.backends]))

# %%
path = report.plot_latency_distribution(
    result.samples_ms, study.figure("p6_offline_latency.png"), title="P6: per-image latency")
display(Image(filename=str(path)))

# %%
display(Markdown(f"results: `{study.save('p6_offline', result)}`"))
display(sections.finding(study, "p6_offline"))
