"""Write the study's notebooks (notebooks/*.ipynb) from the Python source strings in this file.

    python tools/make_notebooks.py              # rewrite notebooks/
    python tools/make_notebooks.py --check      # exit 1 if notebooks/ differs from what this writes

The notebooks are generated so that their code is reviewable here, as plain strings, and so that
regenerating them gives identical bytes (fixed cell ids, no outputs, no execution counts). Each
notebook: a markdown cell with the stage's story (the seed's numbers cited), ONE cell tagged
`parameters` (papermill) holding the embedded default, then thin calls into `blendstudy`, and a
last cell writing artifacts/<params name>/results/<notebook>.json. They run with the repository
root as working directory (papermill's `cwd`; blendstudy.reproduce.run_study does that).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"

Cell = Tuple[str, str]  # ("markdown" | "code" | "parameters", source)

KERNEL_METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}

PARAMETERS = '''\
params_file = "params/default.yaml"  # the study's params YAML, relative to the repository root
out_dir = None                       # None: artifacts/<params name>/ (run_study passes its own)
max_images = None                    # cap on benchmark / evaluation images (None: as the params say)'''


def md(text: str) -> Cell:
    return ("markdown", text.strip("\n"))


def code(text: str) -> Cell:
    return ("code", text.strip("\n"))


def parameters() -> Cell:
    return ("parameters", PARAMETERS)


# ---- shared cells ---------------------------------------------------------------------------
def setup(apply_environment: bool = False, images: bool = True, extra_imports: str = "") -> Cell:
    """Load the params, the run folder, the model and the benchmark images."""
    env = ("applied = study.apply_environment(params)  # runtime.env / cpu_affinity, before torch_npu loads\n"
           if apply_environment else "")
    imgs = ("images = {p.name: read_image(p) for p in study.benchmark_images(params, max_images)}\n"
            if images else "")
    shown = "len(images)" if images else "'-'"
    return code(f'''
import warnings

from IPython.display import Image, Markdown, display

from blendstudy import optimize, report, runtime, study, timing
from blendstudy.data import read_image
{extra_imports}
params = study.StudyParams.load(params_file)
{env}run_folder = study.run_dir(params, out_dir)
loaded = study.load_study_pipeline(params)  # stops here, naming the parameter, if a path is missing
weights = study.weights_label(loaded)        # every table carries it: RANDOM weights say so
{imgs}figures = {{}}
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
display(Markdown(f"params `{{params.path}}` · run folder `{{run_folder}}` · device `{{loaded.device}}` · "
                 f"config `{{params.model.config}}` · weights **{{weights}}** · images {{{shown}}}"))
if loaded.random_weights:
    display(Markdown("> **RANDOM WEIGHTS**: no trained checkpoint was loaded; latencies are real, "
                     "detections and accuracy numbers are not."))
''')


def figure(key: str, filename: str, call: str) -> Cell:
    """A cell drawing a figure with blendstudy.report (``call`` with PATH for the PNG's path), saving it
    under the run's figures/ and showing it."""
    path = f'run_folder / "figures" / "{filename}"'
    return code(f'figures["{key}"] = {call.strip().replace("PATH", path)}\n'
                f'display(Image(filename=str(figures["{key}"])))')


def write_results(name: str, extra: str) -> Cell:
    return code(f'''
record = report.write_results(run_folder / "results", "{name}", {{**params, "max_images": max_images}},
                              figures, device=loaded.device, extra={{
    "weights": weights, "random_weights": loaded.random_weights, "model": loaded.describe(),
{extra}
}})
display(Markdown(f"results: `{{run_folder / 'results' / '{name}.json'}}`"))
''')


# ---- env_check ------------------------------------------------------------------------------
ENV_CHECK: List[Cell] = [
    md('''
# Environment check

The seed study ran on an **Ascend 910B3** (NPU 1 for benchmarks, NPU 2 for the full val2017 run),
**CANN 8.5.0**, **torch 2.8.0 + torch_npu 2.8.0.post2**, **Python 3.9.25**, a **Kunpeng 920 with 192
cores**, config `configs/BlendMask/R_101_3x.yaml`, weights `R_101_3x.pth` (211 MB, 634 tensors).
Its numbers (144 ms → 39.5 ms per image) only mean something next to that environment, so every
results JSON of this study records where it ran (`blendstudy.device.environment_info`), and this
notebook shows it first: the device `auto` picks (npu if `torch_npu` imports and sees a card, else
cuda, else cpu), why an NPU is or is not usable, the CANN version, and the runtime variables of P2
(`TASK_QUEUE_ENABLE`, `OMP_NUM_THREADS`, `CPU_AFFINITY_CONF`) as this process sees them.
'''),
    parameters(),
    code('''
import pandas as pd
from IPython.display import Markdown, display

from blendstudy import device as devices
from blendstudy import report, study

params = study.StudyParams.load(params_file)
study.check_paths(params)  # a missing COCO / weights path stops the study here, naming the parameter
run_folder = study.run_dir(params, out_dir)
device = devices.resolve_device(params.get("device", "auto"))
info = devices.environment_info(device)
figures = {}
display(Markdown(f"params `{params.path}` · device spec `{params.get('device', 'auto')}` → **{device}** "
                 f"({info.get('device_name')})"))
'''),
    md("## This machine"),
    code('''
table = pd.DataFrame({"value": {k: v for k, v in info.items() if k not in ("env", "npu_smi", "nvidia_smi")}})
display(table)
display(Markdown("Runtime variables: " + (", ".join(f"`{k}={v}`" for k, v in info["env"].items()) or "none set")))
'''),
    md('''
## Ascend NPU status

`torch_npu` registers the `npu` device when it imports; without CANN the import itself fails
(`ImportError: libhccl.so ...`) and the study runs on cuda or cpu instead. CANN's version comes
from its `version.cfg`, the chip and driver from `npu-smi info`.
'''),
    code('''
npu = {"torch_npu": info["torch_npu"], "import error": info["torch_npu_error"], "CANN": info["cann"],
       "npu usable": devices.npu_available(), "cuda usable": devices.cuda_available(), "chosen": str(device)}
display(pd.DataFrame({"value": npu}))
for tool in ("npu_smi", "nvidia_smi"):
    if info.get(tool):
        display(Markdown(f"`{tool.replace('_', '-')}`:\\n```\\n{info[tool]}\\n```"))
'''),
    md("## Beside the seed's environment"),
    code('''
SEED = {"python": "3.9.25", "torch": "2.8.0", "torch_npu": "2.8.0.post2", "cann": "8.5.0",
        "device_name": "Ascend 910B3", "cpu_model": "Kunpeng 920", "cpu_cores": 192}
display(pd.DataFrame({"seed": SEED, "this run": {k: info.get(k) for k in SEED}}))
'''),
    code('''
record = report.write_results(run_folder / "results", "env_check", {**params, "max_images": max_images},
                              figures, device=device, extra={
    "device": str(device), "npu": npu, "environment": info, "seed_environment": SEED,
})
display(Markdown(f"results: `{run_folder / 'results' / 'env_check.json'}`"))
'''),
]


# ---- weights_check --------------------------------------------------------------------------
WEIGHTS_CHECK: List[Cell] = [
    md('''
# Weight check

Before timing anything the seed checked its checkpoint: `weights/R_101_3x.pth`, **211 MB, 634
tensors**, loaded into the R_101_3x model. A checkpoint that does not fit the model (a different
depth, a renamed head) can load "successfully" with `strict=False` and give garbage quietly, so
here every tensor of the model must be present with the right shape (`blendstudy.checkpoint`,
strict). The table gives the file size, the checkpoint's tensor count, the model's tensors and
parameters, and the coverage (model tensors the checkpoint provides, with the right shape).

Without a checkpoint (`model.weights: null`, or the embedded default before its tiny model is
trained) the model keeps its seeded random initialisation, and this notebook — like every table
of the study — says so.
'''),
    parameters(),
    setup(images=False),
    code('''
import pandas as pd

model, check = loaded.pipeline.model, loaded.load_report
row = {"config": params.model.config, "weights": weights,
       "file MiB": check.file_bytes / 2**20 if check else None,
       "checkpoint tensors": check.tensors if check else None,
       "model tensors": len(model.state_dict()),
       "model parameters": sum(p.numel() for p in model.parameters()),
       "coverage": f"{check.coverage:.1%}" if check else "n/a (random init)",
       "strict match": check.ok if check else None}
display(pd.DataFrame([row]))
'''),
    code('''
if check is None:
    display(Markdown("**No checkpoint was loaded**: the model runs with its seeded RANDOM initialisation "
                     f"(`model.weights: {params.model.get('weights')}`). Latency is meaningful, accuracy is not."))
else:
    display(Markdown(f"```\\n{check.summary(limit=10)}\\n```"))
'''),
    write_results("weights_check", '''\
    "check": check, "summary": row,'''),
]


# ---- baseline -------------------------------------------------------------------------------
BASELINE: List[Cell] = [
    md('''
# Baseline

The reference every stage is measured against: the pipeline as detectron2 + AdelaiDet run it —
PIL bilinear resize of the uint8 image on the CPU (`ResizeShortestEdge`), normalisation and
padding to a multiple of 32, the network in eager fp32, AdelaiDet's decode with its host
synchronisations, full-image mask pasting.

The seed measured **144.0 ms** per image on the 910B3 (P50 143.0, P90 150.5, P99 193.8 ms,
6.9 images/s; AdelaiDet's model card: 94 ms on a 1080Ti; the CPU: ~26 s) and profiled 11 stages
to find where it goes; the first finding was the CPU resize, **34.8 ms**. Seed 001 (Mask R-CNN
on an RTX 3080) showed how the picture changes with the input size: at 1333×800 pre-processing
took 13.45 of 72.3 ms, at 3840×2304 it took 128.44 of 569.92 ms, and mask post-processing
grew from 15.74 to 173.72 ms — costs that scale with the original image, not the network input.

Below: the end-to-end latency of the baseline on the benchmark images (the first call —
allocator warm-up — reported apart), the stage profile at the two sizes of seed 001, the
profiler's own overhead, and how much of the device's measured matmul peak the network reaches.
'''),
    parameters(),
    setup(extra_imports="import pandas as pd\n"),
    md("## The study's stages"),
    code('''
display(pd.DataFrame(optimize.describe_recipes()))
'''),
    md("## End-to-end latency"),
    code('''
T = params.timing
baseline = optimize.build_pipeline(loaded.pipeline, "baseline")
latency = timing.measure_latency(baseline, images, loaded.device, warmup=T.warmup, repeats=T.repeats,
                                 progress=False)
display(report.latency_table([("baseline", latency)]).assign(
    first_call_ms=latency.first_call_ms, peak_memory_mb=latency.peak_memory_mb, weights=weights))
'''),
    figure("latency", "baseline_latency.png", '''
report.plot_latency_distribution(
    {"baseline": latency.samples_ms}, PATH, title="Baseline: per-image latency")'''),
    md('''
## Where the time goes

Every stage boundary synchronises the device, so each stage is charged its own queued work;
the difference between the profiled total and an unprofiled end-to-end run is the profiler's
overhead (shown, not hidden). Sizes are the original pictures' (width × height).
'''),
    code('''
from blendstudy.profile import profile_stages

P = params.profile
profiles = {}
for h, w in P.image_sizes:
    pictures = study.profile_images(params, (h, w), P.images)
    profiles[f"{w}x{h}"] = profile_stages(baseline, pictures, warmup=P.warmup, repeats=P.repeats,
                                          progress=False)
stage_table = pd.DataFrame({size: prof.stage_ms for size, prof in profiles.items()})
display(stage_table.round(2))
display(pd.DataFrame({size: {"profiled total ms": prof.total_ms, "end-to-end ms": prof.end_to_end_ms,
                             "profiler overhead ms": prof.overhead_ms, "peak memory MiB": prof.peak_memory_mb}
                      for size, prof in profiles.items()}).assign(weights=weights))
'''),
    figure("stages", "baseline_stages.png", '''
report.plot_stage_breakdown(
    {f"baseline {s}": p.stage_ms for s, p in profiles.items()}, PATH, title="Baseline: where the time goes")'''),
    md('''
## Efficiency

FLOPs of the network for one benchmark image (convolutions and matmuls, `torch.utils.flop_counter`)
at the measured mean latency, against the device's measured dense-matmul throughput: how far the
end-to-end pipeline is from what the hardware can do.
'''),
    code('''
from blendstudy import profile

flops = profile.count_flops(baseline, next(iter(images.values())))
peak = profile.matmul_peak_flops(loaded.device)
eff = profile.efficiency(flops, latency.stats.mean, peak)
display(pd.DataFrame([{"GFLOPs/image": eff.flops_per_image / 1e9, "latency ms": eff.latency_ms,
                       "achieved GFLOP/s": eff.achieved_flops / 1e9, "matmul peak GFLOP/s": eff.peak_flops / 1e9,
                       "fraction of peak": f"{eff.fraction_of_peak:.1%}", "weights": weights}]))
'''),
    write_results("baseline", '''\
    "stage": "baseline", "latency": {"baseline": latency.stats}, "first_call_ms": {"baseline": latency.first_call_ms},
    "samples_ms": {"baseline": latency.samples_ms}, "peak_memory_mb": {"baseline": latency.peak_memory_mb},
    "profiles": {size: prof.to_dict() for size, prof in profiles.items()}, "efficiency": eff,'''),
]


# ---- the P stages ---------------------------------------------------------------------------
def stage_notebook(stage: str, previous: str, notebook: str, story: str, extra_cells: List[Cell],
                   extra_results: str = "", apply_environment: bool = False) -> List[Cell]:
    """A P-stage notebook: the switch, latency of baseline / previous / this stage, paired A/B with
    a bootstrap CI against the previous stage and the baseline, the accuracy gate, the figure."""
    return [
        md(story),
        parameters(),
        setup(apply_environment=apply_environment, extra_imports="import pandas as pd\n"),
        md("## What changes"),
        code(f'''
STAGE, PREVIOUS = "{stage}", "{previous}"
best_runtime = runtime.load_runtime(run_folder / "runtime" / "runtime_best.json")  # P2's pick, if it ran
pipes = {{r: optimize.build_pipeline(loaded.pipeline, r, runtime=best_runtime) for r in ("baseline", PREVIOUS, STAGE)}}
display(pd.DataFrame(optimize.describe_recipes(list(pipes))))
'''),
        md('''
## Latency

Each pipeline on the same benchmark images in this process; the first call (allocation, graph
capture, compilation) is reported apart from the measured calls.
'''),
        code('''
T = params.timing
latency = {r: timing.measure_latency(p, images, loaded.device, warmup=T.warmup, repeats=T.repeats,
                                     progress=False, desc=r) for r, p in pipes.items()}
display(report.latency_table(list(latency.items())).assign(
    first_call_ms=[run.first_call_ms for run in latency.values()], weights=weights))
'''),
        md('''
## Paired A/B

Per image, the two pipelines run back to back (order alternating) for several rounds; the
speedup is the per-image ratio of medians (> 1: this stage is faster), with a bootstrap
confidence interval over images (`blendstudy.timing.paired_compare`).
'''),
        code('''
ab = {f"{STAGE} vs {a}": timing.paired_compare(pipes[a], pipes[STAGE], images, loaded.device, rounds=T.rounds,
                                              warmup=T.warmup, n_boot=T.n_boot, confidence=T.confidence,
                                              progress=False, name_a=a, name_b=STAGE)
      for a in dict.fromkeys([PREVIOUS, "baseline"])}
display(pd.DataFrame([{"comparison": k, "median speedup": c.median_speedup, "CI low": c.ci_low, "CI high": c.ci_high,
                       "median A ms": c.median_a_ms, "median B ms": c.median_b_ms, "images": len(c.speedup),
                       "rounds": c.rounds, "weights": weights} for k, c in ab.items()]))
display(Markdown("\\n".join(f"- {c.summary()}" for c in ab.values())))
'''),
        md('''
## Accuracy gate

The stage's detections against the baseline's (fp32) on the same images: instances paired by
box IoU, then box IoU, score and class agreement, mask IoU and lost instances
(`blendstudy.accuracy.compare_runs`). The gate passes when the mean box IoU reaches
`accuracy.min_mean_box_iou`, no reference instance above `accuracy.gate_score` is lost and —
with a trained model on annotated images — neither bbox nor segm COCO AP on these images moves
by more than `accuracy.max_ap_change` points (`blendstudy.study.accuracy_gates`).
'''),
        code('''
A = params.accuracy
names = list(images)[: A.images or None]
outputs = {r: dict(zip(names, p.run_many([images[n] for n in names]))) for r, p in pipes.items()}
accuracy, gate, ap_note = study.accuracy_gates(params, loaded, outputs,
                                               [(r, STAGE) for r in dict.fromkeys(["baseline", PREVIOUS])])
display(report.accuracy_table(accuracy).assign(gate=["pass" if ok else "FAIL" for ok in gate.values()],
                                              weights=weights))
display(Markdown(" · ".join(f"**{k}: {'PASS' if ok else 'FAIL'}**" for k, ok in gate.items()) + f" · {ap_note}"))
'''),
        figure("latency", f"{notebook}_latency.png", f'''
report.plot_latency_distribution(
    {{r: run.samples_ms for r, run in latency.items()}}, PATH, title="{stage}: per-image latency")'''),
        *extra_cells,
        write_results(notebook, f'''\
    "stage": STAGE, "previous": PREVIOUS, "recipes": optimize.describe_recipes(list(pipes)),
    "latency": {{r: run.stats for r, run in latency.items()}},
    "first_call_ms": {{r: run.first_call_ms for r, run in latency.items()}},
    "samples_ms": {{r: run.samples_ms for r, run in latency.items()}},
    "comparisons": ab, "accuracy": accuracy, "gate": gate,{extra_results}'''),
    ]


P0 = stage_notebook("p0", "baseline", "p0_resize", '''
# P0 — resize on the device

The seed's profile put **34.8 ms** of the 144 ms baseline in `ResizeShortestEdge.apply_image()`:
a CPU resize of the full-size uint8 picture before it ever reaches the device. P0 uploads the
uint8 picture as it is (4× fewer bytes than float) and resizes on the device with bilinear
`F.interpolate` (half-pixel centres; when shrinking, the filter widens with the scale, as PIL's
does). Seed: **144.0 → 95.9 ms (−33.4 %)**. Seed 001 made the same move with torchvision's
functional transforms on a GPU: pre-processing 13.45 → 1.75 ms at 1333×800 and 128.44 → 11.02 ms
at 3840×2304.

The price is accuracy, a little: PIL's / OpenCV's bilinear on uint8 and `F.interpolate` on float
differ by rounding, so boxes move slightly — the seed measured box IoU **0.9972** and score
difference 0.0014 between CPU and NPU after the change (0.9999 before). The gate below checks the
same thing against this study's baseline. On a CPU-only machine "the device" is the CPU, so the
gain here is only a faster resize than PIL's: the uint8 picture is read in place and resized by
torch's vectorised uint8 kernel (PIL's arithmetic, within 2 grey levels of it), and the
normalisation converts it to float as it writes the padded batch. The NPU gain comes from taking
the work off the host.
''', [
    md('''
## The pictures themselves

Before any detection: the baseline's resized pictures (PIL) against this stage's, grey level by
grey level (0–255), per image (`blendstudy.accuracy.resize_difference`): mean, 99th percentile and
largest absolute difference, and the share of values that differ at all.
'''),
    code('''
from blendstudy.accuracy import resize_difference

pixels = pd.DataFrame(resize_difference(pipes["baseline"], pipes[STAGE], images))
display(pixels.set_index("image")[["mean", "p99", "max", "differs"]].agg(["mean", "max"]).round(3)
        .assign(images=len(pixels), weights=weights))
'''),
], '''
    "resize_difference": pixels.to_dict("records"),''')

P1_DECODE_CELLS: List[Cell] = [
    md('''
## Decode + NMS, profiled alone

The seed also measured NMS by itself (`benchmark_p1_nms.py`: **1.57 ms**, "not worth optimising"):
the gain of P1 is the synchronisation points removed, not faster NMS. Here the stage profile of
the previous stage and of P1 on the same pictures, the `decode+NMS` row being that measurement.
'''),
    code('''
from blendstudy.profile import profile_stages

P = params.profile
pictures = list(images.values())[: P.images]
decode_profiles = {r: profile_stages(pipes[r], pictures, warmup=P.warmup, repeats=P.repeats, progress=False)
                   for r in (PREVIOUS, STAGE)}
display(pd.DataFrame({r: prof.stage_ms for r, prof in decode_profiles.items()}).round(2).assign(weights=weights))
'''),
    figure("stages", "p1_decode_stages.png", '''
report.plot_stage_breakdown(
    {r: p.stage_ms for r, p in decode_profiles.items()}, PATH, title="P1: stages before and after")'''),
]

P1 = stage_notebook("p1", "p0", "p1_decode", '''
# P1 — decode without host synchronisation

AdelaiDet's FCOS post-processing (`select_over_all_levels`) picks the post-NMS top-k with a
`.cpu()` in the middle: the host waits for the device to drain its queue, then queues the rest.
On an NPU, whose strength is a deep asynchronous operator queue, every such sync stalls the
pipeline. P1 decodes with fixed shapes — threshold as a mask, top-k over a fixed candidate count,
NMS and the final top-k without `.cpu()`, `.item()` or `nonzero` — and moves results to the host
once, at extraction. Seed: **95.9 → 79.6 ms (−17.0 %, cumulative −44.7 %)**.

The outputs must not change beyond rounding: the gate compares against the baseline. NMS itself
was profiled apart by the seed (1.57 ms) and left alone; the stage profile below shows the same.
''', P1_DECODE_CELLS, '''
    "decode_profiles": {r: prof.to_dict() for r, prof in decode_profiles.items()},''')


P2: List[Cell] = [
    md('''
# P2 — runtime tuning

Nothing in the model changes: P2 tunes how the process runs it. On the NPU the seed swept
`TASK_QUEUE_ENABLE` (0 = no dispatch queue, 1 = the default two-stage pipeline, 2 = the level-2
queue), bound the process to the 24 cores NUMA-local to its card (`taskset -c 144-167`) and set
`OMP_NUM_THREADS=1`. Best: **TQ=2 + NUMA binding + OMP=1, 79.6 → 62.5 ms (−21.5 %, cumulative
−56.6 %)**, written to `runtime_best_config.sh`.

`TASK_QUEUE_ENABLE` is read when torch_npu initialises, so every setting runs in **its own
process** (`python -m blendstudy bench`, `blendstudy.runtime.run_sweep`) on the P1 pipeline and
the same benchmark images. Candidates depend on the device (`runtime_candidates`): the NPU's knobs
above, cudnn.benchmark / TF32 on CUDA, thread counts and core binding on a CPU. Because the
settings live in different processes they cannot be interleaved like the other stages' paired
A/B: the sweep table compares each setting's latency with the first one's. The best setting is
written to `runtime/runtime_best.json` (and `.sh`, as the seed's), and every later notebook
builds its P2+ pipelines with it; `runtime.env` / `runtime.cpu_affinity` of the params are applied
at the start of P3, P4 and P5.
'''),
    parameters(),
    setup(extra_imports="import pandas as pd\n"),
    md("## The sweep"),
    code('''
R, T = params.runtime, params.timing
candidates = (runtime.runtime_candidates(loaded.device, limit=R.max_settings) if R.candidates == "auto"
              else [runtime.RuntimeConfig(**c) for c in R.candidates][: R.max_settings])
bench_images = [str(p) for p in study.benchmark_images(params, max_images)][: R.images]
bench_argv = ["--config", loaded.config_source, "--weights", loaded.weights or "random",
              "--device", str(loaded.device), "--recipe", "p1", "--warmup", str(T.warmup),
              "--repeats", str(T.repeats), "--images", *bench_images]
sweep = runtime.run_sweep(candidates, bench_argv, run_folder / "runtime" / "sweep", progress=False)
sweep_table = pd.DataFrame([{"setting": r.config.name, "env": r.config.env, "cpu cores": len(r.config.cpu_cores or []),
                             "torch threads": r.config.torch_threads, "mean ms": r.mean_ms, "P50 ms": r.p50_ms,
                             "P99 ms": r.p99_ms, "error": r.error} for r in sweep])
display(sweep_table.assign(weights=weights))
'''),
    code('''
best = runtime.best_of(sweep)
if best is None:
    raise RuntimeError("P2: every runtime setting failed: " + "; ".join(f"{r.config.name}: {r.error}" for r in sweep))
written = runtime.write_best_runtime(best, run_folder / "runtime")
first = sweep[0]
display(Markdown(f"**Best: {best.config.name}**, P50 {best.p50_ms:.2f} ms (first setting {first.config.name}: "
                 f"{first.p50_ms or float('nan'):.2f} ms) → `{written['json']}`\\n"
                 f"```sh\\n{written['sh'].read_text()}```"))
'''),
    md('''
## P2 in this process

The P1 pipeline is timed first with the runtime this notebook started with; then the P2 pipeline
applies the best setting's in-process knobs (threads, core binding, cuda flags — environment
knobs such as `TASK_QUEUE_ENABLE` only take effect in a new process, which is why the sweep above
is the stage's evidence) and is timed on the same images. Sequential, not paired: once applied,
the setting holds for the whole process.
'''),
    code('''
pipes = {"baseline": optimize.build_pipeline(loaded.pipeline, "baseline"),
         "p1": optimize.build_pipeline(loaded.pipeline, "p1")}
latency = {r: timing.measure_latency(p, images, loaded.device, warmup=T.warmup, repeats=T.repeats, progress=False)
           for r, p in pipes.items()}
pipes["p2"] = optimize.build_pipeline(loaded.pipeline, "p2", runtime=best.config)
latency["p2"] = timing.measure_latency(pipes["p2"], images, loaded.device, warmup=T.warmup, repeats=T.repeats,
                                       progress=False)
display(report.latency_table(list(latency.items())).assign(
    first_call_ms=[run.first_call_ms for run in latency.values()], weights=weights))
display(Markdown(f"applied in process: `{pipes['p2'].recipe_info.get('runtime')}`"))
'''),
    md("## Accuracy gate"),
    code('''
A = params.accuracy
names = list(images)[: A.images or None]
outputs = {r: dict(zip(names, pipes[r].run_many([images[n] for n in names]))) for r in ("baseline", "p2")}
accuracy, gate, ap_note = study.accuracy_gates(params, loaded, outputs, [("baseline", "p2")])
display(report.accuracy_table(accuracy).assign(gate=["pass" if ok else "FAIL" for ok in gate.values()],
                                              weights=weights))
display(Markdown(ap_note))
'''),
    figure("latency", "p2_runtime_latency.png", '''
report.plot_latency_distribution(
    {r: run.samples_ms for r, run in latency.items()}, PATH, title="p2: per-image latency")'''),
    write_results("p2_runtime", '''\
    "stage": "p2", "previous": "p1", "sweep": sweep, "best": best, "best_files": written,
    "latency": {r: run.stats for r, run in latency.items()},
    "first_call_ms": {r: run.first_call_ms for r, run in latency.items()},
    "samples_ms": {r: run.samples_ms for r, run in latency.items()},
    "accuracy": accuracy, "gate": gate,'''),
]


P3_COMPILE_CELLS: List[Cell] = [
    md('''
## Compilation, reported apart

The first call of the compiled pipeline traces and compiles the backbone; it is excluded from
the latency statistics above and shown here: first call, steady-state mean, and their difference
as the one-off compile cost.
'''),
    code('''
compile_table = pd.DataFrame([{"recipe": r, "first call ms": run.first_call_ms, "steady mean ms": run.stats.mean,
                               "one-off cost ms": run.first_call_ms - run.stats.mean,
                               "compiled": str(pipes[r].recipe_info.get("compile", "-"))}
                              for r, run in latency.items()])
display(compile_table.assign(weights=weights))
'''),
]

P3 = stage_notebook("p3", "p2", "p3_compile", '''
# P3 — compile the backbone

ResNet-101 + FPN is most of the network's operators. In eager mode each one is dispatched on its
own; `torch.compile(backbone, backend="npu", dynamic=False)` hands the whole backbone to the
graph engine (TorchAir/GE on Ascend; inductor on cuda and cpu here), which fuses and schedules it
as one graph. Seed: **62.5 → 51.5 ms (−17.6 %, cumulative −64.2 %)**, at the price of a
first compilation of about **200 s** — reported apart below, never mixed into the latency.

`dynamic=False` compiles one graph per input shape: with COCO's varied image sizes the backbone
recompiles until dynamo's recompile limit is hit and then silently falls back to eager — the
problem P4 solves. The runtime setting of P2 (`runtime.env`, `runtime.cpu_affinity`, the sweep's
best) is applied to this process.
''', P3_COMPILE_CELLS, '''
    "compile": compile_table,''', apply_environment=True)


P4_CELLS: List[Cell] = [
    md('''
## Distinct shapes and recompiles

Every distinct padded input shape is one compiled graph. The shapes the benchmark images give at
the previous stage's padding and at 64, and dynamo's own counters for this process
(`unique_graphs`: graphs compiled so far, all pipelines of this notebook together).
'''),
    code('''
import torch

shapes = {r: sorted({tuple(pipes[r].prepare(im)[0].shape[-2:]) for im in images.values()}) for r in (PREVIOUS, STAGE)}
shape_table = pd.DataFrame([{"recipe": r, "pad multiple": pipes[r].pad_multiple, "distinct shapes": len(s),
                             "shapes (h, w)": s} for r, s in shapes.items()])
dynamo = {k: dict(v) for k, v in torch._dynamo.utils.counters.items() if k in ("stats", "frames", "recompiles")}
display(shape_table.assign(weights=weights))
knob = pipes[STAGE].recipe_info.get("recompile_limit_knob")
display(Markdown(f"dynamo counters: `{dynamo}` · recompile limit set through `{knob}`"))
'''),
    md('''
## Beyond the seed

Recipes on top of P4 (`extras` of the params): seed 001's fp16 network (`half`: fp16 on
accelerators, bf16 on a CPU) and its mixed form (`mixed_half`: backbone, FPN and bases in half,
the FCOS head and all after it fp32), raw masks (no full-image paste, the mask probabilities with
their boxes), Conv-BN folding (004), and `lazy_attention` (BlendMask's top layer computed at the
detections left after NMS instead of at every FPN location). `best` / `best_cpu` combine them
(`blendstudy.optimize.RECIPES`). Each: latency, the gate against the baseline (AP included), and
the stage profile at seed 001's two sizes, where raw masks matter most (its mask post-processing:
15.74 → 1.74 ms at 1333×800, 173.72 → 2.99 ms at 3840×2304).
'''),
    code('''
from blendstudy.profile import profile_stages

extras = {r: optimize.build_pipeline(loaded.pipeline, r, runtime=best_runtime) for r in params.get("extras", [])}
extra_latency = {r: timing.measure_latency(p, images, loaded.device, warmup=T.warmup, repeats=T.repeats,
                                           progress=False) for r, p in {STAGE: pipes[STAGE], **extras}.items()}
extra_outputs = {r: dict(zip(names, p.run_many([images[n] for n in names]))) for r, p in extras.items()}
extra_accuracy, extra_gate, _ = study.accuracy_gates(params, loaded, {"baseline": outputs["baseline"], **extra_outputs},
                                                     [("baseline", r) for r in extras])
display(report.latency_table(list(extra_latency.items())).assign(weights=weights))
display(report.accuracy_table(extra_accuracy).assign(
    gate=["pass" if ok else "FAIL" for ok in extra_gate.values()], weights=weights)
    if extra_accuracy else Markdown("no extras"))
'''),
    md('''
Each extra recipe against the **baseline**, paired (the way every speedup here is stated), with
its tail: P99/P50 of the recipe's own latency run.
'''),
    code('''
extra_ab = {r: timing.paired_compare(pipes["baseline"], p, images, loaded.device, rounds=T.rounds, warmup=T.warmup,
                                     n_boot=T.n_boot, confidence=T.confidence, progress=False,
                                     name_a="baseline", name_b=r) for r, p in {STAGE: pipes[STAGE], **extras}.items()}
display(pd.DataFrame([{"recipe": r, "median speedup vs baseline": c.median_speedup, "CI low": c.ci_low,
                       "CI high": c.ci_high, "P99/P50": extra_latency[r].stats.p99 / extra_latency[r].stats.p50,
                       "weights": weights} for r, c in extra_ab.items()]))
'''),
    md('''
### The tail: the pictures or the machine?

P99/P50 over the benchmark mixes two things: pictures that cost more (more pixels after resizing,
more detections to blend) and the machine's own jitter (a shared host, frequency, preemption). The
fastest recipe's run is split here (`blendstudy.timing.tail_breakdown`): the same ratio over the
per-picture medians (the content's part, the repeats' jitter taken out), and a control run of ONE
picture — the run's median one — called as many times as the run had calls: nothing in it depends
on content, so its P99/P50 is this machine's jitter floor at this latency.
'''),
    code('''
fastest = min(extra_latency, key=lambda r: extra_latency[r].stats.p50)
control_input = timing.median_input(extra_latency[fastest])
control_run = timing.measure_latency({STAGE: pipes[STAGE], **extras}[fastest], {control_input: images[control_input]},
                                     loaded.device, warmup=T.warmup, repeats=extra_latency[fastest].stats.n,
                                     progress=False)
tail = timing.tail_breakdown(extra_latency[fastest], control_run)
display(pd.DataFrame([{"recipe": fastest, "P99/P50 (all calls)": tail.p99_over_p50,
                       "P99/P50 of per-picture medians": tail.content_p99_over_p50,
                       "slowest picture": f"{tail.slowest_input} ({tail.slowest_input_ms:.1f} ms)",
                       "control picture": f"{control_input} x {tail.control_calls}",
                       "control P99/P50": tail.control_p99_over_p50, "weights": weights}]).round(3))
'''),
    code('''
P = params.profile
extra_profiles = {}
for h, w in P.image_sizes:
    pictures = study.profile_images(params, (h, w), P.images)
    for r, p in {STAGE: pipes[STAGE], **extras}.items():
        extra_profiles[f"{r} {w}x{h}"] = profile_stages(p, pictures, warmup=P.warmup, repeats=P.repeats,
                                                        progress=False)
display(pd.DataFrame({k: prof.stage_ms for k, prof in extra_profiles.items()}).T.round(2).assign(weights=weights))
'''),
    figure("extras_stages", "p4_extras_stages.png", '''
report.plot_stage_breakdown(
    {k: p.stage_ms for k, p in extra_profiles.items()}, PATH, title="P4 and beyond: where the time goes")'''),
]

P4 = stage_notebook("p4", "p3", "p4_pad64", '''
# P4 — pad to 64, raise the recompile limit

With `dynamic=False` every input shape is its own compiled graph, and COCO's pictures come in
many sizes: after resizing to 800 on the short side the long side still varies pixel by pixel.
Padded to 32 (the backbone's size divisibility) val2017 gives more shapes than dynamo's default
recompile limit (8), so part of the images silently run eager and some pay a recompilation. P4
pads to a multiple of **64** (fewer, coarser shapes) and raises the recompile limit to **32** so
every shape gets — and keeps — its graph. Seed: **51.5 → 39.5 ms (−23.3 %, cumulative −72.6 %)**;
P50 39.33, P90 42.00, P99 47.45 ms, 25.31 images/s.

Padding changes what the network sees at the borders (more zeros), so the gate checks that boxes
stay put.
''', P4_CELLS, '''
    "shapes": shape_table, "dynamo_counters": dynamo, "extras": {
        "latency": {r: run.stats for r, run in extra_latency.items()},
        "samples_ms": {r: run.samples_ms for r, run in extra_latency.items()},
        "accuracy": extra_accuracy, "gate": extra_gate, "profiles": {k: p.to_dict() for k, p in extra_profiles.items()},
        "paired_vs_baseline": extra_ab, "tail": {"recipe": fastest, **tail.to_dict()}},''',
    apply_environment=True)


# ---- p5_eval --------------------------------------------------------------------------------
P5: List[Cell] = [
    md('''
# P5 — COCO evaluation of the optimised pipeline

The end of the chain is an accuracy claim under a stated protocol. The seed ran P0–P4 +
`TASK_QUEUE_ENABLE=2` on all **5000 val2017 images** (NPU 2, 12.4 min, 27,180 detections):
**bbox AP 38.0, segm AP 34.2**, mean latency **40.4 ms** (P50 40.3, P90 43.7, P99 49.0; 14.8
images/s with RLE encoding). It compared them with an "official" 38.4 / 34.2 — but AdelaiDet's
model card gives **44.8 box AP / 39.5 mask AP** for BlendMask R_101_3x; the protocol (score
threshold, detections kept per image, images evaluated) has to be on the table next to the AP,
or such numbers cannot be compared. Below they are.

The run is resumable: predictions and per-image latencies are appended to JSON-lines files in
`artifacts/<params>/p5_eval/<recipe>_<checkpoint>/` as they are made, and an interrupted run
continues where it stopped (`blendstudy.accuracy.run_coco_evaluation`). With random weights
there is nothing to evaluate: the latency over the split is still measured, the AP table stays
empty and says why.
'''),
    parameters(),
    setup(apply_environment=True, images=False, extra_imports="import pandas as pd\n"),
    code('''
from pathlib import Path

from blendstudy.accuracy import run_coco_evaluation

E = params.evaluation
dataset = study.open_dataset(params, "val")
image_ids = dataset.subset(max_images or E.max_images)
best_runtime = runtime.load_runtime(run_folder / "runtime" / "runtime_best.json")
pipeline = optimize.build_pipeline(loaded.pipeline, E.recipe, runtime=best_runtime)
score_thresh = E.score_thresh if E.score_thresh is not None else loaded.describe()["score_thresh"]
ground_truth = None if loaded.random_weights else dataset.coco  # AP of random weights means nothing
categories = (dataset.contiguous_to_category_id if ground_truth is not None
              else {c: c + 1 for c in range(int(loaded.config.MODEL.FCOS.NUM_CLASSES))})
# one folder per recipe and checkpoint; it resumes only predictions made by the same config, weights
# (sha256), recipe and code (blendstudy.device.code_fingerprint): others are discarded, and said so
eval_folder = run_folder / "p5_eval" / f"{E.recipe}_{Path(loaded.weights).stem if loaded.weights else 'random'}"
evaluation = run_coco_evaluation(image_ids, dataset.image_path, pipeline, ground_truth, categories, eval_folder,
                                 score_thresh=score_thresh, max_dets=E.max_dets, progress=False,
                                 device=loaded.device, run_info=loaded.prediction_identity(E.recipe),
                                 on_mismatch="restart")
display(Markdown(f"recipe **{E.recipe}** on {evaluation.num_images} of {len(dataset)} images of `{dataset.ann_file}`; "
                 f"{evaluation.resumed_from} done before this session, {evaluation.processed} now, "
                 f"{len(evaluation.skipped)} unreadable (skipped)."
                 + (" Predictions found in the folder came from another pipeline or code version and were "
                    "discarded." if evaluation.discarded else "")))
'''),
    md("## COCO AP, with its protocol"),
    code('''
if evaluation.metrics:
    display(report.coco_table(evaluation.metrics, reference=params.references.get("ap") or None)
            .assign(weights=weights))
    display(Markdown(f"```\\n{evaluation.metrics['segm'].summary}\\n```"))
else:
    display(Markdown(f"**No AP**: the model runs with {weights}. A network that was never trained scores "
                     "about 0 AP, and its classes need not even match the split's categories; reporting "
                     "that number would only mislead. Latency over the split is below."))
'''),
    md('''
## Per-image latency over the split

Every image is distinct (unlike the benchmark's repeated pictures), and the time includes the
optimised pipeline only (reading the file and RLE-encoding the masks are outside). The first
image of each session (compilation, warm-up) is reported apart.
'''),
    code('''
per_image = pd.read_json(evaluation.paths.timing_jsonl, lines=True)
steady = per_image.loc[~per_image["first_in_session"], "ms"].tolist() or per_image["ms"].tolist()
display(report.latency_table([(f"{E.recipe} on the split", timing.LatencyStats.from_samples(steady))]).assign(
    first_call_ms=", ".join(f"{ms:.1f}" for ms in evaluation.first_call_ms) or "-",
    detections=evaluation.num_detections, weights=weights))
'''),
    figure("latency", "p5_eval_latency.png", '''
report.plot_latency_distribution(
    {E.recipe: steady}, PATH, title="P5: per-image latency over the split")'''),
    write_results("p5_eval", '''\
    "stage": "p5", "recipe": E.recipe, "metrics": evaluation.metrics, "timing": evaluation.timing,
    "samples_ms": {E.recipe: steady}, "first_call_ms": evaluation.first_call_ms, "evaluated": ground_truth is not None,
    "num_images": evaluation.num_images, "num_detections": evaluation.num_detections, "skipped": evaluation.skipped,
    "score_thresh": score_thresh, "max_dets": E.max_dets, "references": params.references.get("ap"),
    "paths": evaluation.paths,'''),
]


# ---- summary --------------------------------------------------------------------------------
SUMMARY: List[Cell] = [
    md('''
# Summary

The seed's tables rebuilt from this run's results (`artifacts/<params>/results/*.json`, one per
notebook): every stage's latency (mean, P50, P90, P99, throughput, improvement over the
baseline), the chain of changes with relative and cumulative gains, each stage's accuracy against
the baseline, and the COCO AP beside the published numbers the params name. The seed's own chain
on the 910B3 for comparison: 144.0 → 95.9 → 79.6 → 62.5 → 51.5 → **39.5 ms** (−72.6 %); COCO
val2017 with P0–P4: 38.0 box / 34.2 mask AP (model card: 44.8 / 39.5).

Numbers from a CPU or a tiny synthetic model are not the seed's numbers: the shape of the chain
(which stage pays off where) is the result, and the environment is recorded with each value.
'''),
    parameters(),
    code('''
import pandas as pd
from IPython.display import Image, Markdown, display

from blendstudy import optimize, report, study
from blendstudy.accuracy import AccuracyReport, CocoMetrics
from blendstudy.reproduce import STAGE_NOTEBOOKS, load_results
from blendstudy.timing import LatencyStats

params = study.StudyParams.load(params_file)
run_folder = study.run_dir(params, out_dir)
results = load_results(run_folder)
extra = {name: rec["extra"] for name, rec in results.items()}
weights = extra.get("weights_check", extra.get("baseline", {})).get("weights", "unknown")
figures = {}
display(Markdown(f"run folder `{run_folder}` · results of {', '.join(results) or 'no notebook'} · "
                 f"weights **{weights}**"))
'''),
    md("## Latency of each version"),
    code('''
stages = [r for r, nb in STAGE_NOTEBOOKS.items() if r in extra.get(nb, {}).get("latency", {})]
stats = {r: LatencyStats(**extra[STAGE_NOTEBOOKS[r]]["latency"][r]) for r in stages}
if extra.get("p5_eval", {}).get("timing"):
    stats[f"p5 ({extra['p5_eval']['num_images']} distinct images)"] = LatencyStats(**extra["p5_eval"]["timing"])
versions = report.latency_table(list(stats.items())).assign(weights=weights)
display(versions)
'''),
    md("## The optimisation chain"),
    code('''
changes = {row["recipe"]: row["change"] for row in optimize.describe_recipes()}
chain = report.stage_chain_table([(r, changes.get(r, ""), stats[r]) for r in stages])
for source, values in (params.references.get("latency_ms") or {}).items():
    chain[f"{source} ms"] = [values.get(r) for r in chain["stage"]]
display(chain.assign(weights=weights))
'''),
    md('''
The latencies above come from different notebooks, i.e. different processes and minutes; on a
shared machine they drift. The chain below uses the notebooks' paired A/B instead: each stage's
median speedup against the previous stage and the baseline, measured interleaved in one process,
and the baseline's mean carried along by those ratios (`paired_ms`). P2 has no pair: its setting
holds for a whole process (the sweep in p2_runtime is its evidence), and the later stages' pairs
run with it on both sides.
'''),
    code('''
comparisons = {name: c for nb in STAGE_NOTEBOOKS.values()
               for name, c in extra.get(nb, {}).get("comparisons", {}).items()}
paired_chain = report.paired_chain_table(stages, comparisons, stats[stages[0]].mean) if stages else None
display(paired_chain.assign(weights=weights) if paired_chain is not None else Markdown("no stages"))
chained = [(r, ms) for r, ms in zip(paired_chain["stage"], paired_chain["paired_ms"]) if ms == ms]
'''),
    figure("waterfall", "summary_waterfall.png", '''
report.plot_speedup_waterfall(chained, PATH, title=f"paired chain: {chained[0][0]} {chained[0][1]:.1f} ms -> "
                              f"{chained[-1][0]} {chained[-1][1]:.1f} ms")'''),
    code('''
unpaired = [r for r in stages if r not in dict(chained)]
display(Markdown(f"left out of the paired chain (no pair measured): {', '.join(unpaired)}" if unpaired else ""))
'''),
    figure("latency", "summary_latency.png", '''
report.plot_latency_distribution(
    {r: extra[STAGE_NOTEBOOKS[r]]["samples_ms"][r] for r in stages}, PATH, title="Per-image latency of each stage")'''),
    figure("cdf", "summary_latency_cdf.png", '''
report.plot_latency_cdf(
    {r: extra[STAGE_NOTEBOOKS[r]]["samples_ms"][r] for r in stages}, PATH, title="Latency CDF of each stage")'''),
    md("## How far from the device's limit"),
    code('''
eff = extra.get("baseline", {}).get("efficiency")
display(report.efficiency_table(eff["flops_per_image"], eff["peak_flops"], {r: stats[r].mean for r in stages})
        .assign(weights=weights) if eff else Markdown("no FLOP count in this run"))
'''),
    md("## Accuracy of each stage against the baseline"),
    code('''
reports = {name: AccuracyReport.from_dict(rep) for nb in STAGE_NOTEBOOKS.values()
           for name, rep in extra.get(nb, {}).get("accuracy", {}).items()}
gates = {name: ok for nb in STAGE_NOTEBOOKS.values() for name, ok in extra.get(nb, {}).get("gate", {}).items()}
beyond_seed = extra.get("p4_pad64", {}).get("extras", {})
reports.update({name: AccuracyReport.from_dict(rep) for name, rep in beyond_seed.get("accuracy", {}).items()})
gates.update(beyond_seed.get("gate", {}))
display(report.accuracy_table(reports).assign(  # the verdicts the notebooks reached with the params' settings
    gate=["pass" if gates.get(name, rep.passes_gate()) else "FAIL" for name, rep in reports.items()], weights=weights)
    if reports else Markdown("no accuracy results"))
'''),
    md("## COCO AP"),
    code('''
p5 = extra.get("p5_eval", {})
if p5.get("metrics"):
    metrics = {f"{p5['recipe']} {k}": CocoMetrics(**m) for k, m in p5["metrics"].items()}
    display(report.coco_table(metrics, reference=params.references.get("ap") or None).assign(weights=weights))
else:
    display(Markdown(f"No COCO AP in this run ({weights}): see p5_eval for why."))
'''),
    md("## Beyond the seed (P4 + extras)"),
    code('''
beyond = extra.get("p4_pad64", {}).get("extras", {}).get("latency", {})
display(report.latency_table([(r, LatencyStats(**s)) for r, s in beyond.items()]).assign(weights=weights)
        if beyond else Markdown("no extras measured"))
'''),
    code('''
paired = extra.get("p4_pad64", {}).get("extras", {}).get("paired_vs_baseline", {})
display(pd.DataFrame([{"recipe": r, "median speedup vs baseline": c["median_speedup"], "CI low": c["ci_low"],
                       "CI high": c["ci_high"], "weights": weights} for r, c in paired.items()])
        if paired else Markdown("no paired extras"))
'''),
    code('''
record = report.write_results(run_folder / "results", "summary", {**params, "max_images": max_images}, figures,
                              extra={"weights": weights, "notebooks": list(results), "versions": versions,
                                     "chain": chain, "accuracy": reports, "coco": p5.get("metrics") or {}})
display(Markdown(f"results: `{run_folder / 'results' / 'summary.json'}`"))
'''),
]


NOTEBOOKS: Dict[str, List[Cell]] = {
    "env_check": ENV_CHECK,
    "weights_check": WEIGHTS_CHECK,
    "baseline": BASELINE,
    "p0_resize": P0,
    "p1_decode": P1,
    "p2_runtime": P2,
    "p3_compile": P3,
    "p4_pad64": P4,
    "p5_eval": P5,
    "summary": SUMMARY,
}


def build_notebook(name: str, cells: List[Cell]) -> nbformat.NotebookNode:
    """A notebook without outputs; cell ids are "<name>-<index>" so that rebuilding is byte-stable."""
    nb = new_notebook(metadata=KERNEL_METADATA)
    for i, (kind, source) in enumerate(cells):
        cid = f"{name.replace('_', '-')}-{i:02d}"
        if kind == "markdown":
            nb.cells.append(new_markdown_cell(source, id=cid))
        else:
            meta = {"tags": ["parameters"]} if kind == "parameters" else {}
            nb.cells.append(new_code_cell(source, id=cid, metadata=meta))
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The exact text of notebooks/<name>.ipynb."""
    return nbformat.writes(build_notebook(name, NOTEBOOKS[name])) + "\n"


def write_notebooks(out_dir: Path = NOTEBOOK_DIR) -> List[Path]:
    """Write every notebook into out_dir; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in NOTEBOOKS:
        path = out_dir / f"{name}.ipynb"
        path.write_text(render(name), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=NOTEBOOK_DIR, help="folder to write (default: notebooks/)")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if a notebook differs")
    args = ap.parse_args(argv)
    if args.check:
        stale = [n for n in NOTEBOOKS if not (args.out / f"{n}.ipynb").is_file()
                 or (args.out / f"{n}.ipynb").read_text(encoding="utf-8") != render(n)]
        for n in stale:
            print(f"{args.out / (n + '.ipynb')}: differs from tools/make_notebooks.py", file=sys.stderr)
        return 1 if stale else 0
    for path in write_notebooks(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
