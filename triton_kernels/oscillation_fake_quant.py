"""Triton kernels of weight fake quantization with oscillation tracking and freezing (installed as
``qkernels.triton_kernels.oscillation_fake_quant``).

They implement ``qkernels.reference.oscillation_fake_quant`` (the spec: its docstring states the math), also under
``TRITON_INTERPRET=1`` on CPU tensors. Per element, in float32, with inv = div_rn(1, s) (= torch.reciprocal) and
the integral float zero point z of quantizer c:

* forward: q = rne(w * inv) + z, x = frozen ? frozen_x_int : clamp(q, qmin, qmax), out = (x - z) * s,
  mask = !frozen && qmin <= q <= qmax; while tracking (a flag of any dtype, nonzero = on), the spec's state
  update (prev_x_int, prev_switch_dir, ema_oscillation; with threshold > 0 the freezing of frozen, frozen_x_int
  and ema_x_int) and osc = prev_switch_dir * sign(prev - x) == -1, counted;
* backward: dw = mask ? dy : 0; ds = ((dy * (float32(x - z) * s - w)) * inv) * gf inside (mask), else
  (dy * float32(x - z)) * gf.

The flags (``started`` uint8 [2], ``threshold`` float32 [], ``tracking``) are read by the kernels (no host sync);
while tracking is off the state is neither read nor written (the loads and stores are masked by the flag).
Exactness: compiled with ``enable_fp_fusion=False`` (the EMAs m * a + cm * b round twice, as the spec's tensor
arithmetic does, and the backward's products and differences are not contracted), m = float32(momentum),
cm = float32(1 - momentum) formed in float64 by the launcher.

Layout: every per-element tensor is contiguous and walked as [B, O, C, I] (B == 1): the element at
(o * C + c) * I + i belongs to quantizer c (scale[c], zero_point[c]). Both passes visit each quantizer's elements
in the blocks of the reduction layer, ``make_blocks(dims, REDUCE_TARGET)`` (``qkernels.reference.reduce``), so
that every program loads its scale once (no per-element index division or reciprocal), in one of three modes:

* segment (O == 1, I <= _BLOCK: one block per quantizer, P = 1): a program takes _BLOCK // pow2(I) whole
  quantizers, one per tile row;
* row (the layout's row mode, I == 1, C > 1): a program takes a column tile of C and the ``rows`` rows of block p;
* run (the layout's run mode otherwise): a program takes one block, ``rows`` of a quantizer's O runs and a
  ``chunk`` of I, tiled [ROWS_T, BLOCK_I].

The plans (``_plan``), the programs' block geometry (``_row_block``, ``_run_block``), qparams and launch are shared
with the ``oscillation_dampening`` kernels.

The forward's oscillation count is exact: int32 lanes of each program's flags (Count, ``_reduce.count_lanes``), each
program's total in int64, the totals summed in int64. The backward's dscale is the reduction layer's Sum: each
block's float32 partial at [0, p, c] (lanes of float32 adds in the program's fixed order, reduced in float64 and
rounded once, ``_reduce.sum_lanes``), finished by ``finish_sum`` (float64, partials in order): the partials have
the reference's layout, and a run gives the same bits every time.
"""

import itertools

import torch
import triton
import triton.language as tl

from ..reference.oscillation_fake_quant import REDUCE_TARGET
from ..reference.reduce import finish_sum, make_blocks
from ._reduce import count_lanes, sum_lanes
from .fake_quant import _round_half_even

__all__ = ["forward", "backward"]

_BLOCK = 2048  # elements per tile
_BLOCK_C = 256  # most columns per tile in row mode
_WARPS = 8


@triton.jit
def _nonzero(ptr):
    """The flag at ptr (bool, integer or floating dtype) is nonzero."""
    v = tl.load(ptr)
    if tl.constexpr(v.dtype.is_floating()):
        if tl.constexpr(v.dtype.primitive_bitwidth) < tl.constexpr(32):
            v = v.to(tl.float32)  # exact; the interpreter keeps bfloat16 as raw bits, where -0.0 is not 0
    return v != 0


@triton.jit
def _context(flags, consts, FORWARD: tl.constexpr):
    """The program's scalars. Forward: (tracking, freezing, threshold, started[0], started[1], m, cm); backward:
    (grad_factor,). Floats are float32 (`zeros + v`: also when the interpreter passes a Python float)."""
    if FORWARD:
        started_ptr, threshold_ptr, tracking_ptr = flags
        on = _nonzero(tracking_ptr)
        th = tl.load(threshold_ptr)
        ctx = (on, on & (th > 0), th, tl.load(started_ptr) != 0, tl.load(started_ptr + 1) != 0,
               tl.zeros((), tl.float32) + consts[0], tl.zeros((), tl.float32) + consts[1])
    else:
        ctx = (tl.zeros((), tl.float32) + consts[0],)
    return ctx


