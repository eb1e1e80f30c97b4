"""Pure-PyTorch reference of Nagel et al.'s oscillation dampening loss (the official ``DampeningLoss``,
``../shared/research/nagel-oscillations.md`` §4): the spec every backend is tested against.

For a weight quantizer (per tensor, or per channel along ``axis``; integer zero point ``z``), per element in
float32 with ``inv = float32(1 / s)``:

    x      = frozen ? frozen_x_int : clamp(rne(w * inv) + z, qmin, qmax)   (as the fused fake-quant forward)
    w_q    = float32(x - z) * s                                            (the target, no gradient)
    lo     = float32(qmin - z) * s,   hi = float32(qmax - z) * s
    w_c    = min(max(w, lo), hi)
    d      = w_q - w_c,   e = d * d
    g      = -2 * d = 2 (w_c - w_q)
    dw     = lo <= w <= hi ? g : 0                                         (the clip passes the gradient)
    ds     = w < lo ? g * float32(qmin - z) : w > hi ? g * float32(qmax - z) : 0   (through the active bound)

The loss is ``sum(e) / K`` with ``K`` the aggregation's divisor: ``"kernel_mean"`` (default, the official code:
``e`` summed over dim 0 and averaged over the rest) ``numel / size(0)``; ``"sum"`` (the paper's Frobenius norm)
1; ``"mean"`` ``numel``. ``e`` and ``ds`` are summed per quantizer over the fixed blocks of
``make_blocks(dims, REDUCE_TARGET)`` (float32 partials, float64 finish, rounded once to float32); the loss is
``float32(sum_c e_c / K)`` with the per-quantizer sums added in float64. With an upstream gradient ``go`` the
gradients are ``dw = (g_w * float32(go / K))`` in w's dtype and ``dscale = ds_c * float32(go / K)``.

Unclipped elements have ``w_c = w`` and no gradient to ``s``; clipped elements of an unfrozen weight have
``e = 0`` (the target is the bound), so only a frozen weight outside the range pulls on ``s``.
"""

from __future__ import annotations

import torch

from .oscillation_fake_quant import REDUCE_TARGET, _levels, _per_element
from .reduce import finish_sum, make_blocks, reference_partials

__all__ = ["AGGREGATIONS", "divisor", "elements", "forward", "Launchers"]

AGGREGATIONS = ("kernel_mean", "sum", "mean")


def divisor(shape, aggregation: str) -> int:
    """K of the aggregation for a weight of ``shape`` (at least 1-D, non-empty)."""
    numel = 1
    for size in shape:
        numel *= size
    return {"kernel_mean": numel // shape[0], "sum": 1, "mean": numel}[aggregation]


def elements(w, scale, zero_point, dims, quant_min, quant_max, frozen, frozen_x_int):
    """Per-element ``(e, dw_unit, ds_unit)`` float32 on the [B, O, C, I] view (the math in the module docstring,
    before the division by K)."""
    w4 = w.reshape(dims).float()
    s, z = _per_element(scale.float(), dims), _per_element(zero_point.float(), dims)
    _, clamped = _levels(w4, s, z, quant_min, quant_max)
    x = torch.where(frozen.reshape(dims), frozen_x_int.reshape(dims).float(), clamped)
    target = (x - z) * s
    low_level, high_level = quant_min - z, quant_max - z
    lo, hi = low_level * s, high_level * s
    clipped = torch.minimum(torch.maximum(w4, lo), hi)
    d = target - clipped
    g = -2.0 * d
    dw = torch.where((w4 >= lo) & (w4 <= hi), g, torch.zeros_like(g))
    ds = torch.where(w4 < lo, g * low_level, torch.where(w4 > hi, g * high_level, torch.zeros_like(g)))
    return d * d, dw, ds


def forward(w, scale, zero_point, dims, quant_min, quant_max, frozen, frozen_x_int):
    """``(e_sums float32 [C], dw_unit float32 of w's shape, ds_sums float32 [C])``: the per-quantizer sums of
    ``e`` and ``ds`` over the fixed blocks, finished in float64, and ``dw`` before the division by K."""
    e, dw, ds = elements(w, scale, zero_point, dims, quant_min, quant_max, frozen, frozen_x_int)
    blocks = make_blocks(dims, REDUCE_TARGET)
    sums = [finish_sum(reference_partials(v, blocks, "sum"), 1, torch.float32).reshape(-1) for v in (e, ds)]
    return sums[0], dw.reshape(w.shape), sums[1]


class Launchers:
    """The reference backend's adapter of the family's launcher contract (qkernels/oscillation_dampening.py)."""

    @staticmethod
    def forward(w, scale, zero_point, B, O, C, I, quant_min, quant_max, frozen, frozen_x_int, dw):
        e_sums, dw_unit, ds_sums = forward(w, scale, zero_point, (B, O, C, I), quant_min, quant_max, frozen,
                                           frozen_x_int)
        dw.copy_(dw_unit)
        return e_sums, ds_sums
