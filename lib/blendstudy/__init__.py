"""blendstudy: BlendMask inference in plain PyTorch and the instruments of an optimization study."""

__version__ = "0.1.0"
