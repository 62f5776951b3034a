"""The native BlendMask: ResNet + FPN, FCOS head, ProtoNet bases, blender."""

from blendstudy.model.blendmask import BlendMask, build_model
from blendstudy.model.fcos import DecodeSettings, HeadOutputs, Proposals

__all__ = ["BlendMask", "build_model", "DecodeSettings", "HeadOutputs", "Proposals"]
