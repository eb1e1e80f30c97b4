"""Nagel et al.'s oscillation dampening loss, fused: value and gradients from one pass over the weight.

    loss = qkernels.oscillation_dampening(w, scale, zero_point, axis, quant_min, quant_max, frozen, frozen_x_int,
                                          aggregation="kernel_mean")

``(stopgrad(q(w)) − clip(w, s·(qmin − z), s·(qmax − z)))²`` summed and divided by the aggregation's ``K``
(``kernel_mean``: numel / size(0), the official default; ``sum``: 1; ``mean``: numel), with ``q(w)`` the fused
fake-quant forward's value (frozen integers included). The math is ``qkernels.reference.oscillation_dampening``.
Gradients to the weight (inside the clip range) and to the scale (through an active clip bound); the sums are
deterministic (fixed blocks, float64 finish).

Registered op (namespace ``qkernels``): ``oscillation_dampening(Tensor weight, Tensor scale, Tensor zero_point,
int? axis, int quant_min, int quant_max, Tensor frozen, Tensor frozen_x_int, str aggregation) -> (Tensor loss,
Tensor dweight_unit, Tensor dscale_unit)`` (the last two, the gradients for an upstream gradient of K, are
non-differentiable outputs kept for the backward), with a fake kernel and autograd.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import backends
from ._launchers import LauncherContract
from ._shared import _fail, _flat_qparam
from .oscillation_fake_quant import _check_qparams, _dims, _zero_point
from .reference.oscillation_dampening import AGGREGATIONS, divisor

__all__ = ["oscillation_dampening", "AGGREGATIONS"]

_FAMILY = "oscillation_dampening"
_OP = "oscillation_dampening"

# The family's launcher contract (qkernels/_launchers.py): w, frozen (bool), frozen_x_int (int8) and dw (float32)
# are contiguous and walked as [B, O, C, I] (B == 1; quantizer c); scale and zero point float32 [C] (the zero
# point integral). forward writes dw (the weight's gradient before the division by K) and returns the
# per-quantizer sums of e and ds, float32 [C] each, from the fixed blocks of make_blocks(dims, REDUCE_TARGET)
# finished in float64.
LAUNCHERS = LauncherContract(_FAMILY, {
    "forward": "(Tensor w, Tensor scale, Tensor zero_point, int B, int O, int C, int I, int quant_min, "
               "int quant_max, Tensor frozen, Tensor frozen_x_int, Tensor(a!) dw) -> (Tensor, Tensor)",
})


def _check(weight, scale, zero_point, axis, quant_min, quant_max, frozen, frozen_x_int, aggregation):
    _check_qparams(_OP, weight, scale, zero_point, axis, quant_min, quant_max)
    if weight.dim() == 0 or weight.numel() == 0:
        _fail(f"{_OP}: `weight` must have at least one dimension and one element, got shape {tuple(weight.shape)}")
    for name, t, dtype in (("frozen", frozen, torch.bool), ("frozen_x_int", frozen_x_int, torch.int8)):
        if not isinstance(t, Tensor) or t.dtype != dtype or t.shape != weight.shape or t.device != weight.device \
                or not t.is_contiguous():
            _fail(f"{_OP}: `{name}` must be a contiguous {dtype} tensor of `weight`'s shape {tuple(weight.shape)}")
    if aggregation not in AGGREGATIONS:
        _fail(f"{_OP}: `aggregation` must be one of {AGGREGATIONS}, got {aggregation!r}")


def _forward_impl(weight, scale, zero_point, axis, quant_min, quant_max, frozen, frozen_x_int, aggregation):
    _check(weight, scale, zero_point, axis, quant_min, quant_max, frozen, frozen_x_int, aggregation)
    dw = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
    e_sums, ds_sums = backends.select(weight, quant_min, quant_max, _FAMILY).forward(
        weight.detach(), _flat_qparam(scale), _zero_point(zero_point), *_dims(weight, axis), quant_min, quant_max, frozen,
        frozen_x_int, dw)
    loss = (e_sums.double().sum() / divisor(weight.shape, aggregation)).float()
    return loss, dw, ds_sums.view(scale.shape)


def _forward_fake(weight, scale, zero_point, axis, quant_min, quant_max, frozen, frozen_x_int, aggregation):
    _check(weight, scale, zero_point, axis, quant_min, quant_max, frozen, frozen_x_int, aggregation)
    return (weight.new_empty((), dtype=torch.float32), torch.empty(weight.shape, dtype=torch.float32,
                                                                   device=weight.device),
            torch.empty(scale.shape, dtype=torch.float32, device=scale.device))


def _setup_context(ctx, inputs, output):
    weight, scale = inputs[:2]
    _, dw_unit, ds_unit = output
    ctx.mark_non_differentiable(dw_unit, ds_unit)
    ctx.save_for_backward(dw_unit, ds_unit)
    ctx.k, ctx.weight_dtype, ctx.scale_dtype = divisor(weight.shape, inputs[8]), weight.dtype, scale.dtype


def _backward(ctx, grad, _dw_unit_grad, _ds_unit_grad):
    dw_unit, ds_unit = ctx.saved_tensors
    factor = grad.float() / ctx.k
    dw = (dw_unit * factor).to(ctx.weight_dtype) if ctx.needs_input_grad[0] else None
    ds = (ds_unit * factor).to(ctx.scale_dtype) if ctx.needs_input_grad[1] else None
    return (dw, ds) + (None,) * 7


_lib = torch.library.Library("qkernels", "FRAGMENT")
_lib.define(
    "oscillation_dampening(Tensor weight, Tensor scale, Tensor zero_point, int? axis, int quant_min, int quant_max, "
    "Tensor frozen, Tensor frozen_x_int, str aggregation) -> (Tensor, Tensor, Tensor)"
)
_lib.impl("oscillation_dampening", _forward_impl, "CompositeExplicitAutograd")
torch.library.register_fake("qkernels::oscillation_dampening", _forward_fake, lib=_lib)
torch.library.register_autograd("qkernels::oscillation_dampening", _backward, setup_context=_setup_context,
                                lib=_lib)
_op = torch.ops.qkernels.oscillation_dampening


def oscillation_dampening(weight: Tensor, scale: Tensor, zero_point: Tensor, axis: Optional[int], quant_min: int,
                          quant_max: int, frozen: Tensor, frozen_x_int: Tensor,
                          aggregation: str = "kernel_mean") -> Tensor:
    """The dampening loss of one weight (a float32 0-dim tensor; see the module docstring), differentiable in
    ``weight`` and ``scale``. ``frozen``/``frozen_x_int``: the quantizer's freezing state (bool/int8, the
    weight's shape; all False for a quantizer that does not freeze)."""
    return _op(weight, scale, zero_point, axis, quant_min, quant_max, frozen, frozen_x_int, aggregation)[0]