@triton.jit
def _forward_tile(io, state, ctx, offs, m, s, inv, z, lo, hi, NEED_GRAD: tl.constexpr, USE_EMA: tl.constexpr):
    """Writes out (and x_int, mask if NEED_GRAD) of the tile, updates its state while tracking, and returns the
    int32 oscillation flags (0 outside m and while not tracking)."""
    w_ptr, out_ptr, xint_ptr, mask_ptr = io
    prev_ptr, dir_ptr, emao_ptr, frozen_ptr, fx_ptr, emax_ptr = state
    on, freezing, th, has_prev, has_ema, mom, cmom = ctx
    wt = tl.load(w_ptr + offs, mask=m, other=0.0)
    q = _round_half_even(wt.to(tl.float32) * inv) + z
    clamped = tl.where(q < lo, lo, tl.where(q > hi, hi, q))  # NaN stays NaN, as torch.clamp
    frozen = tl.load(frozen_ptr + offs, mask=m, other=0) != 0
    x = tl.where(frozen, tl.load(fx_ptr + offs, mask=m, other=0).to(tl.float32), clamped)
    xi = x.to(tl.int8)
    tl.store(out_ptr + offs, ((x - z) * s).to(wt.dtype), mask=m)
    if NEED_GRAD:
        tl.store(xint_ptr + offs, xi, mask=m)
        tl.store(mask_ptr + offs, ~frozen & (q >= lo) & (q <= hi), mask=m)
    # Tracking: masked by the flag, so an untracked call touches no state. (A select, not `m & on`: the
    # interpreter gives a block & a loaded scalar a uint8 type, which it then rejects as a mask.)
    mt = tl.where(on, m, False)
    prev = tl.where(has_prev, tl.load(prev_ptr + offs, mask=mt, other=0).to(tl.float32), x)
    d = prev - x
    direction = (d > 0).to(tl.int8) - (d < 0).to(tl.int8)
    osc = mt & (tl.load(dir_ptr + offs, mask=mt, other=0).to(tl.int32) * direction.to(tl.int32) == -1)
    f = mom * osc.to(tl.float32) + cmom * tl.load(emao_ptr + offs, mask=mt, other=0.0)
    tl.store(prev_ptr + offs, xi, mask=mt)
    tl.store(dir_ptr + offs, direction, mask=mt & (d != 0))
    tl.store(emao_ptr + offs, f, mask=mt)
    # Freezing (threshold > 0, implies tracking): sel freezes at the EMA integer or the current one.
    mf = tl.where(freezing, mt, False)
    sel = mf & (f > th)
    if USE_EMA:
        e = tl.where(has_ema, tl.load(emax_ptr + offs, mask=mf, other=0.0), x)
        tl.store(fx_ptr + offs, _round_half_even(e).to(tl.int8), mask=sel)
        tl.store(emax_ptr + offs, mom * x + cmom * e, mask=mf)
    else:
        tl.store(fx_ptr + offs, xi, mask=sel)
    tl.store(frozen_ptr + offs, sel, mask=sel)
    return osc.to(tl.int32)


@triton.jit
def _backward_tile(io, ctx, offs, m, s, inv, z):
    """Writes dw of the tile and returns its ds (float32, 0 outside m)."""
    dy_ptr, w_ptr, xint_ptr, mask_ptr, dw_ptr = io
    (gf,) = ctx
    gt = tl.load(dy_ptr + offs, mask=m, other=0.0)
    g = gt.to(tl.float32)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    level = tl.load(xint_ptr + offs, mask=m, other=0).to(tl.float32) - z
    inside = tl.load(mask_ptr + offs, mask=m, other=0) != 0
    tl.store(dw_ptr + offs, tl.where(inside, g, 0.0).to(gt.dtype), mask=m)
    ds = tl.where(inside, ((g * (level * s - w)) * inv) * gf, (g * level) * gf)
    return tl.where(m, ds, 0.0)


@triton.jit
def _tile(io, state, ctx, offs, m, s, inv, z, lo, hi, FORWARD: tl.constexpr, NEED: tl.constexpr,
          USE_EMA: tl.constexpr):
    if FORWARD:
        v = _forward_tile(io, state, ctx, offs, m, s, inv, z, lo, hi, NEED, USE_EMA)
    else:
        v = _backward_tile(io, ctx, offs, m, s, inv, z)
    return v


