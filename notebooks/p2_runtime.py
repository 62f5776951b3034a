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
# # P2 — runtime tuning
#
# Nothing in the model changes: P2 tunes how the process runs it. On the NPU the seed swept
# `TASK_QUEUE_ENABLE` (0 = no dispatch queue, 1 = the default two-stage pipeline, 2 = the level-2
# queue), bound the process to the 24 cores NUMA-local to its card (`taskset -c 144-167`) and set
# `OMP_NUM_THREADS=1`. Best: **TQ=2 + NUMA binding + OMP=1, 79.6 → 62.5 ms (−21.5 %, cumulative
# −56.6 %)**, written to `runtime_best_config.sh`.
#
# `TASK_QUEUE_ENABLE` is read when torch_npu initialises, so every setting runs in **its own
# worker process** (`blendstudy.study.protocol.run_sweep`: variables set and cores bound before torch
# starts) on the P1 pipeline and
# the same benchmark images. Candidates depend on the device (`runtime_candidates`): the NPU's knobs
# above, cudnn.benchmark / TF32 on CUDA, thread counts and core binding on a CPU. The sweep table
# compares each setting's latency with the first one's, and shows what each
# process read back (its threads and cores). The best setting is
# written to `runtime/runtime_best.json` (and `.sh`, as the seed's), and every later notebook
# builds its P2+ pipelines with it; `runtime.env` / `runtime.cpu_affinity` of the params are applied
# at the start of P3, P4 and P5.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
from IPython.display import Image, Markdown, display

from blendstudy import report, stage_figures, tables
from blendstudy.study import protocol, sections

study = protocol.open_study(params_file, out_dir, max_images)  # a missing path stops here, naming it
display(Markdown(study.header()))

# %% [markdown]
# ## The sweep

# %%
result = protocol.run_runtime_stage(study)  # the sweep, then P2 against P1 across two processes
display(sections.show(study, report.sweep_table(result.sweep), "Runtime sweep"))
display(Markdown(f"**Best: {result.best.config.name}**, P50 {result.best.p50_ms:.2f} ms → "
                 f"`{result.best_files['json']}`\n```sh\n{open(result.best_files['sh']).read()}```"))

# %% [markdown]
# ## P2 against P1, paired across two processes
#
# A runtime setting holds for a whole process, so P2 cannot be paired with P1 inside one process.
# Here two workers run side by side: one with the caller's environment (P1 and the baseline), one
# started with the best setting (P2); a coordinator sends the same image to one and then the other,
# alternating which goes first, and each times its own call. Process-wide settings (threads, core
# binding, the NPU's task queue, allocator thresholds) are measured fairly this way. The process table
# shows each side's own read-back beside this notebook's kernel (interactive: on an NPU torch_npu forces
# its task queue to 0 there, which is why nothing is measured in the kernel).

# %%
display(sections.show(study, report.latency_table(list(result.latency.items())), "Latency (ms)"))
display(*sections.paired(study, result.comparisons))
display(tables.show(report.process_table({**result.processes, "this notebook's kernel": result.kernel})))

# %% [markdown]
# ## Accuracy gate

# %%
display(*sections.accuracy(study, result.accuracy, result.gate, result.ap_note))

# %% [markdown]
# ## What this run found
#
# Each setting's P50 (its P99 marked), each measured in its own process, fastest first, the best
# highlighted (`blendstudy.stage_figures.plot_sweep`).

# %%
path = stage_figures.plot_sweep(result, study.figure("p2_runtime_sweep.png"))
display(Markdown(f"results: `{study.save('p2_runtime', result)}`"))
display(sections.finding(study, "p2_runtime"), Image(filename=str(path)))
