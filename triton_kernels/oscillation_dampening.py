"""Triton kernels of Nagel et al.'s oscillation dampening loss (installed as
``qkernels.triton_kernels.oscillation_dampening``).

They implement ``qkernels.reference.oscillation_dampening`` (the spec: its docstring states the math), also under
``TRITON_INTERPRET=1`` on CPU tensors. Per element, in float32, with inv = div_rn(1, s) (= torch.reciprocal) and
the integral float zero point z of quantizer c:

    x   = frozen ? frozen_x_int : clamp(rne(w * inv) + z, qmin, qmax)
    lo  = (qmin - z) * s,  hi = (qmax - z) * s,  w_c = min(max(w, lo), hi)   (NaN stays NaN, as torch)
    d   = (x - z) * s - w_c,  e = d * d,  g = -2 * d
    dw  = lo <= w <= hi ? g : 0
    ds  = w < lo ? g * (qmin - z) : w > hi ? g * (qmax - z) : 0

compiled with ``enable_fp_fusion=False`` (no product is contracted into an add, as in the spec's tensor ops).

Layout and blocking are the sibling family's (``oscillation_fake_quant``: its plans, block geometry, qparams and
launch): w, frozen, frozen_x_int and dw are contiguous, walked as [B, O, C, I] (B == 1), quantizer c, and each
program covers whole blocks of ``make_blocks(dims, REDUCE_TARGET)`` in segment, row or run mode. A program writes
dw of its elements and, per block, the float32 partials of e and ds (lanes of float32 adds in the program's fixed
order, reduced in float64 and rounded once, ``_reduce.sum_lanes``) at [0, p, c] of two [B, P, C] arrays, which
``finish_sum`` adds in float64 in order p = 0..P-1: the reference's layout, and the same bits on every run.
"""

import itertools

import torch
import triton
import triton.language as tl

from ..reference.reduce import finish_sum
from ._reduce import sum_lanes
from .fake_quant import _round_half_even
from .oscillation_fake_quant import _launch, _plan, _program_id, _qparams, _row_block, _run_block

__all__ = ["forward"]


@triton.jit
def _dampen_tile(io, offs, m, s, inv, z, qmin, qmax):
    """Writes dw of the tile and returns its (e, ds), float32, 0 outside m."""
    w_ptr, frozen_ptr, fx_ptr, dw_ptr = io
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    q = _round_half_even(w * inv) + z
    clamped = tl.where(q < qmin, qmin, tl.where(q > qmax, qmax, q))  # NaN stays NaN, as torch.clamp
    frozen = tl.load(frozen_ptr + offs, mask=m, other=0) != 0
    x = tl.where(frozen, tl.load(fx_ptr + offs, mask=m, other=0).to(tl.float32), clamped)
    low = qmin - z
    high = qmax - z
    lo = low * s
    hi = high * s
    below = w < lo
    above = w > hi
    # torch.maximum/minimum: a NaN w stays NaN (neither comparison holds)
    d = (x - z) * s - tl.where(below, lo, tl.where(above, hi, w))
    g = -2.0 * d
    tl.store(dw_ptr + offs, tl.where((w >= lo) & (w <= hi), g, 0.0), mask=m)
    ds = tl.where(below, g * low, tl.where(above, g * high, 0.0))
    return tl.where(m, d * d, 0.0), tl.where(m, ds, 0.0)


@triton.jit
def _store_sums(e, ds, part_ptr, n_part, offs, pm, AXIS: tl.constexpr):
    """The block partials of e at part_ptr + offs and of ds n_part further."""
    tl.store(part_ptr + offs, sum_lanes(e, AXIS), mask=pm)
    tl.store(part_ptr + n_part + offs, sum_lanes(ds, AXIS), mask=pm)


@triton.jit
def _damp_segment_kernel(
    io, scale_ptr, zp_ptr, part_ptr, C, I, n_part, quant_min, quant_max,
    INDEX_I32: tl.constexpr, SEGS: tl.constexpr, BLOCK_I: tl.constexpr,
):
    # O == 1: quantizer c is the run [c * I, c * I + I), one tile row; its partial [0, 0, c] is at c.
    c = _program_id(INDEX_I32) * SEGS + tl.arange(0, SEGS)
    cm = c < C
    s, inv, z = _qparams(scale_ptr, zp_ptr, c, cm)
    i = tl.arange(0, BLOCK_I)[None, :]
    # `+ 0.0`: float32 also when Triton passed a 1 as a constexpr
    e, ds = _dampen_tile(io, c[:, None] * I + i, cm[:, None] & (i < I), s[:, None], inv[:, None], z[:, None],
                         quant_min + 0.0, quant_max + 0.0)
    _store_sums(e, ds, part_ptr, n_part, c, cm, 1)