@triton.jit
def _qparams(scale_ptr, zp_ptr, c, cm):
    s = tl.load(scale_ptr + c, mask=cm, other=1.0)
    return s, tl.div_rn(tl.full(s.shape, 1.0, tl.float32), s), tl.load(zp_ptr + c, mask=cm, other=0.0)


@triton.jit
def _program_id(INDEX_I32: tl.constexpr):
    """The program's id, int64 unless every offset fits int32."""
    pid = tl.program_id(0)
    if not INDEX_I32:
        pid = pid.to(tl.int64)
    return pid


@triton.jit
def _row_block(pid, O, C, n_ct, rows, BLOCK_C: tl.constexpr):
    """Row mode: program pid = p * n_ct + ct covers rows [p * rows, min(p * rows + rows, O)) of the columns
    c = ct * BLOCK_C + [0, BLOCK_C) (mask c < C), each column one quantizer: (p, c, column mask, row start,
    row end)."""
    ct = pid % n_ct
    p = pid // n_ct
    c = ct * BLOCK_C + tl.arange(0, BLOCK_C)
    return p, c, c < C, p * rows, tl.minimum(p * rows + rows, O)


@triton.jit
def _run_block(pid, O, I, P, n_ib, rows, chunk):
    """Run mode: program pid = c * P + p, p = ob * n_ib + ib, covers rows [ob * rows, ob * rows + rows) and
    elements [ib * chunk, ib * chunk + chunk) of I of quantizer c (both ends cut at O, I): (p, c, row start,
    row end, I start, I end)."""
    p = pid % P
    c = pid // P
    ob = p // n_ib
    ib = p % n_ib
    return p, c, ob * rows, tl.minimum(ob * rows + rows, O), ib * chunk, tl.minimum(ib * chunk + chunk, I)


@triton.jit
def _store_result(acc, part_ptr, pid, offs, pm, AXIS: tl.constexpr, FORWARD: tl.constexpr, NEED: tl.constexpr):
    """Forward: the program's oscillation count (int64) at pid; backward (if NEED): the Sum partials at offs."""
    if FORWARD:
        tl.store(part_ptr + pid, count_lanes(acc, None))
    elif NEED:
        tl.store(part_ptr + offs, sum_lanes(acc, AXIS), mask=pm)


@triton.jit
def _osc_segment_kernel(
    io, state, flags, consts, scale_ptr, zp_ptr, part_ptr, C, I, quant_min, quant_max,
    FORWARD: tl.constexpr, NEED: tl.constexpr, USE_EMA: tl.constexpr, INDEX_I32: tl.constexpr,
    SEGS: tl.constexpr, BLOCK_I: tl.constexpr,
):
    # O == 1: quantizer c is the run [c * I, c * I + I), one tile row; its partial [0, 0, c] is at c.
    pid = _program_id(INDEX_I32)
    lo = quant_min + 0.0  # `+ 0.0`: float32 also when Triton passed a 1 as a constexpr
    hi = quant_max + 0.0
    ctx = _context(flags, consts, FORWARD)
    c = pid * SEGS + tl.arange(0, SEGS)
    cm = c < C
    s, inv, z = _qparams(scale_ptr, zp_ptr, c, cm)
    i = tl.arange(0, BLOCK_I)[None, :]
    v = _tile(io, state, ctx, c[:, None] * I + i, cm[:, None] & (i < I), s[:, None], inv[:, None], z[:, None],
              lo, hi, FORWARD, NEED, USE_EMA)
    _store_result(v, part_ptr, pid, c, cm, 1, FORWARD, NEED)


