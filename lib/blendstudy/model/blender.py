"""BlendMask's blender: ROIAlign the bases in each box, blend with the per-instance attention."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from blendstudy import ops
from blendstudy.model.fcos import Proposals
from blendstudy.options import InferenceOptions


class Blender:
    """Stateless (no parameters): pooled bases x softmax(upsampled attention), summed over bases.
    Its geometry comes from the config; how it computes from ``options`` (InferenceOptions), read
    here at construction into ``upsample`` and ``chunk``.

    upsample (options.blend_upsample): "interpolate" = F.interpolate, as AdelaiDet; "matmul" = the
    bilinear A x A -> R x R upsampling of the attention as two small matmuls with the fixed
    interpolation weights (blendstudy.ops.bilinear_matrix; the blend_matmul switch): the same
    weights, float rounding apart. Only bilinear top_interp has the matmul form.

    chunk (options.blend_chunk): None = all detections at once, as AdelaiDet; N = blend N detections
    at a time into one output tensor (the blend_chunks switch). The result is the same; the
    temporaries (pooled bases, upsampled attention, its softmax, their product: K x num_bases x R x R
    floats each) shrink to N/K of that. With a hundred detections each is several megabytes: on a
    CPU, glibc hands blocks that large back to the kernel when they are freed and page-faults them in
    again on the next image; a small N keeps them in the heap and in cache.
    """

    def __init__(self, num_bases: int, attn_size: int = 14, bottom_resolution: int = 56,
                 pooler_scale: float = 0.25, sampling_ratio: int = 1, aligned: bool = True,
                 top_interp: str = "bilinear", options: Optional[InferenceOptions] = None):
        options = options or InferenceOptions()
        self.upsample: str = options.blend_upsample
        self.chunk: Optional[int] = options.blend_chunk
        self.num_bases = num_bases
        self.attn_size = attn_size
        self.resolution = bottom_resolution
        self.pooler_scale = pooler_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.top_interp = top_interp

    def with_options(self, options: InferenceOptions) -> Blender:
        """A blender of the same geometry built for ``options``."""
        return Blender(self.num_bases, self.attn_size, self.resolution, self.pooler_scale, self.sampling_ratio,
                       self.aligned, self.top_interp, options=options)

    def pool(self, bases: torch.Tensor, proposals: List[Proposals]) -> torch.Tensor:
        """(K, num_bases, R, R) bases cropped to every proposal box (ROIAlign)."""
        return self.pool_rois(bases, ops.boxes_to_rois([p.boxes for p in proposals]))

    def pool_rois(self, bases: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """pool() for (K, 5) rois [batch index, x0, y0, x1, y1]."""
        r = self.resolution
        return ops.roi_align(bases, rois, (r, r), self.pooler_scale, self.sampling_ratio, self.aligned)

    def merge(self, pooled: torch.Tensor, attns: torch.Tensor) -> torch.Tensor:
        """Mask logits (K, R, R) from pooled bases (K, B, R, R) and attentions (K, B*A*A)."""
        k, b, h, w = pooled.shape
        coeffs = attns.reshape(k, -1, self.attn_size, self.attn_size)
        if self.upsample == "matmul" and self.top_interp == "bilinear":
            mh = ops.bilinear_matrix(self.attn_size, h, coeffs.dtype, coeffs.device)
            mw = mh if w == h else ops.bilinear_matrix(self.attn_size, w, coeffs.dtype, coeffs.device)
            coeffs = torch.matmul(torch.matmul(mh, coeffs), mw.t())
        elif self.top_interp == "nearest":
            coeffs = F.interpolate(coeffs, (h, w), mode="nearest")
        else:
            coeffs = F.interpolate(coeffs, (h, w), mode=self.top_interp, align_corners=False)
        return (pooled * coeffs.softmax(dim=1)).sum(dim=1)

    def __call__(self, bases: torch.Tensor, proposals: List[Proposals]) -> List[torch.Tensor]:
        """Mask probabilities (Ki, R, R) per image (sigmoid of the blended logits)."""
        counts = [len(p) for p in proposals]
        r = self.resolution
        if sum(counts) == 0:
            return [bases.new_zeros((0, r, r)) for _ in proposals]
        attns = torch.cat([p.top_feats for p in proposals], dim=0)
        total = attns.shape[0]
        if not self.chunk or total <= self.chunk:
            probs = self.merge(self.pool(bases, proposals), attns).sigmoid()
        else:
            rois = ops.boxes_to_rois([p.boxes for p in proposals])
            probs = bases.new_empty((total, r, r))
            if self.sampling_ratio == 1:
                # all sample grids at once; the outside-the-map mask (0/1, the same for every basis)
                # applied to the blended logits: merge is linear in the pooled bases, so this is
                # pool -> mask -> merge bit for bit, on 1/num_bases of the values
                sampler = ops.RoiSampler(bases, rois, (r, r), self.pooler_scale, self.aligned)
                for s in range(0, total, self.chunk):
                    e = s + self.chunk
                    logits = self.merge(sampler.sample(s, e), attns[s:e]) * sampler.inside(s, e)[:, 0]
                    torch.sigmoid(logits, out=probs[s:e])
            else:
                for s in range(0, total, self.chunk):
                    e = s + self.chunk
                    torch.sigmoid(self.merge(self.pool_rois(bases, rois[s:e]), attns[s:e]), out=probs[s:e])
        return list(torch.split(probs, counts))
