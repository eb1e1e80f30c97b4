"""Triton kernels of the fused moving-average observer (installed as ``qkernels.triton_kernels.fused_observer``):
the observer and qparam step of ``torch.fused_moving_avg_obs_fake_quant``, in place on the running state.

The math is ``qkernels.reference.fused_observer`` (the spec; its ``Launchers.update`` is the launcher this
module mirrors), per channel c, with c_avg = averaging_const in
float32 and the flags read on the device as "on" when nonzero after truncation toward zero (an integer flag
when nonzero, a float one when |v| >= 1 or NaN):

* observe = observer_on: (cur_min, cur_max) = NaN-propagating min/max of the channel's values in float32, and
  r = isinf(r) ? cur : r + c_avg * (cur - r) for both running stats (flavour Cuda: ``fma(c_avg, cur - r,
  r)``, one rounding, as nvcc compiles aten's CUDA kernel; Cpu: two roundings);
* recompute = fake_quant_on (mode Fused, torch's fused op) or observe (mode Observer, torch.ao's observer): scale and
  zero_point from the running stats, by FBGEMM's ChooseQuantizationParams (Fused: float32 and float64
  steps, symmetric only when min < 0 < max, the 6.1e-5 scale floor in flavour Cpu only, z0 rounded half
  to even and converted as x86 does, NaN -> INT32_MIN) or by torch.ao's ``_calculate_qparams`` (Observer:
  float32 with the eps floor, never-observed (+inf, -inf) -> (1.0, 0), symmetric -> symmetric_zero_point).

Layout: x is dense in any layout and walked in storage order as [O, C, I] (C = running_min.numel(), I the
elements between consecutive channels, per tensor C = 1 and I = numel): the element at (o * C + c) * I + i
belongs to channel c. The state tensors are contiguous [C] (or 0-dim per tensor).

Two launches, both reading the flags with ``tl.load`` in their own dtype (no host sync, no Python branch on
them; float16/bfloat16 flags are widened to float32, which is exact):

1. min/max partials [C, P] float32 (``lo``, then ``hi``), P parts per channel chosen from the shape alone
   (``_plan``): a program covers about numel / _MAX_PROGRAMS elements (a power of 2, at least
   _MIN_PER_PROGRAM), so large tensors give up to about _MAX_PROGRAMS programs and few partials.
   Row mode (I == 1, C > 1: x is [O, C] row-major): a program takes a tile of BLOCK_C columns and a block of
   ``rows`` rows, loads [ROWS_T, BLOCK_C] tiles (coalesced along C) and reduces along the rows.
   Run mode (otherwise): program (c, p) takes ``rows`` of channel c's O runs and a ``chunk`` of I, loaded as
   [ROWS_T, BLOCK_I] tiles; per tensor that is a part of the single contiguous run.
   While the observer is off the loops over x run zero iterations (their bound is the flag's select), so x
   is not read; the partials then hold (+inf, -inf) and nothing reads them. The plan's constants are
   module-level so that tests can shrink them to split small tensors into many parts.
2. finish: a program takes BLOCK_CH channels, folds their P partials (only while observing), applies the
   moving average and writes running_min/max (while observing) and scale/zero_point (while recomputing).

The min/max is the reduction layer's MinMax kind (``_reduce.py``: ``minmax_fold`` folds a tile into lanes with
NaN sticking, ``minmax_lanes`` reduces the lanes), in the partials and in the finish. Min and max do not depend
on the order of folding, so the results are exact for any split (this module's split is sized by program
counts). Like torch.aminmax, which of -0.0 and +0.0 a min/max of both returns is unspecified (the values compare
equal; no qparam depends on the sign).

Exactness: compiled with ``enable_fp_fusion=False`` (the moving average of flavour Cpu must round twice,
the rounding tricks rely on plain adds), float32 divisions use ``div_rn``, float64 ones ``/`` (IEEE on the
GPU and in the interpreter), and the only FMA is the explicit ``tl.fma`` of flavour Cuda.
"""

import itertools

import torch
import triton
import triton.language as tl

from ..enums import Flavour, QParamsMode
from ._reduce import minmax_fold, minmax_lanes
from .fake_quant import _flat, _round_half_even

__all__ = ["update"]

