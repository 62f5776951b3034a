"""Training of the native BlendMask: the embedded default checkpoint (``weights/tiny_synthetic.pth``).

Training is outside the study's inference path: the inference modules have no training branches,
so this package composes the model's parts and adds AdelaiDet's losses.

  schedule   TrainSchedule, the hyper-parameter sets (SCHEDULES) and the learning rate per step
  samples    the synthetic splits, augmented samples with their targets, batches
  targets    FCOS target assignment
  losses     the FCOS, mask and semantic losses of a batch
  evaluate   COCO AP through the real inference path (blendstudy.pipeline)
  loop       the training loop: checkpoint, resumable checkpoints, metrics JSON
  cli        ``python -m blendstudy.training --schedule tiny --out ...``
"""

from .schedule import SCHEDULES, TrainSchedule

__all__ = ["SCHEDULES", "TrainSchedule"]
