"""Triton kernels of learnable (LSQ) fake quantization (installed as
``qkernels.triton_kernels.fake_quant_learnable``).

They implement aten's CUDA flavour of ``qkernels.reference.fake_quant_learnable`` (the spec), also under
``TRITON_INTERPRET=1`` on CPU tensors, with the conventions of ``fake_quant.py``: compiled with
``enable_fp_fusion=False``, ``inv = div_rn(1, s)``, and ``tl.fma`` exactly where the spec has an FMA.

Layout (csrc/include/qkernels/fake_quant_learnable_kernels.h): x, out, dy and dx share one dense layout,
walked in storage order as [B, O, C, I]; the element at e = ((b * O + o) * C + c) * I + i belongs to the
quantizer b * C + c, whose scale and *unrounded* zero point are scale[b * C + c], zero_point[b * C + c].

Per element, with r = rne(x * inv), bounds lo = qmin, hi = qmax and an integral float zero point:

* forward, z = clamp(rne(zp), lo, hi): y = (clamp(level, lo, hi) - z) * s (NaN clamps to lo), where
  per-tensor level = r + z in float, per-channel level = int64_saturating(r) + z (wrapping int64 add);
* backward, zb by rule (0: trunc(clamp(zp + 0.5)), 1: the forward z, 2: the forward z with the float
  level r + zb, NaN below): with inside = lo <= level <= hi, dx = dy * inside and
  inside: ds = ((dy * d) * inv) * gf, d = fma(level - zb, s, -x) (or two roundings), dz = 0;
  below/above: ds = (dy * ((lo or hi) - zb)) * gf, dz = ((dy * -1) * s) * gf.

Blocking. The qparam sums follow the reduction layer: its block layout (``qkernels.reference.reduce.
make_blocks``, rows rounded to the row tile), its Sum combine (``_reduce.sum_lanes``) and its finish
(``reduce_partials``). Both passes visit each quantizer's elements in 2-D tiles of _BLOCK elements, so every
program loads its scale and zero point once (no per-element index division or reciprocal), in one of three modes:

* segment (O == 1, I <= _BLOCK): each quantizer is one contiguous run of I elements, one block (P = 1); a
  program takes _BLOCK // pow2(I) whole quantizers, one per tile row, and sums each row;
* row (the layout's row mode, I == 1, C > 1): each row of C elements holds C quantizers; a program takes a
  column tile of C and the `rows` rows of block p and sums each column, writing partial[b, p, c];
* run (the layout's run mode otherwise): a program takes one block, `rows` of a quantizer's O runs and a
  `chunk` of I, tiled [ROWS_T, BLOCK_I], and sums the whole tile.

The backward pass writes float32 partials [B, P, C] whose sum over P is dscale / dzero_point. Each partial
is one program's sum in a fixed order, so results are deterministic, with no atomics: every lane of the
tile adds its at most 8 values in float32, then the lanes are added in float64 and the sum rounded once.
A program of one tile thus gives the exact sum rounded once, and larger ones stay close to it, within the
error of a float32 torch.sum that the tests allow every backend. The sizes depend only on the shape: a
program covers about numel / 1024 elements (at least _BLOCK, at most _MAX_TARGET = 8 tiles), so that
large tensors give enough programs to fill a GPU and few partials.
"""

import itertools

import torch
import triton
import triton.language as tl

from ..enums import Flavour, ZpRule
from ..reference.fake_quant_learnable import no_qparam_grads, reduce_partials
from ..reference.reduce import make_blocks
from ._reduce import sum_lanes
from .fake_quant import _clamp_nan_low, _flat, _round_half_even

__all__ = ["forward", "backward"]

_BLOCK = 2048  # elements per tile
_WARPS = 8
_MAX_TARGET = 16384  # most elements per program
_PROGRAMS = 1024  # programs to aim for on large tensors

# The zero-point rules (qkernels.enums.ZpRule), as constants the kernels compare with.
_TORCH_PER_TENSOR = tl.constexpr(int(ZpRule.TorchPerTensor))
_TORCH, _CONSISTENT = int(ZpRule.Torch), int(ZpRule.Consistent)


