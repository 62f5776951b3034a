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
# # P5 — COCO evaluation of the optimised pipeline
#
# The end of the chain is an accuracy claim under a stated protocol. The seed ran P0–P4 +
# `TASK_QUEUE_ENABLE=2` on all **5000 val2017 images** (NPU 2, 12.4 min, 27,180 detections):
# **bbox AP 38.0, segm AP 34.2**, mean latency **40.4 ms** (P50 40.3, P90 43.7, P99 49.0; 14.8
# images/s with RLE encoding). It compared them with an "official" 38.4 / 34.2 — but AdelaiDet's
# model card gives **44.8 box AP / 39.5 mask AP** for BlendMask R_101_3x; the protocol (score
# threshold, detections kept per image, images evaluated) has to be on the table next to the AP,
# or such numbers cannot be compared. Below they are.
#
# P5 runs as a `torchrun` job (`blendstudy.study.evaluation`, docs/p5_multi_device.md): the
# images are dealt over `evaluation.processes` ranks, one per device of `evaluation.devices` (one
# process on the params' device by default), each bound to its card's cores and appending its
# predictions and per-image latencies to its own JSON-lines shard in
# `artifacts/<params>/p5_eval/<recipe>_<checkpoint>/shards/`; rank 0 checks that every image was
# predicted exactly once and evaluates once. An interrupted run -- one rank or all -- continues
# where it stopped, with any number of ranks. With random weights there is nothing to evaluate:
# the latency over the split is still measured, the AP table stays empty and says why.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
from IPython.display import Image, Markdown, display

from blendstudy import report, tables
from blendstudy.study import evaluation, protocol, sections

study = protocol.open_study(params_file, out_dir, max_images)  # a missing path stops here, naming it
display(Markdown(study.header()))

# %%
result = protocol.run_eval(study)  # torchrun with P5's runtime, non-interactive ranks; resumes where it stopped
display(Markdown(evaluation.describe(result)))

# %% [markdown]
# ## COCO AP, with its protocol

# %%
no_ap = f"**No AP**: the model runs with {study.weights}; latency over the split is below."
display(sections.show(study, report.coco_table(result.metrics, reference=result.references or None), "COCO AP")
        if result.metrics else Markdown(no_ap))

# %% [markdown]
# ## Each rank: where it ran, what it did in this session
#
# Images and seconds of this session's predict loop (reading, predicting, writing its shard); a
# rank's images/s is its share over its loop, the total the images over the slowest rank's loop.

# %%
display(tables.show(evaluation.rank_rows(result), title="Ranks"))

# %% [markdown]
# ## Per-image latency over the split
#
# Every image is distinct (unlike the benchmark's repeated images), and the time includes the
# optimised pipeline only (reading the file and RLE-encoding the masks are outside). The first
# image of each session (compilation, warm-up) is reported apart.

# %%
display(sections.show(study, report.latency_table([(f"{result.recipe} on the split", result.timing)]).assign(
    detections=result.num_detections), "Latency (ms)") if result.timing else Markdown("no steady-state image"))

# %%
path = report.plot_latency_distribution(
    result.samples_ms, study.figure("p5_eval_latency.png"), title="P5: per-image latency over the split")
display(Image(filename=str(path)))

# %% [markdown]
# ## Scaling: images/s with 1 .. N processes
#
# The same evaluation from scratch with 1, 2, 4 ... processes (`evaluation.scaling`: off by
# default, it predicts the split once per count; the rows also go to `p5_eval/scaling.json`). The
# AP column must not move: the same images give the same predictions however they are dealt.

# %%
counts = evaluation.scaling_counts(study.params)
stage, _ = protocol.stage_runtime(study, "p5")
scaling = evaluation.scaling_runs(study.params, study.spec, env=stage.env, counts=counts) if counts else []
display(tables.show(scaling, title="Scaling") if scaling else Markdown("No scaling run (`evaluation.scaling: false`)."))

# %%
display(Markdown(f"results: `{study.save('p5_eval', result)}`"))
display(sections.finding(study, "p5_eval"))
