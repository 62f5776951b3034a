"""End-to-end inference: detectron2 DefaultPredictor's pre-processing, the model, its post-processing.

One image in (BGR uint8 HxWx3, as read_image / cv2.imread give it), `Detections` out, in pixels of
the original image. Every step is its own method so the profiler times exactly what runs. The
optimization switches (blendstudy.optimize) change behaviour only through the InferenceOptions the
pipeline and its model are built with: the pipeline reads the pre- and post-processing fields
(resize, decode, pad_multiple, raw_masks, dtype, channels_last), the model those it was constructed
with (blendstudy.model, blendstudy.transforms).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from blendstudy import ops
from blendstudy.model.blendmask import BlendMask
from blendstudy.model.decode_sync_free import decode_sync_free
from blendstudy.model.fcos import HeadOutputs, Proposals
from blendstudy.options import DTYPES, InferenceOptions
from blendstudy.structures import Detections

_NO_ANTIALIAS: set = set()

#: The dense part run offline: the padded, normalised (1, 3, H, W) float32 batch in; the FCOS head
#: outputs (attention included) and the bases out, as the model's own calls give them.
DenseRunner = Callable[[torch.Tensor], Tuple[HeadOutputs, torch.Tensor]]


def _antialias_supported(device: torch.device) -> bool:
    return device.type not in _NO_ANTIALIAS


#: the pipeline's options are the InferenceOptions (one record for the pipeline and its model)
PipelineOptions = InferenceOptions


def resized_shape(h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_output_shape: (new_h, new_w) with the short side at
    `short_edge` unless the long side would exceed `max_size`; rounded half up."""
    size = short_edge * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


