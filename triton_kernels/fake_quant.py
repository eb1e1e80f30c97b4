"""Triton fake-quant kernels (installed as ``qkernels.triton_kernels.fake_quant``).

They implement aten's CUDA flavour (see ``qkernels.reference.fake_quant``), also under ``TRITON_INTERPRET=1``
on CPU tensors, where results follow CUDA's rules for NaN/inf and per-channel zero points rather than aten
CPU's. Elementwise over storage order: x, out and mask share one dense layout.

Exactness: kernels are compiled with ``enable_fp_fusion=False`` (a multiply feeding an add must not become an
FMA: the 2^23 rounding trick below depends on it), ``1/scale`` uses ``div_rn`` (IEEE division), and the one
FMA aten's CUDA kernel has (float zero point: ``x * inv + z``) is written as ``tl.fma``.
"""

import torch
import triton
import triton.language as tl

from ..enums import Flavour

_BLOCK = 2048
_WARPS = 8
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


@triton.jit
def _round_half_even(v):
    # |v| < 2^p (p = 23 for float32, 52 for float64): adding +-2^p lands where the spacing is 1, so the FPU
    # rounds half to even; larger values are integers already.
    if tl.constexpr(v.dtype.is_fp64()):
        big = 4503599627370496.0
    else:
        big = 8388608.0
    m = tl.where(v < 0, -big, big)
    return tl.where(tl.abs(v) < big, (v + m) - m, v)


@triton.jit
def _clamp_nan_low(v, lo, hi):
    # NaN compares false and becomes lo, as fminf(hi, fmaxf(lo, v)) does.
    t = tl.where(v > lo, v, lo)
    return tl.where(t < hi, t, hi)


@triton.jit
def _to_int64_saturating(r):
    # CUDA's float -> int64 conversion: saturate, NaN -> INT64_MIN.
    hi = r >= 9.223372036854775808e18
    lo = (r != r) | (r < -9.223372036854775808e18)
    safe = tl.where(hi | lo, 0.0, r).to(tl.int64)
    safe = tl.where(hi, tl.full(r.shape, 9223372036854775807, tl.int64), safe)
    return tl.where(lo, tl.full(r.shape, -9223372036854775808, tl.int64), safe)


@triton.jit
def _load_block(ptr, n, BLOCK: tl.constexpr):
    """This program's BLOCK offsets, their in-bounds mask, and the values there (0 outside)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    return offs, inb, tl.load(ptr + offs, mask=inb, other=0.0)


@triton.jit
def _store_mask(mask_ptr, m, pid, n, BLOCK: tl.constexpr, PACKED: tl.constexpr):
    """One byte per element, or PACKED: bit k of byte j is element 8j + k (BLOCK is a multiple of 8)."""
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if PACKED:
        bits = tl.reshape((m & (offs < n)).to(tl.int32), (BLOCK // 8, 8))
        byte = tl.sum(bits << tl.arange(0, 8)[None, :], axis=1).to(tl.uint8)
        boffs = pid.to(tl.int64) * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
        tl.store(mask_ptr + boffs, byte, mask=boffs < (n + 7) // 8)
    else:
        tl.store(mask_ptr + offs, m, mask=offs < n)


@triton.jit
def _load_mask(mask_ptr, offs, inb, PACKED: tl.constexpr):
    if PACKED:
        return (tl.load(mask_ptr + (offs >> 3), mask=inb, other=0).to(tl.int32) >> (offs & 7).to(tl.int32)) & 1
    return tl.load(mask_ptr + offs, mask=inb, other=0).to(tl.int32)


@triton.jit
def _fq_per_tensor_kernel(
    x_ptr, out_ptr, mask_ptr, n, scale, zero_point, scale_ptr, zp_ptr, enabled_ptr, quant_min, quant_max,
    TENSOR_QPARAMS: tl.constexpr, HAS_FLAG: tl.constexpr, WRITE_MASK: tl.constexpr, PACKED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs, inb, xt = _load_block(x_ptr, n, BLOCK)
    x = xt.to(tl.float32)
    if TENSOR_QPARAMS:
        s = tl.load(scale_ptr)
        z = tl.load(zp_ptr)
    else:
        s = tl.zeros((), tl.float32) + scale  # a Python float in the interpreter
        z = zero_point
    inv = tl.div_rn(tl.full((), 1.0, tl.float32), s)
    # `+ 0.0` converts to float32 also when Triton passed an integer argument of 1 as a constexpr.
    zf = z + 0.0
    lo = quant_min + 0.0
    hi = quant_max + 0.0
    qf = _round_half_even(x * inv) + zf
    m = (qf >= lo) & (qf <= hi)
    y = ((_clamp_nan_low(qf, lo, hi) - zf) * s).to(xt.dtype)
    if HAS_FLAG:
        off = tl.load(enabled_ptr) == 0
        y = tl.where(off, xt, y)
        m = m | off
    tl.store(out_ptr + offs, y, mask=inb)
    if WRITE_MASK:
        _store_mask(mask_ptr, m, tl.program_id(0), n, BLOCK, PACKED)


@triton.jit
def _fq_per_channel_kernel(
    x_ptr, out_ptr, mask_ptr, scale_ptr, zp_ptr, n, inner, channels, quant_min, quant_max,
    FLOAT_ZP: tl.constexpr, WRITE_MASK: tl.constexpr, PACKED: tl.constexpr, INDEX_I32: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs, inb, xt = _load_block(x_ptr, n, BLOCK)
    x = xt.to(tl.float32)
    if INDEX_I32:  # 32-bit division is several times cheaper than 64-bit on the GPU
        ch = (offs.to(tl.int32) // inner) % channels
    else:
        ch = (offs // inner) % channels
    s = tl.load(scale_ptr + ch, mask=inb, other=1.0)
    inv = tl.div_rn(tl.full(s.shape, 1.0, tl.float32), s)
    if FLOAT_ZP:
        z = tl.load(zp_ptr + ch, mask=inb, other=0.0)
        lo = quant_min + 0.0
        hi = quant_max + 0.0
        r = _round_half_even(tl.fma(x, inv, z)) + 0.0  # aten's integer round trip: -0.0 becomes +0.0
        m = (r >= lo) & (r <= hi)
        y = (_clamp_nan_low(r, lo, hi) - z) * s
    else:
        z = tl.load(zp_ptr + ch, mask=inb, other=0).to(tl.int64)
        q = _to_int64_saturating(_round_half_even(x * inv)) + z  # wraps like the device's int64 add
        m = (q >= quant_min) & (q <= quant_max)
        qc = tl.minimum(tl.maximum(q, quant_min), quant_max)
        y = (qc - z).to(tl.float32) * s
    tl.store(out_ptr + offs, y.to(xt.dtype), mask=inb)
    if WRITE_MASK:
        _store_mask(mask_ptr, m, tl.program_id(0), n, BLOCK, PACKED)


@triton.jit
def _fq_backward_kernel(g_ptr, mask_ptr, out_ptr, n, PACKED: tl.constexpr, BLOCK: tl.constexpr):
    offs, inb, g = _load_block(g_ptr, n, BLOCK)
    m = _load_mask(mask_ptr, offs, inb, PACKED)
    # Multiply (not select), so -dy * 0 = -0.0 and NaN stays NaN, as aten's dy * mask.
    tl.store(out_ptr + offs, (g.to(tl.float32) * m.to(tl.float32)).to(g.dtype), mask=inb)


def _grid(n):
    return (triton.cdiv(n, _BLOCK),)


def _packed(mask):
    return mask is not None and mask.dtype == torch.uint8


def _flat(t):
    """A dense tensor as the 1-D run of its storage. The interpreter copies tensors by logical order, which
    would reorder a channels-last or transposed input against the channel index computed from offsets."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset()) if t is not None else None


