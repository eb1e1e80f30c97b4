"""Triton kernels of Wenshøj et al.'s oscillation-inducing regularizer (installed as
``qkernels.triton_kernels.oscillation_regularizer``).

They implement ``qkernels.reference.oscillation_regularizer`` (the spec: its docstring states the math), also under
``TRITON_INTERPRET=1`` on CPU tensors. Per tensor, with its max m (float32) and L = 2^(bits-1) - 1, per element
in float32:

    s   = div_rn(m, L)
    q   = s == 0 ? 0 : rne(div_rn(w, s)) * s
    e   = q * q - w * w,   t = q * (q - w),   tie = |w| == m
    coef   = scale_grad && m > 0 ? float32(S2 / (float64(m) * c)) : 0
    factor = float32(float64(go) * 2 / N)
    dw  = ((q - w) + (tie ? (w > 0 ? coef : -coef) : 0)) * factor      (in w's dtype)

compiled with ``enable_fp_fusion=False`` (no product is contracted into an add, as in the spec's tensor ops); the
divisions are IEEE (``div_rn``; float64 division is IEEE in Triton).

Layout: tensor l is the reduction layout [1, 1, 1, N_l] with the blocks of ``make_blocks(dims, REDUCE_TARGET)``
(run mode: P_l chunks of ``chunk`` elements). The two reducing passes launch one program per block of each tensor
(one launch per tensor), each program folding its chunk in lanes of _BLOCK elements in a fixed loop order: the
amax pass writes the block's AbsMax (NaN sticking, ``_reduce.absmax_lanes``); the sums pass the block's float32
Sum partials of e and t (``_reduce.sum_lanes``) and its exact int64 tie Count (``_reduce.count_lanes``). A pass's
partials sit in one zero-filled [L, P_max] array per kind (the padding is each kind's identity), finished for
all tensors at once: the sums in float64 in block order, not rounded (``finish_sum``), the others exactly
(``finish``). The backward is elementwise, one launch per tensor, coef and factor formed by every program from
the device's amax, sums, ties and grad. Nothing is read back to the host.
"""

import itertools

import torch
import triton
import triton.language as tl

from ..reference.oscillation_regularizer import REDUCE_TARGET, levels
from ..reference.reduce import finish, finish_sum, make_blocks
from ._reduce import absmax_fold, absmax_lanes, count_fold, count_lanes, sum_lanes
from .fake_quant import _round_half_even
from .oscillation_fake_quant import _program_id

__all__ = ["amax", "sums", "backward"]

_BLOCK = 2048  # elements per tile (lanes of a block's fold)
_WARPS = 8


@triton.jit
def _scale(amax_ptr, levels):
    """The tensor's (m, s = m / L), float32 (`zeros + L`: float32 also when Triton passed L == 1 as a
    constexpr)."""
    m = tl.load(amax_ptr)
    return m, tl.div_rn(m, tl.zeros((), tl.float32) + levels)


@triton.jit
def _quantize(w, s):
    """q of the float32 tile w for the scale s (a scalar)."""
    q = _round_half_even(tl.div_rn(w, tl.broadcast_to(s, w.shape))) * s
    return tl.where(s == 0, 0.0, q)


@triton.jit
def _block(N, chunk, INDEX_I32: tl.constexpr):
    """The program's block p and its elements [start, end)."""
    p = _program_id(INDEX_I32)
    start = p * chunk
    return p, start, tl.minimum(start + chunk, N)


@triton.jit
def _amax_kernel(w_ptr, part_ptr, N, chunk, INDEX_I32: tl.constexpr, BLOCK: tl.constexpr):
    p, start, end = _block(N, chunk, INDEX_I32)
    acc = tl.zeros((BLOCK,), tl.float32)
    for i in range(start, end, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        m = offs < end
        acc = absmax_fold(acc, tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32), m)
    tl.store(part_ptr + p, absmax_lanes(acc, None))


