"""Backend ``reference``: qkernels.reference.fake_quant behind the launcher interface of the other backends."""

from __future__ import annotations

import torch

from .reference import fake_quant as ref


def _write(out, mask, y, m):
    out.copy_(y)
    if mask is None:
        return
    if mask.dtype == torch.bool:
        mask.copy_(m)
    else:  # packed, in out's storage order
        dense = torch.empty_like(out, dtype=torch.bool).copy_(m)
        mask.copy_(ref.pack_bits(ref.storage_view(dense)))


def per_tensor(x, out, mask, scale, zero_point, enabled, quant_min, quant_max, flavour):
    y, m = ref.fake_quant_per_tensor(
        x, scale, zero_point, quant_min, quant_max, enabled=True if enabled is None else enabled, flavour=flavour
    )
    _write(out, mask, y, m)


def per_channel(x, out, mask, scale, zero_point, axis, inner, quant_min, quant_max, flavour, use_fma):
    y, m = ref.fake_quant_per_channel(
        x, scale, zero_point, axis, quant_min, quant_max, flavour=flavour, use_fma=use_fma
    )
    _write(out, mask, y, m)


def backward(grad, mask, out):
    out.copy_(ref.fake_quant_backward(grad, mask))