def per_tensor(x, out, mask, scale, zero_point, scale_t, zero_point_t, enabled_t, quant_min, quant_max, flavour):
    """Launcher (contract: qkernels/fake_quant.py, LAUNCHERS); scale_t/zero_point_t, when given (together),
    replace scale/zero_point as one-element float32/int32 tensors; enabled_t None or an int32 flag; mask None,
    bool in x's layout, or packed uint8 (bits in storage order). flavour is ignored: aten's CUDA rules."""
    tensors = scale_t is not None
    flag = enabled_t is not None
    n = x.numel()
    x, out, mask = _flat(x), _flat(out), _flat(mask)
    _fq_per_tensor_kernel[_grid(n)](
        x, out, mask if mask is not None else out, n,
        0.0 if tensors else float(scale), 0 if tensors else int(zero_point),
        scale_t if tensors else x, zero_point_t if tensors else x, enabled_t if flag else x,
        quant_min, quant_max,
        TENSOR_QPARAMS=tensors, HAS_FLAG=flag, WRITE_MASK=mask is not None, PACKED=_packed(mask), BLOCK=_BLOCK,
        num_warps=_WARPS, enable_fp_fusion=False,
    )


def per_channel(x, out, mask, scale, zero_point, inner, quant_min, quant_max, flavour, use_fma):
    """Launcher; scale float32 [C], zero_point int32 or float32 [C], both contiguous; storage offset i is in
    channel (i // inner) % C. flavour and use_fma are ignored: aten's CUDA rules (a float zero point by FMA)."""
    n = x.numel()
    x, out, mask = _flat(x), _flat(out), _flat(mask)
    _fq_per_channel_kernel[_grid(n)](
        x, out, mask if mask is not None else out, scale, zero_point, n, inner, scale.numel(),
        quant_min, quant_max,
        FLOAT_ZP=zero_point.is_floating_point(), WRITE_MASK=mask is not None, PACKED=_packed(mask),
        INDEX_I32=n < 2**31, BLOCK=_BLOCK,
        num_warps=_WARPS, enable_fp_fusion=False,
    )


def backward(grad, mask, out):
    n = grad.numel()
    _fq_backward_kernel[_grid(n)](
        _flat(grad), _flat(mask), _flat(out), n, _packed(mask), BLOCK=_BLOCK, num_warps=_WARPS, enable_fp_fusion=False
    )


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def launch_every_specialization():
    """Calls the launchers on CPU tensors once per kernel specialization they make (tests/triton_compile_check.py
    compiles each for a GPU): per-tensor (Python-number and tensor qparams, with and without the enable flag),
    per-channel (int and float zero points) and backward, for every dtype and mask form."""
    for dtype in _DTYPES:
        x = torch.randn(3, 700, dtype=dtype)
        masks = (None, torch.empty_like(x, dtype=torch.bool), torch.empty((x.numel() + 7) // 8, dtype=torch.uint8))
        for mask in masks:
            out = torch.empty_like(x)
            per_tensor(x, out, mask, 0.1, 3, None, None, None, -128, 127, Flavour.Cuda)
            for flag in (None, torch.ones(1, dtype=torch.int32)):
                per_tensor(x, out, mask, 0.0, 0, torch.ones(1), torch.zeros(1, dtype=torch.int32), flag, -128, 127,
                           Flavour.Cuda)
            for zp in (torch.zeros(700, dtype=torch.int32), torch.zeros(700)):
                per_channel(x, out, mask, torch.ones(700), zp, 1, -128, 127, Flavour.Cuda, True)
            if mask is not None:
                backward(x, mask, out)
