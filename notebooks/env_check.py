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
# # Environment check
#
# The seed study ran on an **Ascend 910B3** (NPU 1 for benchmarks, NPU 2 for the full val2017 run),
# **CANN 8.5.0**, **torch 2.8.0 + torch_npu 2.8.0.post2**, **Python 3.9.25**, a **Kunpeng 920 with 192
# cores**, config `configs/BlendMask/R_101_3x.yaml`, weights `R_101_3x.pth` (211 MB, 634 tensors).
# Its numbers (144 ms → 39.5 ms per image) only mean something next to that environment, so every
# results JSON of this study records where it ran (`blendstudy.device.environment_info`), and this
# notebook shows it first: the device `auto` picks (npu if `torch_npu` imports and sees a card, else
# cuda, else cpu), why an NPU is or is not usable, the CANN version, and the runtime variables of P2
# (`TASK_QUEUE_ENABLE`, `OMP_NUM_THREADS`, `CPU_AFFINITY_CONF`) as a non-interactive worker process
# sees them (this kernel is interactive: torch_npu would force its task queue off here), and every
# known problem as a named check (`python -m blendstudy doctor` prints the same).

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
from IPython.display import Markdown, display

from blendstudy import report, tables
from blendstudy.study import protocol

study = protocol.open_study(params_file, out_dir, max_images)  # a missing path stops here, naming it
display(Markdown(study.header()))

# %%
result = protocol.check_environment(study)  # gathered in a worker process
shown = {k: v for k, v in result.environment.items() if k not in ("env", "npu_smi", "process")}
display(tables.show(tables.items(value=shown), lift=False))

# %% [markdown]
# ## This machine

# %%
display(tables.show(report.process_table({"worker": result.environment["process"]})))
display(tables.show(result.checks, title="the doctor's checks"))

# %% [markdown]
# ## Ascend NPU status
#
# `torch_npu` registers the `npu` device when it imports; without CANN the import itself fails
# (`ImportError: libhccl.so ...`) and the study runs on cuda or cpu instead. CANN's version comes
# from its `version.cfg`, the chip and driver from `npu-smi info`.

# %%
display(tables.show(tables.items(value={**result.npu, "deformable conv kernel": result.kernels.get("deform_conv")})))
for tool in ("npu_smi", "nvidia_smi"):
    if result.environment.get(tool):
        display(Markdown(f"`{tool.replace('_', '-')}`:\n```\n{result.environment[tool]}\n```"))

# %% [markdown]
# ## Beside the seed's environment

# %%
seed = result.seed_environment
display(tables.show(tables.items(seed=seed, **{"this run": {k: result.environment.get(k) for k in seed}})))
display(Markdown(f"results: `{study.save('env_check', result, environment=result.environment)}`"))