@triton.jit
def _cuda_level(r, z):
    """aten's CUDA level int64_saturating(r) + z (wrapping int64 add) as a float that compares the same with
    the bounds, without int64 conversions (costly at 16-bit throughput). Relies on |bounds|, |z| <= 2^22:
    for |r| < 2^63 the int64 sum does not wrap, and r + z is exact or, beyond 2^24, a float on the same side
    far outside the bounds. The conversion saturates NaN and r <= -2^63 to INT64_MIN and r >= 2^63 to
    INT64_MAX, here -inf / +inf, which swap where adding z wraps around."""
    two63 = 9.223372036854775808e18
    low = (r != r) | (r <= -two63)
    high = r >= two63
    # Adding z wraps for z < 0 at INT64_MIN and z > 0 at INT64_MAX. (Compared as a selected float: the
    # interpreter gives a broadcast scalar `z < 0` a float type.)
    wraps = (low | high) & (tl.where(low, z, -z) < 0)
    level = tl.where(low, -float("inf"), tl.where(high, float("inf"), r + z))
    return tl.where(wraps, -level, level)


@triton.jit
def _inv_and_zero_point(s, zp, lo, hi, RULE: tl.constexpr):
    """1 / scale and the integral float zero point of the rule (the forward pass uses Torch's)."""
    if RULE == _TORCH_PER_TENSOR:
        # trunc by an int32 round trip, exact within the bounds; it turns -0.0 into +0.0, which no result
        # depends on (z only enters through r + z, level - z and bound - z)
        z = _clamp_nan_low(zp + 0.5, lo, hi).to(tl.int32).to(tl.float32)
    else:
        # `+ 0.0`: a -0.0 from the rounding becomes +0.0, as in forward_zero_point
        z = _clamp_nan_low(_round_half_even(zp) + 0.0, lo, hi)
    return tl.div_rn(tl.full(s.shape, 1.0, tl.float32), s), z


@triton.jit
def _level(x, inv, z, FLOAT_LEVEL: tl.constexpr):
    r = _round_half_even(x * inv)
    if FLOAT_LEVEL:
        return r + z
    return _cuda_level(r, z)


@triton.jit
def _forward_tile(x_ptr, out_ptr, offs, m, s, inv, z, lo, hi, FLOAT_LEVEL: tl.constexpr):
    xt = tl.load(x_ptr + offs, mask=m, other=0.0)
    level = _level(xt.to(tl.float32), inv, z, FLOAT_LEVEL)
    tl.store(out_ptr + offs, ((_clamp_nan_low(level, lo, hi) - z) * s).to(xt.dtype), mask=m)


@triton.jit
def _backward_tile(x_ptr, dy_ptr, dx_ptr, offs, m, s, inv, zb, lo, hi, gf,
                   FLOAT_LEVEL: tl.constexpr, USE_FMA: tl.constexpr):
    """Writes dx of the tile and returns its (ds, dz), zero outside m."""
    xt = tl.load(x_ptr + offs, mask=m, other=0.0)
    gt = tl.load(dy_ptr + offs, mask=m, other=0.0)
    x = xt.to(tl.float32)
    g = gt.to(tl.float32)
    level = _level(x, inv, zb, FLOAT_LEVEL)
    below = ~(level >= lo)  # a NaN level (consistent rule only) counts as below
    above = level > hi
    inside = ~(below | above)
    # Multiply (not select), so -dy * 0 = -0.0 and NaN stays NaN, as aten's dy * mask.
    tl.store(dx_ptr + offs, (g * inside.to(tl.float32)).to(gt.dtype), mask=m)
    diff = tl.where(inside, level, zb) - zb
    if USE_FMA:
        d = tl.fma(diff, s, -x)
    else:
        d = diff * s - x
    ds = tl.where(inside, ((g * d) * inv) * gf, (g * (tl.where(below, lo, hi) - zb)) * gf)
    dz = tl.where(inside, 0.0, ((g * -1.0) * s) * gf)
    return tl.where(m, ds, 0.0), tl.where(m, dz, 0.0)