@triton.jit
def _osc_row_kernel(
    io, state, flags, consts, scale_ptr, zp_ptr, part_ptr, O, C, n_ct, rows, quant_min, quant_max,
    FORWARD: tl.constexpr, NEED: tl.constexpr, USE_EMA: tl.constexpr, INDEX_I32: tl.constexpr,
    ROWS_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # I == 1: program (p, column tile), _row_block.
    pid = _program_id(INDEX_I32)
    p, c, cm, o_start, o_end = _row_block(pid, O, C, n_ct, rows, BLOCK_C)
    lo = quant_min + 0.0
    hi = quant_max + 0.0
    ctx = _context(flags, consts, FORWARD)
    s, inv, z = _qparams(scale_ptr, zp_ptr, c, cm)
    if FORWARD:
        acc = tl.zeros((ROWS_T, BLOCK_C), tl.int32)
    else:
        acc = tl.zeros((ROWS_T, BLOCK_C), tl.float32)
    for o in range(o_start, o_end, ROWS_T):
        ro = o + tl.arange(0, ROWS_T)[:, None]
        acc += _tile(io, state, ctx, ro * C + c[None, :], (ro < o_end) & cm[None, :], s[None, :], inv[None, :],
                     z[None, :], lo, hi, FORWARD, NEED, USE_EMA)
    _store_result(acc, part_ptr, pid, p * C + c, cm, 0, FORWARD, NEED)


@triton.jit
def _osc_run_kernel(
    io, state, flags, consts, scale_ptr, zp_ptr, part_ptr, O, C, I, P, n_ib, rows, chunk, quant_min, quant_max,
    FORWARD: tl.constexpr, NEED: tl.constexpr, USE_EMA: tl.constexpr, INDEX_I32: tl.constexpr,
    ROWS_T: tl.constexpr, BLOCK_I: tl.constexpr,
):
    # Program (c, p), _run_block; the rows of quantizer c are C * I apart.
    pid = _program_id(INDEX_I32)
    p, c, o_start, o_end, i_start, i_end = _run_block(pid, O, I, P, n_ib, rows, chunk)
    lo = quant_min + 0.0
    hi = quant_max + 0.0
    ctx = _context(flags, consts, FORWARD)
    s, inv, z = _qparams(scale_ptr, zp_ptr, c, c < C)  # (always in range: a mask as the other modes)
    if FORWARD:
        acc = tl.zeros((ROWS_T, BLOCK_I), tl.int32)
    else:
        acc = tl.zeros((ROWS_T, BLOCK_I), tl.float32)
    for o in range(o_start, o_end, ROWS_T):
        ro = o + tl.arange(0, ROWS_T)[:, None]
        for i in range(i_start, i_end, BLOCK_I):
            ci = i + tl.arange(0, BLOCK_I)[None, :]
            acc += _tile(io, state, ctx, c * I + ro * (C * I) + ci, (ro < o_end) & (ci < i_end), s, inv, z, lo, hi,
                         FORWARD, NEED, USE_EMA)
    _store_result(acc, part_ptr, pid, p * C + c, None, None, FORWARD, NEED)


def _plan(dims, kernels):
    """(kernel, grid, shape arguments, tile constexprs, P) of the blocks of make_blocks(dims, REDUCE_TARGET);
    kernels: the family's (segment, row, run) kernels, taking the shape arguments of their mode."""
    segment_kernel, row_kernel, run_kernel = kernels
    _, O, C, I = dims
    blocks = make_blocks(dims, REDUCE_TARGET)
    if O == 1 and I <= _BLOCK:  # then P == 1 in either mode
        block_i = triton.next_power_of_2(I)
        segs = _BLOCK // block_i
        return segment_kernel, (triton.cdiv(C, segs),), (C, I), dict(SEGS=segs, BLOCK_I=block_i), 1
    if blocks.row_mode:
        block_c = min(triton.next_power_of_2(C), _BLOCK_C)
        rows_t = min(_BLOCK // block_c, triton.next_power_of_2(min(blocks.rows, O)))
        n_ct = triton.cdiv(C, block_c)
        return (row_kernel, (blocks.P * n_ct,), (O, C, n_ct, blocks.rows), dict(ROWS_T=rows_t, BLOCK_C=block_c),
                blocks.P)
    block_i = min(_BLOCK, triton.next_power_of_2(blocks.chunk))
    rows_t = min(_BLOCK // block_i, triton.next_power_of_2(min(blocks.rows, O)))
    return (run_kernel, (C * blocks.P,), (O, C, I, blocks.P, blocks.n_ib, blocks.rows, blocks.chunk),
            dict(ROWS_T=rows_t, BLOCK_I=block_i), blocks.P)


def _launch(plan, head, tail, numel, **constexprs):
    """Launches the plan's kernel on (*head, *shape arguments, *tail), without fp contraction; numel: the
    elements walked (int32 offsets below 2^31)."""
    kernel, grid, shape_args, tiles, _ = plan
    kernel[grid](*head, *shape_args, *tail, INDEX_I32=numel < 2**31, **constexprs, **tiles, num_warps=_WARPS,
                 enable_fp_fusion=False)


_KERNELS = (_osc_segment_kernel, _osc_row_kernel, _osc_run_kernel)


def forward(w, out, x_int, mask, scale, zero_point, B, O, C, I, quant_min, quant_max, prev_x_int, prev_switch_dir,
            ema_oscillation, frozen, frozen_x_int, ema_x_int, started, threshold, tracking, momentum, use_ema_x_int,
            need_grad):
    """Launcher (contract: qkernels/oscillation_fake_quant.py, LAUNCHERS): writes out (and x_int, mask when
    need_grad), updates the state in place while ``tracking`` is nonzero, and returns the call's oscillation count
    (int64 [1]). w (numel > 0), out and the state are contiguous, walked as [B, O, C, I] (B == 1); scale and
    zero_point float32 [C]; started uint8 [2], threshold float32 [] and tracking [] (any dtype) are read on the
    device."""
    plan = _plan((B, O, C, I), _KERNELS)
    counts = torch.empty(plan[1][0], dtype=torch.int64, device=w.device)
    # Unused pointers (need_grad false) point at w, which no kernel writes.
    io = (w, out, x_int, mask) if need_grad else (w, out, w, w)
    state = (prev_x_int, prev_switch_dir, ema_oscillation, frozen, frozen_x_int, ema_x_int)
    consts = (float(torch.tensor(momentum, dtype=torch.float32)), float(torch.tensor(1.0 - momentum,
                                                                                      dtype=torch.float32)))
    _launch(plan, (io, state, (started, threshold, tracking), consts, scale, zero_point, counts),
            (quant_min, quant_max), w.numel(), FORWARD=True, NEED=bool(need_grad), USE_EMA=bool(use_ema_x_int))
    return counts.sum().reshape(1)


def backward(dy, w, x_int, mask, dw, scale, zero_point, B, O, C, I, grad_factor, need_dscale):
    """Launcher: writes dw (w's dtype) and returns dscale float32 [C] (empty when need_dscale is false), the
    Sum partials [B, P, C] of make_blocks(dims, REDUCE_TARGET) finished in float64. dy, w, x_int (int8), mask
    (bool) and dw are contiguous (numel > 0), walked as [B, O, C, I] (B == 1)."""
    plan = _plan((B, O, C, I), _KERNELS)
    partials = torch.empty((B, plan[4], C), dtype=torch.float32, device=w.device) if need_dscale else None
    # The quantizer range is not used by the backward (x_int and mask carry it).
    _launch(plan, ((dy, w, x_int, mask, dw), (), (), (float(grad_factor),), scale, zero_point,
                   partials if need_dscale else scale), (0, 0), w.numel(), FORWARD=False, NEED=bool(need_dscale),
            USE_EMA=False)
    if not need_dscale:
        return scale.new_empty((0,))
    return finish_sum(partials, 1, torch.float32).reshape(-1)


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def launch_every_specialization():
    """Calls the launchers on CPU tensors once per kernel specialization they make (tests/triton_compile_check.py
    compiles each for a GPU): forward and backward for every dtype and blocking plan; for float32 every
    need_grad/use_ema_x_int/need_dscale combination and the tracking flag's dtypes."""
    # [B, O, C, I] of the three plans: segments (per channel along the first axis), rows (inner 1), runs.
    plans = ((1, 1, 24, 40), (1, 40, 24, 1), (1, 3, 2, 5000))
    flag_dtypes = (torch.uint8, torch.bool, torch.int32, torch.int64, torch.float32, torch.float16, torch.bfloat16)
    for dtype, dims in itertools.product(_DTYPES, plans):
        n = dims[1] * dims[2] * dims[3]
        w, out = torch.randn(n, dtype=dtype), torch.empty(n, dtype=dtype)
        x_int, mask = torch.empty(n, dtype=torch.int8), torch.empty(n, dtype=torch.bool)
        s, z = torch.ones(dims[2]), torch.zeros(dims[2])
        state = [torch.zeros(n, dtype=t) for t in (torch.int8, torch.int8, torch.float32, torch.bool, torch.int8,
                                                   torch.float32)]
        started, threshold = torch.zeros(2, dtype=torch.uint8), torch.tensor(0.5)
        full = dtype == torch.float32
        combos = itertools.product((True, False), (True, False)) if full else ((True, True),)
        for need_grad, use_ema in combos:
            forward(w, out, x_int, mask, s, z, *dims, -4, 3, *state, started, threshold,
                    torch.ones((), dtype=torch.uint8), 0.01, use_ema, need_grad)
        tracked_dtypes = flag_dtypes[1:] if full and dims == plans[0] else ()  # uint8 ran above
        for flag_dtype in tracked_dtypes:
            forward(w, out, x_int, mask, s, z, *dims, -4, 3, *state, started, threshold,
                    torch.ones((), dtype=flag_dtype), 0.01, True, True)
        for need in (True, False) if full else (True,):
            backward(w, w, x_int, mask, out, s, z, *dims, 1.0, need)
