"""Training schedules: the hyper-parameter sets of a training run, and the learning rate per step.

A schedule (:class:`TrainSchedule`) is everything besides the code and the library versions that
determines a run; ``SCHEDULES`` names the shipped ones (``tiny`` makes the embedded default
checkpoint). Not to be confused with blendstudy.optimize's recipes, which are sets of inference
switches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class TrainSchedule:
    """Everything that determines a training run (besides the code and the library versions).

    Attributes:
        config: shipped config name (blendstudy.config.load_config).
        seed: torch / numpy seed of initialization, sampling and augmentation.
        train_images, train_seed: size and generator seed of the synthetic train split.
        val_images, val_seed: size and seed of the held-out validation split (another seed, so
            no image is shared with training).
        iterations: optimizer steps (fixed: the run is reproducible, not time-dependent).
        batch_size: images per step.
        lr, weight_decay: AdamW learning rate (1/step) and decoupled weight decay.
        warmup: linear warm-up steps (from lr * 0.001), then cosine decay to lr * final_lr_frac.
        clip_norm: global gradient-norm clip (0 = off).
        checkpoint_period: steps between resumable checkpoints.
        minutes: default wall-clock cap of the training loop, minutes.
    """

    config: str
    seed: int
    train_images: int
    train_seed: int
    val_images: int
    val_seed: int
    iterations: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int
    final_lr_frac: float
    clip_norm: float
    checkpoint_period: int
    minutes: float


SCHEDULES: Dict[str, TrainSchedule] = {
    "tiny": TrainSchedule(config="BlendMask/Tiny_synthetic", seed=0, train_images=2000, train_seed=0,
                          val_images=200, val_seed=1, iterations=1800, batch_size=4, lr=2e-3,
                          weight_decay=1e-4, warmup=150, final_lr_frac=0.02, clip_norm=10.0,
                          checkpoint_period=100, minutes=55.0),
}


def lr_at(it: int, s: TrainSchedule, time_fraction: float = 0.0) -> float:
    """Learning rate (1/step) of step ``it``: linear warm-up from lr/1000 over ``s.warmup`` steps,
    then cosine decay to lr * final_lr_frac. Progress is the larger of the step fraction and
    ``time_fraction`` (elapsed / wall-clock cap): on an unloaded machine the schedule depends on
    the step only (reproducible); when a loaded CPU would hit the cap first, the decay still
    completes before the cap instead of stopping at a high learning rate."""
    if it < s.warmup:
        a = it / max(s.warmup, 1)
        return s.lr * (0.001 * (1 - a) + a)
    progress = max(it / max(s.iterations, 1), min(max(time_fraction, 0.0), 1.0))
    t = (progress * s.iterations - s.warmup) / max(s.iterations - s.warmup, 1)
    t = min(max(t, 0.0), 1.0)
    return s.lr * (s.final_lr_frac + (1 - s.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))
