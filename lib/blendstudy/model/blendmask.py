"""BlendMask assembled from explicit parts, and the one function that builds it from a config."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from blendstudy import ops
from blendstudy.model.basis import ProtoNet
from blendstudy.model.blender import Blender
from blendstudy.model.fcos import FCOS, DecodeSettings, FCOSHead, HeadOutputs, Proposals
from blendstudy.model.fpn import FPN
from blendstudy.model.resnet import ResNet
from blendstudy.options import InferenceOptions


class BlendMask(nn.Module):
    """Inference-only BlendMask. Parameter names equal AdelaiDet's, so official checkpoints load
    unchanged. The stages are separate methods so they can be timed, swapped and compiled:
    backbone -> head -> decode -> bases -> blend (post-processing lives in the pipeline).

    ``options`` (InferenceOptions) are the ones it was built for (`build_model`, `with_options`);
    the blender reads its own from the same record. The model's own:

    lazy_attention: the top layer (BlendMask's attention, a 3x3 conv to bases*A*A channels) runs
    only at the detections left after NMS instead of at every FPN location (`attend`); the same
    numbers up to float rounding, a fraction of the head's work. Off by default (AdelaiDet's order).
    """

    def __init__(self, backbone: FPN, proposal_generator: FCOS, basis_module: ProtoNet,
                 top_layer: nn.Conv2d, blender: Blender, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], input_format: str = "BGR", options: Optional[InferenceOptions] = None):
        super().__init__()
        self.options = options or InferenceOptions()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.basis_module = basis_module
        self.top_layer = top_layer
        self.blender = blender
        self.input_format = input_format
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)

    @property
    def lazy_attention(self) -> bool:
        return self.options.lazy_attention

    def with_options(self, options: InferenceOptions) -> BlendMask:
        """A copy of this model (its weights copied, this one untouched) built for ``options``."""
        parts = copy.deepcopy([self.backbone, self.proposal_generator, self.basis_module, self.top_layer])
        model = BlendMask(*parts, self.blender.with_options(options), self.pixel_mean.flatten().tolist(),
                          self.pixel_std.flatten().tolist(), self.input_format, options)
        return model.to(self.pixel_mean.device).train(self.training)

    @property
    def size_divisibility(self) -> int:
        return self.backbone.size_divisibility

    @property
    def device(self) -> torch.device:
        return self.top_layer.weight.device

    def extract_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone + FPN on the normalized, padded batch (N, 3, H, W)."""
        return self.backbone(images)

    def predict_head(self, features: Dict[str, torch.Tensor]) -> HeadOutputs:
        if self.lazy_attention:
            return self.proposal_generator(features, None, keep_box_towers=True)
        return self.proposal_generator(features, self.top_layer)

    def decode(self, head: HeadOutputs, image_sizes: Sequence[Tuple[int, int]]) -> List[Proposals]:
        proposals = self.proposal_generator.decode(head, image_sizes)
        return [self.attend(head, p, i) for i, p in enumerate(proposals)]

    def attend(self, head: HeadOutputs, proposals: Proposals, image: int = 0) -> Proposals:
        """Fill in the attention of `image`'s proposals from the kept bbox towers when the head
        skipped the top layer (lazy_attention); unchanged otherwise."""
        if not head.box_towers or head.top_feats:
            return proposals
        if proposals.cells is None:
            raise ValueError("lazy attention needs the proposals' cells (set by both decoders)")
        feats = ops.conv_at(self.top_layer, head.box_towers, proposals.levels, proposals.cells, image)
        return replace(proposals, top_feats=feats)

    def compute_bases(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.basis_module(features)

    def blend(self, bases: torch.Tensor, proposals: List[Proposals]) -> List[torch.Tensor]:
        return self.blender(bases, proposals)

    def forward(self, images: torch.Tensor, image_sizes: Sequence[Tuple[int, int]]):
        """Returns [(Proposals, mask probabilities (K, R, R))] per image, in input pixels."""
        features = self.extract_features(images)
        head = self.predict_head(features)
        proposals = self.decode(head, image_sizes)
        bases = self.compute_bases(features)
        masks = self.blend(bases, proposals)
        return list(zip(proposals, masks))


def build_model(cfg: Any, options: Optional[InferenceOptions] = None) -> BlendMask:
    """The one place an AdelaiDet config (blendstudy.config.Config) becomes constructor arguments;
    ``options``: how the model computes (InferenceOptions; default: as AdelaiDet). Weights are random
    (AdelaiDet's init); load a checkpoint with blendstudy.checkpoint. The options that change weights
    (fold_bn, precision, compile) act after the checkpoint is in: blendstudy.transforms.prepare_model."""
    m = cfg.MODEL
    r = m.RESNETS
    bottom_up = ResNet(depth=r.DEPTH, out_features=r.OUT_FEATURES, norm=r.NORM,
                       stem_out_channels=r.STEM_OUT_CHANNELS, res2_out_channels=r.RES2_OUT_CHANNELS,
                       num_groups=r.NUM_GROUPS, width_per_group=r.WIDTH_PER_GROUP,
                       stride_in_1x1=r.STRIDE_IN_1X1, res5_dilation=r.RES5_DILATION,
                       deform_on_per_stage=r.DEFORM_ON_PER_STAGE, deform_modulated=r.DEFORM_MODULATED,
                       deform_num_groups=r.DEFORM_NUM_GROUPS, deform_interval=r.DEFORM_INTERVAL)
    fcos = m.FCOS
    backbone = FPN(bottom_up, m.FPN.IN_FEATURES, m.FPN.OUT_CHANNELS, norm=m.FPN.NORM,
                   top_levels=fcos.TOP_LEVELS, fuse_type=m.FPN.FUSE_TYPE)
    missing = [f for f in fcos.IN_FEATURES if f not in backbone.out_features]
    if missing:
        raise ValueError(f"MODEL.FCOS.IN_FEATURES {missing} not produced by the backbone "
                         f"({backbone.out_features}); check MODEL.FCOS.TOP_LEVELS")
    strides = [backbone.strides[f] for f in fcos.IN_FEATURES]
    if list(fcos.FPN_STRIDES) != strides:
        raise ValueError(f"MODEL.FCOS.FPN_STRIDES {list(fcos.FPN_STRIDES)} != feature strides {strides}")
    head = FCOSHead(m.FPN.OUT_CHANNELS, fcos.NUM_CLASSES, len(fcos.IN_FEATURES),
                    num_cls_convs=fcos.NUM_CLS_CONVS, num_box_convs=fcos.NUM_BOX_CONVS,
                    num_share_convs=fcos.NUM_SHARE_CONVS, norm=fcos.NORM, use_scale=fcos.USE_SCALE,
                    prior_prob=fcos.PRIOR_PROB)
    settings = DecodeSettings(strides=strides, score_thresh=fcos.INFERENCE_TH_TEST,
                              pre_nms_topk=fcos.PRE_NMS_TOPK_TEST, post_nms_topk=fcos.POST_NMS_TOPK_TEST,
                              nms_thresh=fcos.NMS_TH, thresh_with_ctr=fcos.THRESH_WITH_CTR)
    bm = m.BASIS_MODULE
    basis = ProtoNet(m.FPN.OUT_CHANNELS, bm.IN_FEATURES, num_bases=bm.NUM_BASES, convs_dim=bm.CONVS_DIM,
                     num_convs=bm.NUM_CONVS, norm=bm.NORM,
                     semantic_classes=bm.NUM_CLASSES if bm.LOSS_ON else None)
    blend_cfg = m.BLENDMASK
    if len(blend_cfg.POOLER_SCALES) != 1:
        raise ValueError("MODEL.BLENDMASK.POOLER_SCALES: only a single pooling level is supported")
    attn_len = bm.NUM_BASES * blend_cfg.ATTN_SIZE * blend_cfg.ATTN_SIZE
    top_layer = nn.Conv2d(m.FPN.OUT_CHANNELS, attn_len, 3, 1, 1)
    nn.init.normal_(top_layer.weight, std=0.01)
    nn.init.constant_(top_layer.bias, 0)
    blender = Blender(bm.NUM_BASES, attn_size=blend_cfg.ATTN_SIZE,
                      bottom_resolution=blend_cfg.BOTTOM_RESOLUTION,
                      pooler_scale=float(blend_cfg.POOLER_SCALES[0]),
                      sampling_ratio=blend_cfg.POOLER_SAMPLING_RATIO,
                      aligned=blend_cfg.POOLER_TYPE == "ROIAlignV2", top_interp=blend_cfg.TOP_INTERP,
                      options=options)
    model = BlendMask(backbone, FCOS(head, fcos.IN_FEATURES, settings), basis, top_layer, blender,
                      m.PIXEL_MEAN, m.PIXEL_STD, input_format=cfg.INPUT.FORMAT, options=options)
    return model.eval()
