"""Detection ops in plain PyTorch: box IoU, NMS, ROIAlign, mask pasting, a conv at chosen cells.

Semantics follow torchvision's kernels and detectron2's wrappers exactly (read, not copied), so the
native model gives AdelaiDet's answers without compiled extensions. Where a working torchvision is
importable its kernels can be used instead, per call (`impl="torchvision"` of nms, batched_nms and
roi_align; blendstudy.ops.kernels); tests check both agree.

By kind: boxes (area, IoU, NMS, the k-th score), rois (ROIAlign, its sampler, rois of boxes), paste
(mask pasting), cells (a conv at chosen cells), resize (bilinear as a matrix, padded sizes),
kernels (native or torchvision), deform_conv (DCNv1/v2). This module only re-exports them.
"""

from blendstudy.ops.boxes import batched_nms, box_area, box_iou, kth_largest_threshold, nms
from blendstudy.ops.cells import conv_at
from blendstudy.ops.kernels import IMPLS, kernels_for, torchvision_ops
from blendstudy.ops.paste import paste_masks
from blendstudy.ops.resize import bilinear_matrix, ceil_to_multiple
from blendstudy.ops.rois import RoiSampler, boxes_to_rois, roi_align

__all__ = ["IMPLS", "RoiSampler", "batched_nms", "bilinear_matrix", "box_area", "box_iou",
           "boxes_to_rois", "ceil_to_multiple", "conv_at", "kernels_for", "kth_largest_threshold", "nms",
           "paste_masks", "roi_align", "torchvision_ops"]
