"""Pure-PyTorch references: the specification of every op family, one module per family."""

from . import fake_quant, fake_quant_learnable, fused_observer

__all__ = ["fake_quant", "fake_quant_learnable", "fused_observer"]
