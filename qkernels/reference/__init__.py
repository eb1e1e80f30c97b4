"""Pure-PyTorch references: the specification of every op family, one module per family."""

from . import fake_quant

__all__ = ["fake_quant"]