@triton.jit
def _damp_row_kernel(
    io, scale_ptr, zp_ptr, part_ptr, O, C, n_ct, rows, n_part, quant_min, quant_max,
    INDEX_I32: tl.constexpr, ROWS_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # I == 1: program (p, column tile), _row_block.
    p, c, cm, o_start, o_end = _row_block(_program_id(INDEX_I32), O, C, n_ct, rows, BLOCK_C)
    s, inv, z = _qparams(scale_ptr, zp_ptr, c, cm)
    e = tl.zeros((ROWS_T, BLOCK_C), tl.float32)
    ds = tl.zeros((ROWS_T, BLOCK_C), tl.float32)
    for o in range(o_start, o_end, ROWS_T):
        ro = o + tl.arange(0, ROWS_T)[:, None]
        te, tds = _dampen_tile(io, ro * C + c[None, :], (ro < o_end) & cm[None, :], s[None, :], inv[None, :],
                               z[None, :], quant_min + 0.0, quant_max + 0.0)
        e += te
        ds += tds
    _store_sums(e, ds, part_ptr, n_part, p * C + c, cm, 0)


@triton.jit
def _damp_run_kernel(
    io, scale_ptr, zp_ptr, part_ptr, O, C, I, P, n_ib, rows, chunk, n_part, quant_min, quant_max,
    INDEX_I32: tl.constexpr, ROWS_T: tl.constexpr, BLOCK_I: tl.constexpr,
):
    # Program (c, p), _run_block; the rows of quantizer c are C * I apart.
    p, c, o_start, o_end, i_start, i_end = _run_block(_program_id(INDEX_I32), O, I, P, n_ib, rows, chunk)
    s, inv, z = _qparams(scale_ptr, zp_ptr, c, c < C)  # (always in range: a mask as the other modes)
    e = tl.zeros((ROWS_T, BLOCK_I), tl.float32)
    ds = tl.zeros((ROWS_T, BLOCK_I), tl.float32)
    for o in range(o_start, o_end, ROWS_T):
        ro = o + tl.arange(0, ROWS_T)[:, None]
        for i in range(i_start, i_end, BLOCK_I):
            ci = i + tl.arange(0, BLOCK_I)[None, :]
            te, tds = _dampen_tile(io, c * I + ro * (C * I) + ci, (ro < o_end) & (ci < i_end), s, inv, z,
                                   quant_min + 0.0, quant_max + 0.0)
            e += te
            ds += tds
    _store_sums(e, ds, part_ptr, n_part, p * C + c, None, None)


_KERNELS = (_damp_segment_kernel, _damp_row_kernel, _damp_run_kernel)


def forward(w, scale, zero_point, B, O, C, I, quant_min, quant_max, frozen, frozen_x_int, dw):
    """Launcher (contract: qkernels/oscillation_dampening.py, LAUNCHERS): writes dw (float32, the gradient
    before the division by K) and returns (e_sums, ds_sums), float32 [C] each: the Sum partials [B, P, C] of
    make_blocks(dims, REDUCE_TARGET) finished in float64. w (numel > 0, float32/float16/bfloat16), frozen (bool),
    frozen_x_int (int8) and dw are contiguous, walked as [B, O, C, I] (B == 1); scale and zero_point float32
    [C]."""
    plan = _plan((B, O, C, I), _KERNELS)
    partials = torch.empty((2, B, plan[4], C), dtype=torch.float32, device=w.device)  # e's, then ds's
    _launch(plan, ((w, frozen, frozen_x_int, dw), scale, zero_point, partials),
            (partials[0].numel(), quant_min, quant_max), w.numel())
    e_sums, ds_sums = finish_sum(partials, 2, torch.float32).reshape(2, C)
    return e_sums, ds_sums


def launch_every_specialization():
    """Calls the launcher on CPU tensors once per kernel specialization it makes (tests/triton_compile_check.py
    compiles each for a GPU): every weight dtype and blocking plan."""
    # [B, O, C, I] of the three plans: segments (per channel along the first axis), rows (inner 1), runs.
    plans = ((1, 1, 24, 40), (1, 40, 24, 1), (1, 3, 2, 5000))
    for dtype, dims in itertools.product((torch.float32, torch.float16, torch.bfloat16), plans):
        n = dims[1] * dims[2] * dims[3]
        forward(torch.randn(n, dtype=dtype), torch.ones(dims[2]), torch.zeros(dims[2]), *dims, -4, 3,
                torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.int8), torch.empty(n))