class Pipeline:
    """Callable: `pipeline(image_bgr) -> Detections`. Step methods are public for profiling."""

    def __init__(self, model: BlendMask, min_size: int = 800, max_size: int = 1333,
                 options: Optional[InferenceOptions] = None, dense: Optional[DenseRunner] = None):
        self.model = model.eval()
        #: an offline runner of the network's dense part (blendstudy.backends), or None: the model
        self.dense = dense
        #: what build_pipeline did to make this pipeline (switches, skipped switches, compile ...)
        self.recipe_info: Dict[str, Any] = {}
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        #: how it runs (checked when the record was made); the model was built with the same record
        self.options: InferenceOptions = options or getattr(model, "options", None) or InferenceOptions()

    @classmethod
    def from_config(cls, cfg: Any, model: BlendMask, options: Optional[InferenceOptions] = None,
                    dense: Optional[DenseRunner] = None) -> Pipeline:
        return cls(model, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, options, dense)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.options.dtype]

    @property
    def pad_multiple(self) -> int:
        return self.options.pad_multiple or self.model.size_divisibility

    # ---- pre-processing -------------------------------------------------------------------
    def target_size(self, h: int, w: int) -> Tuple[int, int]:
        if self.min_size == 0:
            return h, w
        return resized_shape(h, w, self.min_size, self.max_size)

    def resize_cpu(self, image: np.ndarray) -> np.ndarray:
        """PIL bilinear resize on uint8 (detectron2's ResizeTransform); identity for "device"."""
        if self.options.resize == "device":
            return image
        h, w = image.shape[:2]
        nh, nw = self.target_size(h, w)
        if (nh, nw) == (h, w):
            return image
        return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))

    def to_device(self, image: np.ndarray) -> torch.Tensor:
        """HWC uint8 -> CHW on the device (uint8 when the device resizes: 4x less to copy)."""
        if self.model.input_format == "RGB":
            image = image[:, :, ::-1]
        if self.options.resize == "device" and self.device.type == "cpu":
            # the HWC array seen as CHW with channels-last strides: no copy (the uint8 resize
            # reads channels-last anyway; a CHW copy would be converted back to it)
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.options.resize == "device":
            return t.to(self.device, non_blocking=True)
        return t.to(self.device, non_blocking=True).float()

    def resize_device(self, image: torch.Tensor) -> torch.Tensor:
        """Bilinear (half-pixel centres) on the device; CHW out. When shrinking, the filter
        widens with the scale (antialias) as PIL's BILINEAR does; without it a 3840x2304 image
        aliases badly. Where the device lacks the antialiased kernel, plain bilinear is used.
        On the CPU the uint8 image is resized as uint8 and stays uint8 (whole grey levels, as
        PIL gives; channels-last strides): normalize_pad converts it while it normalises.
        Elsewhere in float, float out."""
        if self.options.resize != "device":
            return image
        h, w = image.shape[-2:]
        nh, nw = self.target_size(h, w)
        cpu_uint8 = image.dtype == torch.uint8 and image.device.type == "cpu"
        if (nh, nw) == (h, w):
            return image if cpu_uint8 else image.float()
        shrink = nh < h or nw < w
        if cpu_uint8:
            # the CPU's vectorised uint8 kernel (channels-last input): PIL's own arithmetic, the
            # same filter and rounding, so the result is within 2 grey levels of PIL's and faster
            # than the float path (which also needs 3 float copies of the image)
            x = image[None].contiguous(memory_format=torch.channels_last)
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=shrink)
            return x[0]
        x = image.float()
        if shrink and _antialias_supported(x.device):
            try:
                return F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False,
                                     antialias=True)[0]
            except (RuntimeError, NotImplementedError):
                _NO_ANTIALIAS.add(str(x.device.type))
        return F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]

    def normalize_pad(self, image: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(x - mean) / std, zero-pad bottom/right to the pad multiple. Returns the (1, 3, H', W')
        batch in the compute dtype and the unpadded size (h, w). `image`: float, or uint8 (the
        CPU's device resize), converted by the subtraction itself: float(x) - mean either way."""
        c, h, w = image.shape[-3:]
        m = self.pad_multiple
        ph, pw = ops.ceil_to_multiple(h, m), ops.ceil_to_multiple(w, m)
        # written in place into the padded (and, with channels_last, NHWC) batch: one image-sized
        # allocation instead of four; the same two float ops, so the same values
        fmt = torch.channels_last if self.options.channels_last else torch.contiguous_format
        dt = torch.promote_types(image.dtype, self.model.pixel_mean.dtype)
        x = torch.empty((1, c, ph, pw), dtype=dt, device=image.device, memory_format=fmt)
        if ph > h:
            x[:, :, h:, :].zero_()
        if pw > w:
            x[:, :, :h, w:].zero_()
        inner = x[0, :, :h, :w]
        torch.sub(image, self.model.pixel_mean, out=inner)
        inner.div_(self.model.pixel_std)
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x, (int(h), int(w))

    def resize(self, image: np.ndarray) -> torch.Tensor:
        """The resized CHW image on the device, before normalisation (float, or uint8 from the
        CPU's device resize): resize_cpu -> to_device -> resize_device."""
        return self.resize_device(self.to_device(self.resize_cpu(image)))

    def prepare(self, image: np.ndarray) -> Tuple[torch.Tensor, Tuple[int, int]]:
        return self.normalize_pad(self.resize(image))

    # ---- network --------------------------------------------------------------------------
    def head_in_float(self, head: HeadOutputs) -> HeadOutputs:
        if self.dtype == torch.float32:
            return head
        return replace(head, logits=[t.float() for t in head.logits], box_reg=[t.float() for t in head.box_reg],
                       ctrness=[t.float() for t in head.ctrness])

    def decode(self, head: HeadOutputs, input_size: Tuple[int, int]) -> Proposals:
        head = self.head_in_float(head)
        if self.options.decode == "sync_free":
            props = decode_sync_free(head, [input_size], self.model.proposal_generator.settings)[0]
            return self.model.attend(head, props)
        return self.model.decode(head, [input_size])[0]

    def blend(self, bases: torch.Tensor, proposals: Proposals) -> torch.Tensor:
        """Mask probabilities (K, R, R) in float32: ROIAlign coordinates lose pixels in 16-bit."""
        props = proposals
        if props.top_feats.dtype != torch.float32:
            props = replace(props, top_feats=props.top_feats.float())
        return self.model.blend(bases.float(), [props])[0]

    # ---- post-processing ------------------------------------------------------------------
    def rescale(self, proposals: Proposals, masks: torch.Tensor, input_size: Tuple[int, int],
                output_size: Tuple[int, int], fixed_shape: bool = False
                ) -> Tuple[Proposals, torch.Tensor, torch.Tensor]:
        """detectron2's detector_postprocess on boxes: scale to the output size, clip, and drop
        empty boxes. Returns (proposals, mask probabilities, boxes in output pixels)."""
        oh, ow = output_size
        ih, iw = input_size
        scale = torch.tensor([ow / iw, oh / ih, ow / iw, oh / ih]).to(proposals.boxes.device)
        boxes = proposals.boxes * scale
        boxes = torch.stack([boxes[:, 0].clamp(0, ow), boxes[:, 1].clamp(0, oh),
                             boxes[:, 2].clamp(0, ow), boxes[:, 3].clamp(0, oh)], dim=1)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if proposals.valid is not None:
            nonempty = nonempty & proposals.valid
        if fixed_shape:
            # keep shapes fixed until extraction; invalid rows are dropped there
            return replace(proposals, valid=nonempty), masks, boxes
        keep = torch.nonzero(nonempty).squeeze(1)
        return proposals.select(keep), masks[keep], boxes[keep]

    def paste(self, masks: torch.Tensor, boxes: torch.Tensor, output_size: Tuple[int, int],
              valid: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        if self.options.raw_masks:
            return None
        return ops.paste_masks(masks, boxes, output_size, threshold=0.5, valid=valid)

    def extract(self, proposals: Proposals, boxes: torch.Tensor, masks: torch.Tensor,
                full_masks: Optional[torch.Tensor], output_size: Tuple[int, int]) -> Detections:
        """Move results to the host as Detections (the one sync of the sync-free path)."""
        if proposals.valid is not None:
            keep = proposals.valid.cpu()
            boxes, masks = boxes.cpu()[keep], masks.cpu()[keep]
            scores, classes = proposals.scores.cpu()[keep], proposals.classes.cpu()[keep]
            full = full_masks.cpu()[keep] if full_masks is not None else None
        else:
            boxes, masks = boxes.cpu(), masks.cpu()
            scores, classes = proposals.scores.cpu(), proposals.classes.cpu()
            full = full_masks.cpu() if full_masks is not None else None
        return Detections(boxes=boxes.float(), scores=scores.float(), classes=classes.long(),
                          image_size=output_size, masks=full,
                          raw_masks=masks.float() if self.options.raw_masks else None)

    # ---- all together: the ONE step sequence --------------------------------------------------
    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Detections:
        return self.run_steps(image)

    @torch.no_grad()
    def run_steps(self, image: np.ndarray, mark: Optional[Callable[[str], None]] = None) -> Detections:
        """The pipeline's steps in order; ``mark(step)`` is called right after each one (the
        profiler synchronises the device and reads its clock there; the FLOP count and plain calls
        pass nothing). Step names are those of STEPS (``read`` is the caller's), or
        ``dense network`` for the backbone, head and bases together when an offline ``dense``
        runner replaces the model's network."""
        mark = mark or _no_mark
        output_size = (int(image.shape[0]), int(image.shape[1]))
        x = self.resize_cpu(image)
        if self.options.resize == "pil":
            mark("resize")
        x = self.to_device(x)
        mark("to-device")
        if self.options.resize == "device":
            x = self.resize_device(x)
            mark("resize")
        batch, input_size = self.normalize_pad(x)
        mark("normalize+pad")
        if self.dense is not None:
            head, bases = self.dense(batch)
            mark("dense network")
            proposals = self.decode(head, input_size)
            mark("decode+NMS")
        else:
            features = self.model.extract_features(batch)
            mark("backbone+FPN")
            head = self.model.predict_head(features)
            mark("FCOS head")
            proposals = self.decode(head, input_size)
            mark("decode+NMS")
            bases = self.model.compute_bases(features)
            mark("basis module")
        det = self._finish(proposals, bases, input_size, output_size, mark)
        if not bool(det.extras.get("decode_converged", True)):
            # the fixed-shape NMS did not reach its fixed point on this image (very rare): redo
            # the decode exactly; the result is then identical to the reference path
            proposals = self.model.decode(self.head_in_float(head), [input_size])[0]
            det = self._finish(proposals, bases, input_size, output_size, _no_mark)
            det.extras["decode_fallback"] = True
        return det

    def _finish(self, proposals: Proposals, bases: torch.Tensor, input_size: Tuple[int, int],
                output_size: Tuple[int, int], mark: Callable[[str], None]) -> Detections:
        """blend -> rescale -> paste -> extract for one image's proposals."""
        converged = proposals.converged
        masks = self.blend(bases, proposals)
        mark("blender")
        proposals, masks, boxes = self.rescale(proposals, masks, input_size, output_size,
                                               fixed_shape=proposals.valid is not None)
        full = self.paste(masks, boxes, output_size, proposals.valid)
        mark("mask paste")
        det = self.extract(proposals, boxes, masks, full, output_size)
        mark("result extraction")
        if converged is not None:
            det.extras["decode_converged"] = bool(converged)
        return det

    def run_many(self, images: List[np.ndarray]) -> List[Detections]:
        return [self(im) for im in images]


def _no_mark(step: str) -> None:
    return None


#: The steps of one image, in order, as Pipeline.run_steps marks them ("read" is the file read
#: before it); the profiler and the FLOP count walk the same sequence. (The study's stages are
#: P0..P6; these are the steps of one inference.)
STEPS = ["read", "resize", "to-device", "normalize+pad", "backbone+FPN", "FCOS head", "decode+NMS",
         "basis module", "blender", "mask paste", "result extraction"]