@triton.jit
def _sums_kernel(w_ptr, amax_ptr, part_ptr, tie_ptr, n_ptr, N, chunk, part_stride, levels,
                 INDEX_I32: tl.constexpr, BLOCK: tl.constexpr):
    p, start, end = _block(N, chunk, INDEX_I32)
    m, s = _scale(amax_ptr, levels)
    e_acc = tl.zeros((BLOCK,), tl.float32)
    t_acc = tl.zeros((BLOCK,), tl.float32)
    c_acc = tl.zeros((BLOCK,), tl.int32)
    for i in range(start, end, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        inb = offs < end
        w = tl.load(w_ptr + offs, mask=inb, other=0.0).to(tl.float32)
        q = _quantize(w, s)
        # masked: a NaN s makes the padding's terms NaN too
        e_acc += tl.where(inb, q * q - w * w, 0.0)
        t_acc += tl.where(inb, q * (q - w), 0.0)
        c_acc = count_fold(c_acc, tl.abs(w) == m, inb)
    tl.store(part_ptr + p, sum_lanes(e_acc, None))
    tl.store(part_ptr + part_stride + p, sum_lanes(t_acc, None))
    tl.store(tie_ptr + p, count_lanes(c_acc, None))
    # N for the finish's S1 / N, which then needs no host-to-device copy of the sizes
    tl.store(n_ptr, tl.zeros((), tl.float64) + N, mask=p == 0)


@triton.jit
def _backward_kernel(w_ptr, dw_ptr, grad_ptr, amax_ptr, sums_ptr, ties_ptr, N, levels,
                     SCALE_GRAD: tl.constexpr, INDEX_I32: tl.constexpr, BLOCK: tl.constexpr):
    m, s = _scale(amax_ptr, levels)
    if SCALE_GRAD:
        coef = (tl.load(sums_ptr + 1) / (m.to(tl.float64) * tl.load(ties_ptr).to(tl.float64))).to(tl.float32)
        coef = tl.where(m > 0, coef, 0.0)
    else:
        coef = tl.zeros((), tl.float32)
    factor = (tl.load(grad_ptr).to(tl.float64) * 2.0 / N).to(tl.float32)
    offs = _program_id(INDEX_I32) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < N
    wt = tl.load(w_ptr + offs, mask=inb, other=0.0)
    w = wt.to(tl.float32)
    q = _quantize(w, s)
    scale_term = tl.where(tl.abs(w) == m, tl.where(w > 0, coef, -coef), 0.0)
    tl.store(dw_ptr + offs, (((q - w) + scale_term) * factor).to(wt.dtype), mask=inb)


def _plan(w):
    """(N, chunk, P, tile, int32 offsets) of one tensor's blocks."""
    n = w.numel()
    blocks = make_blocks((1, 1, 1, n), REDUCE_TARGET)
    # offsets reach at most the last tile's end, below n + _BLOCK
    return n, blocks.chunk, blocks.P, min(_BLOCK, triton.next_power_of_2(blocks.chunk)), n + _BLOCK <= 2**31


def _launch(kernel, grid, *args, **constexprs):
    kernel[grid](*args, **constexprs, num_warps=_WARPS, enable_fp_fusion=False)


def amax(w, out):
    """Launcher (contract: qkernels/oscillation_regularizer.py, LAUNCHERS): out[l] = max|w_l| (float32, NaN
    sticking), over the AbsMax partials of each tensor's blocks."""
    plans = [_plan(t) for t in w]
    parts = torch.zeros(len(w), max(plan[2] for plan in plans), dtype=torch.float32, device=out.device)
    for t, part, (n, chunk, P, tile, i32) in zip(w, parts, plans):
        _launch(_amax_kernel, (P,), t, part, n, chunk, INDEX_I32=i32, BLOCK=tile)
    out.copy_(finish(parts, 1, "absmax"))


def sums(w, amax, bits, out, ties):
    """Launcher: out[l] = (S1_l / N_l, S2_l) (float64: each tensor's float32 block partials of e and t added in
    float64 in block order) and ties[l] = #{i : |w_li| == amax[l]} (int64, exact)."""
    plans = [_plan(t) for t in w]
    p_max = max(plan[2] for plan in plans)
    parts = torch.zeros(len(w), 2, p_max, dtype=torch.float32, device=out.device)  # e's, then t's
    counts = torch.zeros(len(w), p_max, dtype=torch.int64, device=out.device)
    numels = torch.empty(len(w), dtype=torch.float64, device=out.device)
    for l, (t, (n, chunk, P, tile, i32)) in enumerate(zip(w, plans)):
        _launch(_sums_kernel, (P,), t, amax[l], parts[l], counts[l], numels[l], n, chunk, p_max, levels(bits),
                INDEX_I32=i32, BLOCK=tile)
    totals = finish_sum(parts, 2, torch.float64)
    totals[:, 0] /= numels
    out.copy_(totals)
    ties.copy_(finish(counts, 1, "count"))


def backward(w, dw, grad, amax, sums, ties, bits, scale_grad):
    """Launcher: dw[l] (w_l's dtype) from the module docstring's math, with m = amax[l], (S1 / N, S2) = sums[l],
    c = ties[l] and go = grad (float32, 0-dim), all read on the device."""
    for l, (t, d) in enumerate(zip(w, dw)):
        n = t.numel()
        _launch(_backward_kernel, (triton.cdiv(n, _BLOCK),), t, d, grad, amax[l], sums[l], ties[l], n, levels(bits),
                SCALE_GRAD=bool(scale_grad), INDEX_I32=n + _BLOCK <= 2**31, BLOCK=_BLOCK)


def launch_every_specialization():
    """Calls the launchers on CPU tensors once per kernel specialization they make (tests/triton_compile_check.py
    compiles each for a GPU): every weight dtype, a one-block tensor with a short tile and a multi-block one,
    bits with L == 1 (a constexpr) and L > 1, and both scale_grad."""
    shapes = ((5, 3), (40000,))
    for dtype, bits in itertools.product((torch.float32, torch.float16, torch.bfloat16), (2, 4)):
        w = [torch.randn(shape, dtype=dtype) for shape in shapes]
        m, s = torch.empty(len(w)), torch.empty(len(w), 2, dtype=torch.float64)
        c = torch.empty(len(w), dtype=torch.int64)
        amax(w, m)
        sums(w, m, bits, s, c)
        for scale_grad in (True, False):
            backward(w, [torch.empty_like(t) for t in w], torch.tensor(1.0), m, s, c, bits, scale_grad)
