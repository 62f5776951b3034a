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
# # Weight check
#
# Before timing anything the seed checked its checkpoint: `weights/R_101_3x.pth`, **211 MB, 634
# tensors**, loaded into the R_101_3x model. A checkpoint that does not fit the model (a different
# depth, a renamed head) can load "successfully" with `strict=False` and give garbage quietly, so
# here every tensor of the model must be present with the right shape (`blendstudy.checkpoint`,
# strict). The table gives the file size, the checkpoint's tensor count, the model's tensors and
# parameters, and the coverage (model tensors the checkpoint provides, with the right shape).
#
# Without a checkpoint (`model.weights: null`, or the embedded default before its tiny model is
# trained) the model keeps its seeded random initialisation, and this notebook — like every table
# of the study — says so.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)

# %%
from IPython.display import Markdown, display

from blendstudy import tables
from blendstudy.study import protocol

study = protocol.open_study(params_file, out_dir, max_images)  # a missing path stops here, naming it
display(Markdown(study.header()))

# %%
result = protocol.check_weights(study)  # the model is loaded in a worker process
display(tables.show([result.summary], lift=False))
display(Markdown(f"```\n{result.check['text']}\n```" if result.check else
                 "**No checkpoint was loaded**: the model runs with its seeded RANDOM initialisation. "
                 "Latency is meaningful, accuracy is not."))
display(Markdown(f"results: `{study.save('weights_check', result)}`"))
