"""The training loop: one schedule -> a checkpoint ``{"model": state_dict}`` and its metrics JSON.

The model is trained for the schedule's fixed number of iterations, or until the wall-clock cap,
whichever comes first (the cosine decay follows whichever fraction is larger, so a run slowed by a
loaded CPU still ends at the low learning rate; the JSON says which limit ended it). A resumable
checkpoint (``<work_dir>/last.pth``) is written every ``checkpoint_period`` steps and at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from blendstudy.config import load_config
from blendstudy.model import build_model
from blendstudy.model.blendmask import BlendMask

from .evaluate import evaluate
from .losses import LossSettings, compute_losses, loss_settings
from .samples import TrainData, batch_indices, collate, ensure_synthetic
from .schedule import TrainSchedule, lr_at


def make_optimizer(model: torch.nn.Module, s: TrainSchedule) -> torch.optim.Optimizer:
    """AdamW of the schedule's lr; weight decay on the weights, none on biases and norms (ndim <= 1)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=(0.9, 0.999))


def plain_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of the model's state dict (fp32 floats)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class _Run:
    """The state of one training run: what it trains, where it resumes from, how long it ran."""

    schedule: TrainSchedule
    cfg: Any
    model: BlendMask
    opt: torch.optim.Optimizer
    data: TrainData
    settings: LossSettings
    dev: torch.device
    ckpt_path: Path
    cap_min: float
    start_it: int = 0
    elapsed_before: float = 0.0
    t0: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds trained so far, the runs before a resume included."""
        return self.elapsed_before + time.perf_counter() - self.t0

    def save_resumable(self, it: int, elapsed: float) -> None:
        """Write the resumable checkpoint (model, optimizer, iteration, elapsed seconds, schedule)."""
        _save_atomic({"model": plain_state_dict(self.model), "optimizer": self.opt.state_dict(), "iteration": it,
                      "elapsed_s": elapsed, "schedule": asdict(self.schedule)}, self.ckpt_path)

    def resume(self) -> None:
        """Continue from the resumable checkpoint, if there is one."""
        if not self.ckpt_path.is_file():
            return
        state = torch.load(str(self.ckpt_path), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.start_it = int(state["iteration"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        print(f"resumed from {self.ckpt_path} at iteration {self.start_it}", file=sys.stderr)


def _start(schedule: TrainSchedule, data_root: Path, work_dir: Path, cap_min: float, device: str,
           threads: int) -> _Run:
    """Set the torch threads, pick the device, seed torch and numpy, then build the train data,
    the model and its optimizer (after the seeds: they decide the initialization)."""
    if threads > 0:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    torch.manual_seed(schedule.seed)
    np.random.seed(schedule.seed)
    cfg = load_config(schedule.config)
    train_ds = ensure_synthetic(data_root, "train", schedule.train_seed, schedule.train_images)
    data = TrainData(train_ds, cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                     cfg.MODEL.BLENDMASK.BOTTOM_RESOLUTION, flip=cfg.INPUT.RANDOM_FLIP == "horizontal")
    model = build_model(cfg).to(dev).train()
    settings = loss_settings(cfg)
    opt = make_optimizer(model, schedule)
    return _Run(schedule, cfg, model, opt, data, settings, dev, work_dir / "last.pth", cap_min)


def _step(run: _Run, it: int, time_fraction: float) -> Tuple[Dict[str, torch.Tensor], float]:
    """One optimizer step of iteration ``it``; returns its losses and the learning rate it used."""
    s = run.schedule
    idx = batch_indices(len(run.data), s.batch_size, it, s.seed)
    samples = [run.data.load(i, np.random.default_rng([s.seed, 104729, it, j])) for j, i in enumerate(idx)]
    images, _ = collate(samples, run.model)
    images = images.to(run.dev)
    samples = [sm.to(run.dev) for sm in samples]
    lr = lr_at(it, s, time_fraction)
    for g in run.opt.param_groups:
        g["lr"] = lr
    losses = compute_losses(run.model, images, samples, run.settings)
    total = sum(losses.values())
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite loss at iteration {it}: "
                                 f"{ {k: float(v) for k, v in losses.items()} }")
    run.opt.zero_grad(set_to_none=True)
    total.backward()
    if s.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), s.clip_norm)
    run.opt.step()
    return losses, lr


def _log(run: _Run, it: int, lr: float, smoothed: Dict[str, float], bar: tqdm) -> None:
    """Show the smoothed losses after iteration ``it`` (and its lr) on the bar and on stderr."""
    msg = " ".join(f"{k[5:]}={v:.3f}" for k, v in smoothed.items())
    bar.set_postfix_str(f"lr={lr:.2e} {msg}")
    print(f"it {it} lr={lr:.2e} total={sum(smoothed.values()):.3f} {msg} "
          f"elapsed={run.elapsed() / 60:.1f}min", file=sys.stderr, flush=True)


def _run_steps(run: _Run, log_every: int) -> Tuple[int, bool]:
    """Step from ``run.start_it`` to the schedule's end or the wall-clock cap, saving resumable
    checkpoints on the way. Returns the iterations done and whether the cap stopped the run."""
    s = run.schedule
    it = run.start_it
    smoothed: Dict[str, float] = {}
    bar = tqdm(total=s.iterations, initial=run.start_it, desc="train", unit="it", dynamic_ncols=True)
    stopped_by_cap = False
    while it < s.iterations:
        elapsed = run.elapsed()
        if elapsed > run.cap_min * 60:
            stopped_by_cap = True
            print(f"\nstopping at iteration {it}: the {run.cap_min} min cap is reached", file=sys.stderr)
            break
        losses, lr = _step(run, it, elapsed / (run.cap_min * 60))
        it += 1
        for k, v in losses.items():
            val = float(v.detach())
            smoothed[k] = 0.9 * smoothed.get(k, val) + 0.1 * val
        bar.update(1)
        if it % log_every == 0 or it == s.iterations:
            _log(run, it, lr, smoothed, bar)
        if it % s.checkpoint_period == 0 and it < s.iterations:
            run.save_resumable(it, run.elapsed())
    bar.close()
    return it, stopped_by_cap


def _record(run: _Run, out: Path, it: int, stopped_by_cap: bool, train_s: float) -> Dict[str, Any]:
    """The metrics record of a finished run (without its evaluation)."""
    s = run.schedule
    return {
        "config": s.config,
        "schedule": asdict(s),
        "seed": s.seed,
        "iterations": it,
        "iterations_planned": s.iterations,
        "stopped_by_time_cap": stopped_by_cap,
        "training_minutes": round(train_s / 60, 2),
        "seconds_per_iteration": round(train_s / max(it - run.start_it, 1), 3) if run.start_it == 0 else None,
        "threads": torch.get_num_threads(),
        "device": str(run.dev),
        "train_split": {"generator": "blendstudy.data.generate_synthetic_coco", "seed": s.train_seed,
                        "num_images": s.train_images},
        "val_split": {"generator": "blendstudy.data.generate_synthetic_coco", "seed": s.val_seed,
                      "num_images": s.val_images, "split_name": "val"},
        "torch_version": torch.__version__,
        "checkpoint_bytes": out.stat().st_size,
    }


def _evaluation(run: _Run, data_root: Path) -> Dict[str, Any]:
    """COCO bbox / segm AP of the trained model on the schedule's validation split, with the
    settings it was evaluated at (the record's ``eval``, ``bbox`` and ``segm``)."""
    s, cfg = run.schedule, run.cfg
    val_ds = ensure_synthetic(data_root, "val", s.val_seed, s.val_images)
    te = time.perf_counter()
    metrics = evaluate(run.model.cpu() if run.dev.type != "cpu" else run.model, cfg, val_ds)
    print(f"val bbox {metrics['bbox']}\nval segm {metrics['segm']}", file=sys.stderr)
    return {"eval": {"min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
                     "score_thresh": cfg.MODEL.FCOS.INFERENCE_TH_TEST, "max_dets_per_image": 100,
                     "seconds": round(time.perf_counter() - te, 1)},
            "bbox": metrics["bbox"], "segm": metrics["segm"]}


def train(schedule: TrainSchedule, out: Path, data_root: Path, work_dir: Path, minutes: Optional[float] = None,
          device: str = "auto", resume: bool = False, iterations: Optional[int] = None,
          threads: int = 1, evaluate_after: bool = True, log_every: int = 20) -> Dict[str, Any]:
    """Train ``schedule`` (``iterations`` and ``minutes`` override its own), save ``out``
    ({"model": state_dict}) and ``out`` .json (the metrics record, evaluated on the validation
    split unless ``evaluate_after`` is False). Returns the metrics record."""
    if iterations is not None:
        schedule = replace(schedule, iterations=int(iterations))
    cap_min = schedule.minutes if minutes is None else float(minutes)
    run = _start(schedule, data_root, work_dir, cap_min, device, threads)
    if resume:
        run.resume()
    run.t0 = time.perf_counter()
    it, stopped_by_cap = _run_steps(run, log_every)
    train_s = run.elapsed()
    run.save_resumable(it, train_s)
    run.model.eval()
    _save_atomic({"model": plain_state_dict(run.model)}, out)
    record = _record(run, out, it, stopped_by_cap, train_s)
    if evaluate_after:
        record.update(_evaluation(run, data_root))
    with open(out.with_suffix(".json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    return record