@triton.jit
def _segment_kernel(
    x_ptr, dy_ptr, out_ptr, scale_ptr, zp_ptr, ds_ptr, dz_ptr, n_q, I, quant_min, quant_max, grad_factor,
    FORWARD: tl.constexpr, FLOAT_LEVEL: tl.constexpr, RULE: tl.constexpr, USE_FMA: tl.constexpr,
    NEED_Q: tl.constexpr, INDEX_I32: tl.constexpr, SEGS: tl.constexpr, BLOCK_I: tl.constexpr,
):
    # O == 1: quantizer q = b * C + c is the run [q * I, q * I + I); one tile row per quantizer.
    pid = tl.program_id(0)
    if not INDEX_I32:
        pid = pid.to(tl.int64)
    lo = quant_min + 0.0  # `+ 0.0`: float32 also when Triton passed a 1 as a constexpr
    hi = quant_max + 0.0
    gf = tl.zeros((), tl.float32) + grad_factor  # float32 also in the interpreter
    q = pid * SEGS + tl.arange(0, SEGS)
    qm = q < n_q
    s = tl.load(scale_ptr + q, mask=qm, other=1.0)
    inv, z = _inv_and_zero_point(s, tl.load(zp_ptr + q, mask=qm, other=0.0), lo, hi, RULE)
    i = tl.arange(0, BLOCK_I)[None, :]
    m = qm[:, None] & (i < I)
    offs = q[:, None] * I + i
    if FORWARD:
        _forward_tile(x_ptr, out_ptr, offs, m, s[:, None], inv[:, None], z[:, None], lo, hi, FLOAT_LEVEL)
    else:
        ds, dz = _backward_tile(x_ptr, dy_ptr, out_ptr, offs, m, s[:, None], inv[:, None], z[:, None], lo, hi,
                                gf, FLOAT_LEVEL, USE_FMA)
        if NEED_Q:  # P == 1: partial [b, 0, c] is at q
            tl.store(ds_ptr + q, sum_lanes(ds, 1), mask=qm)
            tl.store(dz_ptr + q, sum_lanes(dz, 1), mask=qm)