_BLOCK = 2048  # elements per min/max tile
_BLOCK_C = 256  # most columns per tile in row mode
_MIN_PER_PROGRAM = 4096  # fewest elements a min/max program covers
_MAX_PROGRAMS = 2048  # min/max programs to aim for on large tensors
_FINISH_TILE = 2048  # partials per folding tile of the finish kernel
_FINISH_CH = 128  # most channels per finish program
_WARPS = 8
_FUSED = tl.constexpr(int(QParamsMode.Fused))  # (qkernels.enums.QParamsMode, as the kernels compare with it)
_FINISH_WARPS = 4


@triton.jit
def _flag_on(ptr):
    v = tl.load(ptr)
    if tl.constexpr(v.dtype.is_floating()):
        if tl.constexpr(v.dtype.primitive_bitwidth) < tl.constexpr(32):
            v = v.to(tl.float32)  # exact, and the interpreter keeps bfloat16 as raw bits
        return (tl.abs(v) >= 1.0) | (v != v)
    return v != 0


@triton.jit
def _minmax_row_kernel(
    x_ptr, lo_ptr, hi_ptr, obs_ptr, O, C, P, n_ct, rows,
    INDEX_I32: tl.constexpr, ROWS_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # I == 1: program (p, column tile ct) covers rows [p * rows, p * rows + rows) of columns
    # [ct * BLOCK_C, ct * BLOCK_C + BLOCK_C) and writes partial p of each column.
    pid = tl.program_id(0)
    if not INDEX_I32:
        pid = pid.to(tl.int64)
    ct = pid % n_ct
    p = pid // n_ct
    c = ct * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    o_begin = p * rows
    o_end = tl.minimum(o_begin + rows, O)
    o_stop = tl.where(_flag_on(obs_ptr), o_end, o_begin)
    lo = tl.full((ROWS_T, BLOCK_C), float("inf"), tl.float32)
    hi = tl.full((ROWS_T, BLOCK_C), -float("inf"), tl.float32)
    for o in range(o_begin, o_stop, ROWS_T):
        ro = o + tl.arange(0, ROWS_T)[:, None]
        m = (ro < o_end) & cm[None, :]
        v = tl.load(x_ptr + ro * C + c[None, :], mask=m, other=0.0).to(tl.float32)
        lo, hi = minmax_fold(lo, hi, v, v, m)
    mn, mx = minmax_lanes(lo, hi, 0)
    tl.store(lo_ptr + c * P + p, mn, mask=cm)
    tl.store(hi_ptr + c * P + p, mx, mask=cm)


@triton.jit
def _minmax_run_kernel(
    x_ptr, lo_ptr, hi_ptr, obs_ptr, O, C, I, run_stride, P, n_ib, rows, chunk,
    INDEX_I32: tl.constexpr, ROWS_T: tl.constexpr, BLOCK_I: tl.constexpr,
):
    # Program pid = c * P + p, p = ob * n_ib + ib: runs [ob * rows, ob * rows + rows) and elements
    # [ib * chunk, ib * chunk + chunk) of I of channel c, the runs run_stride = C * I apart (passed in, so that
    # it is 64-bit whenever it exceeds int32); it writes partial pid.
    pid = tl.program_id(0)
    if not INDEX_I32:
        pid = pid.to(tl.int64)
    p = pid % P
    c = pid // P
    ob = p // n_ib
    ib = p % n_ib
    o_begin = ob * rows
    o_end = tl.minimum(o_begin + rows, O)
    o_stop = tl.where(_flag_on(obs_ptr), o_end, o_begin)
    i_begin = ib * chunk
    i_end = tl.minimum(i_begin + chunk, I)
    base = c * I
    lo = tl.full((ROWS_T, BLOCK_I), float("inf"), tl.float32)
    hi = tl.full((ROWS_T, BLOCK_I), -float("inf"), tl.float32)
    for o in range(o_begin, o_stop, ROWS_T):
        ro = o + tl.arange(0, ROWS_T)[:, None]
        for i in range(i_begin, i_end, BLOCK_I):
            ci = i + tl.arange(0, BLOCK_I)[None, :]
            m = (ro < o_end) & (ci < i_end)
            v = tl.load(x_ptr + base + ro * run_stride + ci, mask=m, other=0.0).to(tl.float32)
            lo, hi = minmax_fold(lo, hi, v, v, m)
    mn, mx = minmax_lanes(lo, hi, None)
    tl.store(lo_ptr + pid, mn)
    tl.store(hi_ptr + pid, mx)


@triton.jit
def _nan_max(a, b):
    # torch.maximum: NaN if either side is NaN
    return tl.where((a != a) | (a > b), a, b)


@triton.jit
def _moving_average(r, cur, c_avg, CUDA: tl.constexpr):
    d = cur - r
    if CUDA:
        avg = tl.fma(c_avg, d, r)
    else:
        avg = r + c_avg * d
    return tl.where(tl.abs(r) == float("inf"), cur, avg)


@triton.jit
def _qparams_fused(mn, mx, quant_min, quant_max, SYMMETRIC: tl.constexpr, FLOOR: tl.constexpr):
    """FBGEMM's ChooseQuantizationParams: (float32 scale, int32 zero point)."""
    lo = tl.full((), quant_min, tl.float64)
    hi = tl.full((), quant_max, tl.float64)
    n = quant_max - quant_min
    width = tl.full((), n, tl.float32)
    if SYMMETRIC:
        sym = (mn < 0) & (mx > 0)
        smin = tl.full((), -(n // 2 + 1), tl.float32)  # n >= 0: // truncates and floors alike
        smax = tl.full((), n // 2, tl.float32)
        # NaN only outside sym, where it is not used
        m = tl.maximum(tl.abs(tl.div_rn(mn, smin)), tl.abs(tl.div_rn(mx, smax)))
        mn = tl.where(sym, m * smin, mn)
        mx = tl.where(sym, m * smax, mx)
    mn = tl.where(mn > 0, 0.0, mn)  # min(mn, 0) and max(mx, 0), NaN kept
    mx = tl.where(mx < 0, 0.0, mx)
    scale = ((mx.to(tl.float64) - mn.to(tl.float64)) / (hi - lo)).to(tl.float32)
    inv = tl.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
    scale = tl.where((scale == 0) | (tl.abs(inv) == float("inf")), 0.1, scale)
    if FLOOR:
        floor = tl.full(scale.shape, 6.1e-5, tl.float32)
        small = scale < floor
        ratio = tl.div_rn(floor, scale)
        floor_mx = tl.where(mn == 0, floor * width, tl.where(mx == 0, mx, mx * ratio))
        floor_mn = tl.where(mn == 0, mn, tl.where(mx == 0, -floor * width, mn * ratio))
        mn = tl.where(small, floor_mn, mn)
        mx = tl.where(small, floor_mx, mx)
        scale = tl.where(small, floor, scale)
    sd = scale.to(tl.float64)
    a = mn.to(tl.float64) / sd
    b = mx.to(tl.float64) / sd
    from_min = (tl.abs(lo) + tl.abs(a)) < (tl.abs(hi) + tl.abs(b))
    z0 = tl.where(from_min, lo - a, hi - b)
    if SYMMETRIC:
        z0 = tl.where(sym, (lo + hi) / 2.0, z0)
    zp = tl.where(z0 < lo, lo, tl.where(z0 > hi, hi, _round_half_even(z0)))
    # Only a NaN z0 is left outside the int32 range: x86's cvtt makes it INT32_MIN (NaN is kept out of the
    # conversion, whose result for it differs between the GPU and the interpreter).
    zi = tl.where(zp != zp, -2147483648, tl.where(zp != zp, 0.0, zp).to(tl.int32))
    return scale, zi


@triton.jit
def _qparams_observer(mn, mx, quant_min, quant_max, eps, symmetric_zero_point, SYMMETRIC: tl.constexpr):
    """torch.ao's _calculate_qparams: (float32 scale, int32 zero point)."""
    unset = (mn == float("inf")) & (mx == -float("inf"))
    minn = tl.where(mn > 0, 0.0, mn)
    maxp = tl.where(mx < 0, 0.0, mx)
    width = tl.full(mn.shape, quant_max - quant_min, tl.float32)
    if SYMMETRIC:
        scale = _nan_max(tl.div_rn(_nan_max(-minn, maxp), width * 0.5), eps)  # width / 2 is exact
        zi = tl.full(mn.shape, symmetric_zero_point, tl.int32)
    else:
        scale = _nan_max(tl.div_rn(maxp - minn, width), eps)
        r = _round_half_even(tl.div_rn(minn, scale))
        fits = (r >= -2147483648.0) & (r < 2147483648.0)  # NaN and out of range: INT32_MIN, as x86's cvtt
        ri = tl.where(fits, tl.where(fits, r, 0.0).to(tl.int32), -2147483648)
        zi = tl.full((), quant_min, tl.int32) - ri  # wraps like torch's int32 subtraction
        zi = tl.minimum(tl.maximum(zi, quant_min), quant_max)
    return tl.where(unset, 1.0, scale), tl.where(unset, 0, zi)


@triton.jit
def _finish_kernel(
    lo_ptr, hi_ptr, obs_ptr, fq_ptr, rmin_ptr, rmax_ptr, scale_ptr, zp_ptr, C, P,
    averaging_const, quant_min, quant_max, eps, symmetric_zero_point,
    MODE: tl.constexpr, SYMMETRIC: tl.constexpr, CUDA: tl.constexpr, FLOOR: tl.constexpr,
    BLOCK_CH: tl.constexpr, BLOCK_P: tl.constexpr,
):
    ch = tl.program_id(0) * BLOCK_CH + tl.arange(0, BLOCK_CH)
    cm = ch < C
    observe = _flag_on(obs_ptr)
    if MODE == _FUSED:
        recompute = _flag_on(fq_ptr)
    else:
        recompute = observe
    lo = tl.full((BLOCK_CH, BLOCK_P), float("inf"), tl.float32)
    hi = tl.full((BLOCK_CH, BLOCK_P), -float("inf"), tl.float32)
    for p in range(0, tl.where(observe, P, 0), BLOCK_P):  # the partials are only written while observing
        pp = p + tl.arange(0, BLOCK_P)[None, :]
        m = cm[:, None] & (pp < P)
        offs = ch[:, None] * P + pp
        lo, hi = minmax_fold(lo, hi, tl.load(lo_ptr + offs, mask=m, other=0.0),
                             tl.load(hi_ptr + offs, mask=m, other=0.0), m)
    cur_min, cur_max = minmax_lanes(lo, hi, 1)
    c_avg = tl.full((), averaging_const, tl.float32)
    rmin = tl.load(rmin_ptr + ch, mask=cm, other=0.0)
    rmax = tl.load(rmax_ptr + ch, mask=cm, other=0.0)
    rmin = tl.where(observe, _moving_average(rmin, cur_min, c_avg, CUDA), rmin)
    rmax = tl.where(observe, _moving_average(rmax, cur_max, c_avg, CUDA), rmax)
    # The flags enter the store masks through the bound (the interpreter mishandles a block mask combined with
    # a scalar one).
    written = ch < tl.where(observe, C, 0)
    tl.store(rmin_ptr + ch, rmin, mask=written)
    tl.store(rmax_ptr + ch, rmax, mask=written)
    if MODE == _FUSED:
        scale, zi = _qparams_fused(rmin, rmax, quant_min, quant_max, SYMMETRIC, FLOOR)
    else:
        scale, zi = _qparams_observer(rmin, rmax, quant_min, quant_max, tl.full((), eps, tl.float32),
                                      symmetric_zero_point, SYMMETRIC)
    recomputed = ch < tl.where(recompute, C, 0)
    tl.store(scale_ptr + ch, scale, mask=recomputed)
    tl.store(zp_ptr + ch, zi.to(zp_ptr.dtype.element_ty), mask=recomputed)


def _plan(O, C, I):
    """(kernel, grid, shape arguments, tile constexprs, P) of the min/max pass (module docstring)."""
    numel = O * C * I
    target = max(_MIN_PER_PROGRAM, triton.next_power_of_2(triton.cdiv(numel, _MAX_PROGRAMS)))
    if I == 1 and C > 1:
        block_c = min(triton.next_power_of_2(C), _BLOCK_C, _BLOCK)
        rows_t = min(_BLOCK // block_c, triton.next_power_of_2(O))
        rows = rows_t * max(1, target // (rows_t * block_c))
        P = triton.cdiv(O, rows)
        n_ct = triton.cdiv(C, block_c)
        return _minmax_row_kernel, (n_ct * P,), (O, C, P, n_ct, rows), dict(ROWS_T=rows_t, BLOCK_C=block_c), P
    block_i = min(_BLOCK, triton.next_power_of_2(I))
    rows_t = min(_BLOCK // block_i, triton.next_power_of_2(O))
    # A chunk shorter than I is target, a multiple of BLOCK_I (both are powers of 2 and target >= BLOCK_I).
    chunk = min(I, target)
    padded = triton.cdiv(chunk, block_i) * block_i
    rows = rows_t * max(1, target // (rows_t * padded))
    n_ib = triton.cdiv(I, chunk)
    P = triton.cdiv(O, rows) * n_ib
    return (_minmax_run_kernel, (C * P,), (O, C, I, C * I, P, n_ib, rows, chunk),
            dict(ROWS_T=rows_t, BLOCK_I=block_i), P)


def update(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const, quant_min,
           quant_max, inner, symmetric, mode, eps, symmetric_zero_point, flavour):
    """Launcher (contract: qkernels/fused_observer.py, LAUNCHERS). x: dense fp32/fp16/bf16, numel > 0, walked in
    storage order as [O, C, inner] with C = running_min.numel(); observer_on / fake_quant_on: one-element tensors
    on x's device (bool, any integer or float type), read by the kernels; running_min/max, scale: contiguous
    float32 [C]; zero_point: contiguous int32 or int64 [C]; mode a qkernels.enums.QParamsMode; flavour Cpu
    (two-rounding moving average, 6.1e-5 floor) or Cuda (FMA, no floor): this launcher implements both."""
    C = running_min.numel()
    numel = x.numel()
    O = numel // (C * inner)
    kernel, grid, shape_args, tiles, P = _plan(O, C, inner)
    partials = torch.empty(2 * C * P, dtype=torch.float32, device=x.device)
    lo, hi = partials[: C * P], partials[C * P:]
    kernel[grid](_flat(x), lo, hi, observer_on, *shape_args, INDEX_I32=numel < 2**31, **tiles,
                 num_warps=_WARPS, enable_fp_fusion=False)
    block_p = min(triton.next_power_of_2(P), _FINISH_TILE)
    block_ch = min(triton.next_power_of_2(C), _FINISH_CH, max(1, _FINISH_TILE // block_p))
    # The spec's float32 constants: torch.tensor(value, dtype=float32).
    c_avg = float(torch.tensor(averaging_const, dtype=torch.float32))
    eps32 = float(torch.tensor(eps, dtype=torch.float32))
    _finish_kernel[(triton.cdiv(C, block_ch),)](
        lo, hi, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, C, P,
        c_avg, quant_min, quant_max, eps32, symmetric_zero_point,
        MODE=int(mode), SYMMETRIC=bool(symmetric), CUDA=flavour == Flavour.Cuda, FLOOR=flavour == Flavour.Cpu,
        BLOCK_CH=block_ch, BLOCK_P=block_p,
        num_warps=_FINISH_WARPS, enable_fp_fusion=False,
    )


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def launch_every_specialization():
    """Calls the launchers on CPU tensors once per kernel specialization they make (tests/triton_compile_check.py
    compiles each for a GPU): the observer update for every dtype, blocking plan, flavour, scheme and qparams mode."""
    on = torch.ones(1, dtype=torch.long)
    # (x shape, channels, inner): per tensor, per channel along the last axis (rows), along the first (runs)
    for dtype, (shape, C, inner) in itertools.product(_DTYPES, (((64, 50), 1, 3200), ((64, 50), 50, 1),
                                                               ((6, 900), 6, 900))):
        x = torch.randn(shape, dtype=dtype)
        flavours = tuple(Flavour) if dtype == torch.float32 else (Flavour.Cuda,)
        for flavour, symmetric, mode in itertools.product(flavours, (False, True), tuple(QParamsMode)):
            state = [torch.zeros(C), torch.zeros(C), torch.ones(C), torch.zeros(C, dtype=torch.int32)]
            update(x, on, on, *state, 0.01, -128, 127, inner, symmetric, mode, 1e-5, 0, flavour)