@triton.jit
def _row_kernel(
    x_ptr, dy_ptr, out_ptr, scale_ptr, zp_ptr, ds_ptr, dz_ptr, O, C, P, n_ct, rows,
    quant_min, quant_max, grad_factor,
    FORWARD: tl.constexpr, FLOAT_LEVEL: tl.constexpr, RULE: tl.constexpr, USE_FMA: tl.constexpr,
    NEED_Q: tl.constexpr, INDEX_I32: tl.constexpr, ROWS_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # I == 1: program (b, p, column tile) covers rows [p * rows, p * rows + rows) of columns
    # [ct * BLOCK_C, ct * BLOCK_C + BLOCK_C), each column one quantizer.
    pid = tl.program_id(0)
    if not INDEX_I32:
        pid = pid.to(tl.int64)
    ct = pid % n_ct
    p = (pid // n_ct) % P
    b = pid // (n_ct * P)
    lo = quant_min + 0.0
    hi = quant_max + 0.0
    gf = tl.zeros((), tl.float32) + grad_factor
    c = ct * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    s = tl.load(scale_ptr + b * C + c, mask=cm, other=1.0)
    inv, z = _inv_and_zero_point(s, tl.load(zp_ptr + b * C + c, mask=cm, other=0.0), lo, hi, RULE)
    s, inv, z = s[None, :], inv[None, :], z[None, :]
    base = b * O * C + c[None, :]
    o_end = tl.minimum(p * rows + rows, O)
    acc_s = tl.zeros((ROWS_T, BLOCK_C), tl.float32)
    acc_z = tl.zeros((ROWS_T, BLOCK_C), tl.float32)
    for o in range(p * rows, o_end, ROWS_T):
        ro = o + tl.arange(0, ROWS_T)[:, None]
        m = (ro < o_end) & cm[None, :]
        offs = base + ro * C
        if FORWARD:
            _forward_tile(x_ptr, out_ptr, offs, m, s, inv, z, lo, hi, FLOAT_LEVEL)
        else:
            ds, dz = _backward_tile(x_ptr, dy_ptr, out_ptr, offs, m, s, inv, z, lo, hi, gf, FLOAT_LEVEL, USE_FMA)
            if NEED_Q:
                acc_s += ds
                acc_z += dz
    if NEED_Q:
        part = (b * P + p) * C + c
        tl.store(ds_ptr + part, sum_lanes(acc_s, 0), mask=cm)
        tl.store(dz_ptr + part, sum_lanes(acc_z, 0), mask=cm)


@triton.jit
def _run_kernel(
    x_ptr, dy_ptr, out_ptr, scale_ptr, zp_ptr, ds_ptr, dz_ptr, O, C, I, P, n_ib, rows, chunk,
    quant_min, quant_max, grad_factor,
    FORWARD: tl.constexpr, FLOAT_LEVEL: tl.constexpr, RULE: tl.constexpr, USE_FMA: tl.constexpr,
    NEED_Q: tl.constexpr, INDEX_I32: tl.constexpr, ROWS_T: tl.constexpr, BLOCK_I: tl.constexpr,
):
    # Program (b, c, p), p = ob * n_ib + ib: rows [ob * rows, ob * rows + rows) and elements
    # [ib * chunk, ib * chunk + chunk) of I of quantizer q = b * C + c, the rows C * I apart.
    pid = tl.program_id(0)
    if not INDEX_I32:
        pid = pid.to(tl.int64)
    p = pid % P
    q = pid // P
    c = q % C
    b = q // C
    ob = p // n_ib
    ib = p % n_ib
    lo = quant_min + 0.0
    hi = quant_max + 0.0
    gf = tl.zeros((), tl.float32) + grad_factor
    s = tl.load(scale_ptr + q)
    inv, z = _inv_and_zero_point(s, tl.load(zp_ptr + q), lo, hi, RULE)
    base = (b * O * C + c) * I
    o_end = tl.minimum(ob * rows + rows, O)
    i_end = tl.minimum(ib * chunk + chunk, I)
    acc_s = tl.zeros((ROWS_T, BLOCK_I), tl.float32)
    acc_z = tl.zeros((ROWS_T, BLOCK_I), tl.float32)
    for o in range(ob * rows, o_end, ROWS_T):
        ro = o + tl.arange(0, ROWS_T)[:, None]
        for i in range(ib * chunk, i_end, BLOCK_I):
            ci = i + tl.arange(0, BLOCK_I)[None, :]
            m = (ro < o_end) & (ci < i_end)
            offs = base + ro * (C * I) + ci
            if FORWARD:
                _forward_tile(x_ptr, out_ptr, offs, m, s, inv, z, lo, hi, FLOAT_LEVEL)
            else:
                ds, dz = _backward_tile(x_ptr, dy_ptr, out_ptr, offs, m, s, inv, z, lo, hi, gf,
                                        FLOAT_LEVEL, USE_FMA)
                if NEED_Q:
                    acc_s += ds
                    acc_z += dz
    if NEED_Q:
        part = (b * P + p) * C + c
        tl.store(ds_ptr + part, sum_lanes(acc_s, None))
        tl.store(dz_ptr + part, sum_lanes(acc_z, None))


def _plan(dims):
    """(kernel, grid, shape arguments, tile constexprs, P) of the blocking for dims (module docstring)."""
    B, O, C, I = dims
    numel = B * O * C * I
    # elements per program: numel / _PROGRAMS rounded down to a power of 2, within [_BLOCK, _MAX_TARGET]
    target = min(_MAX_TARGET, max(_BLOCK, 1 << (max(1, numel // _PROGRAMS).bit_length() - 1)))
    if O == 1 and I <= _BLOCK:
        block_i = triton.next_power_of_2(I)
        segs = _BLOCK // block_i
        return (_segment_kernel, (triton.cdiv(B * C, segs),), (B * C, I), dict(SEGS=segs, BLOCK_I=block_i), 1)
    if I == 1 and C > 1:
        block_c = min(triton.next_power_of_2(C), 256)
        rows_t = _BLOCK // block_c
        blocks = make_blocks(dims, target, rows_multiple=rows_t)
        n_ct = triton.cdiv(C, block_c)
        return (_row_kernel, (B * blocks.P * n_ct,), (O, C, blocks.P, n_ct, blocks.rows),
                dict(ROWS_T=rows_t, BLOCK_C=block_c), blocks.P)
    block_i = min(_BLOCK, triton.next_power_of_2(I))
    rows_t = _BLOCK // block_i
    # A chunk shorter than I is target, a multiple of BLOCK_I (both are powers of 2); rows: a multiple of the
    # row tile, as many as keep the program at about target elements.
    blocks = make_blocks(dims, target, rows_multiple=rows_t)
    return (_run_kernel, (B * C * blocks.P,), (O, C, I, blocks.P, blocks.n_ib, blocks.rows, blocks.chunk),
            dict(ROWS_T=rows_t, BLOCK_I=block_i), blocks.P)


def _launch(plan, x, dy, out, scale, zero_point, ds, dz, quant_min, quant_max, grad_factor, **flags):
    kernel, grid, shape_args, tiles, _ = plan
    x, dy, out = _flat(x), _flat(dy), _flat(out)
    kernel[grid](
        x, dy, out, scale, zero_point, ds if ds is not None else out, dz if dz is not None else out,
        *shape_args, quant_min, quant_max, float(grad_factor),
        INDEX_I32=x.numel() < 2**31, **flags, **tiles,
        num_warps=_WARPS, enable_fp_fusion=False,
    )


def forward(x, out, scale, zero_point, B, O, C, I, quant_min, quant_max, flavour, per_tensor):
    """Launcher (contract: qkernels/fake_quant_learnable.py, LAUNCHERS): writes y = fake_quant(x) into out (x's
    dtype and dense layout, in storage order as [B, O, C, I]). scale, zero_point: float32 contiguous [B * C], the
    zero point unrounded. per_tensor: aten's per-tensor rules (float level, NaN -> quant_min), else its
    per-channel int-zero-point CUDA rules. flavour is ignored: the result is always aten's CUDA flavour (also
    for interpreted CPU tensors, for which callers pass Cpu)."""
    if x.numel() == 0:
        return
    _launch(_plan((B, O, C, I)), x, x, out, scale, zero_point, None, None, quant_min, quant_max, 1.0,
            FORWARD=True, FLOAT_LEVEL=bool(per_tensor), RULE=_TORCH, USE_FMA=False, NEED_Q=False)


def backward(dy, x, dx, scale, zero_point, B, O, C, I, quant_min, quant_max, grad_factor, flavour, rule, use_fma,
             need_qgrads, ds_dtype, dz_dtype):
    """Launcher: writes dx = dy * inside (dy, x, dx: one dtype and dense layout) and, if need_qgrads, returns
    (dscale, dzero_point) per quantizer in ds_dtype / dz_dtype, reduced from float32 partials [2, B, P, C]
    (P >= 1 depends only on the dims) by ``reduce_partials``; otherwise empty tensors. rule: a
    qkernels.enums.ZpRule. flavour is ignored, as in forward."""
    if x.numel() == 0:  # nothing to launch: zero sums
        partials = torch.zeros((2, B, 1, C), dtype=torch.float32, device=x.device)
    else:
        plan = _plan((B, O, C, I))
        partials = torch.empty((2, B, plan[4], C), dtype=torch.float32, device=x.device) if need_qgrads else None
        ds, dz = (partials[0], partials[1]) if need_qgrads else (None, None)
        _launch(plan, x, dy, dx, scale, zero_point, ds, dz, quant_min, quant_max, grad_factor,
                FORWARD=False, FLOAT_LEVEL=rule == _CONSISTENT, RULE=int(rule), USE_FMA=bool(use_fma),
                NEED_Q=bool(need_qgrads))
    if not need_qgrads:
        return no_qparam_grads(x, ds_dtype, dz_dtype)
    return reduce_partials(partials, ds_dtype, dz_dtype)


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def launch_every_specialization():
    """Calls the launchers on CPU tensors once per kernel specialization they make (tests/triton_compile_check.py
    compiles each for a GPU): forward and backward for every dtype, blocking plan, zero-point rule and
    qparam-gradient need."""
    # [B, O, C, I] of the three blocking plans: segments (per tensor, small), rows (C channels, inner 1), runs.
    plans = ((1, 1, 1, 1000), (1, 40, 24, 1), (1, 3, 2, 5000))
    for dtype, dims in itertools.product(_DTYPES, plans):
        n = dims[0] * dims[1] * dims[2] * dims[3]
        x, out = torch.randn(n, dtype=dtype), torch.empty(n, dtype=dtype)
        q = dims[0] * dims[2]
        s, z = torch.ones(q), torch.zeros(q)
        for per_tensor in (True, False):
            forward(x, out, s, z, *dims, -128, 127, Flavour.Cuda, per_tensor)
        rules = tuple(ZpRule) if dtype == torch.float32 else (ZpRule.Torch,)
        for rule, use_fma, need in itertools.product(rules, (True, False), (True, False)):
            backward(x, x, out, s, z, *dims, -128, 127, 1.0, Flavour.Cuda, rule, use_fma, need, torch.float32,
                     torch.float32)
