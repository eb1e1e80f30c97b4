"""Triton kernels of low-bit gradient quantization (Kim et al. 2024; installed as
``qkernels.triton_kernels.grad_quant``).

They implement ``qkernels.reference.grad_quant`` (the spec: its docstring states the math), also under
``TRITON_INTERPRET=1`` on CPU tensors. g is contiguous, walked flat in G = numel / n groups of n elements.

absmax: the [G, n] matrix in tiles of ROWS groups by BLOCK_N columns (ROWS > 1 packs several short groups into
one program); a group longer than _CHUNK is split into P chunks, each program writing one AbsMax partial
(``_reduce.absmax_lanes``, NaN sticking), finished by ``reduce.finish`` (P == 1 writes amax directly). An inf
partial means the group holds an infinity, so it is stored as NaN: m is NaN exactly for a non-finite group. Max
is exact, so neither the tiling nor the combine order changes a bit.

quantize: elementwise, per element i of group j = i // n, in float32 (fp16/bf16 widened), with m = amax[j],
γ = clip_ratio and L = 2^(b-1) - 1 read or formed on the device:

    c = γ * m,   s = div_rn(c, L),   v = clamp(div_rn(g, s), -L, L)           (NaN stays NaN, as torch.clamp)
    k = nearest:    rne(v)                                                      (sign of zero kept, as torch.round)
        stochastic: floor(v) + (r < (v - floor(v)) * 2^24),  r = word0(Philox(key, i)) >> 8
    k = m > 0 ? k : 0,   scale = m == 0 ? 0 : s,   ĝ = k * scale  (g's dtype),   clipped = |g| > c

compiled with ``enable_fp_fusion=False`` (no product contracted into an add, as in the spec's tensor ops); the
divisions are IEEE (``div_rn``). Packed (uint8 out): program q owns bytes [q * BLOCK, q * BLOCK + BLOCK), byte b
holding elements 2b (low nibble) and 2b + 1 (high nibble; 0 past the end), each with its own group's constants,
the nibble ``k & 0xF`` (a NaN k, from a group whose s underflowed to 0, gives 0 as the spec's int64 cast does).
The element holding a group's first index writes its scale (one writer per group); each program writes its
int64 clipped count, summed by ``reduce.finish`` (exact). Nothing is read back to the host.
"""

import itertools

import torch
import triton
import triton.language as tl

from ..reference.grad_quant import levels
from ..reference.reduce import finish
from ._philox import element_words
from ._reduce import absmax_fold, absmax_lanes, count_lanes
from .fake_quant import _round_half_even
from .oscillation_fake_quant import _program_id

__all__ = ["absmax", "quantize"]

_TILE = 2048  # absmax: elements per tile (ROWS * BLOCK_N)
_CHUNK = 16384  # absmax: most elements of one group per program (a long group spreads over programs)
_BLOCK = 1024  # quantize: elements (packed: bytes) per program
_WARPS = 8
_INDEX_LIMIT = 2**31  # offsets below it are int32 (0: int64 offsets, to compile and test that path on small tensors)


@triton.jit
def _absmax_kernel(g_ptr, part_ptr, G, n, chunk, P, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                   INDEX_I32: tl.constexpr):
    """Program pid = t * P + p: groups [t * ROWS, t * ROWS + ROWS) (mask < G), their columns
    [p * chunk, min(p * chunk + chunk, n)); part[group * P + p] = the chunk's max |g| (NaN if non-finite)."""
    pid = _program_id(INDEX_I32)
    p = pid % P
    rows = (pid // P) * ROWS + tl.arange(0, ROWS)
    rm = rows < G
    start = p * chunk
    end = tl.minimum(start + chunk, n)
    base = rows[:, None] * n
    acc = tl.zeros((ROWS, BLOCK_N), tl.float32)
    for i in range(start, end, BLOCK_N):
        cols = i + tl.arange(0, BLOCK_N)[None, :]
        m = rm[:, None] & (cols < end)
        acc = absmax_fold(acc, tl.load(g_ptr + base + cols, mask=m, other=0.0).to(tl.float32), m)
    a = absmax_lanes(acc, 1)
    tl.store(part_ptr + rows * P + p, tl.where(a == float("inf"), float("nan"), a), mask=rm)


@triton.jit
def _floor(v):
    """floor(v), NaN staying NaN. Not tl.floor: libdevice's floorf is built with ftz (Triton's reflect ftz), which
    floors a negative subnormal to -0.0 instead of -1."""
    r = _round_half_even(v)
    return r - (r > v).to(tl.float32)


@triton.jit
def _code(g_ptr, amax_ptr, scales_ptr, key_ptr, i, inb, n, gamma, levels, STOCHASTIC: tl.constexpr):
    """(k, scale, clipped, g) of the elements at flat indices i (mask inb; 0 / False outside) from the module
    docstring's math; writes the scale of each group whose first element is among them."""
    gt = tl.load(g_ptr + i, mask=inb, other=0.0)
    g = gt.to(tl.float32)
    j = i // n
    m = tl.load(amax_ptr + j, mask=inb, other=0.0)
    lf = tl.broadcast_to(tl.zeros((), tl.float32) + levels, g.shape)  # float32 also when L == 1 is a constexpr
    c = gamma * m
    s = tl.div_rn(c, lf)
    v = tl.div_rn(g, s)
    v = tl.where(v < -lf, -lf, tl.where(v > lf, lf, v))
    if STOCHASTIC:
        w0, _, _, _ = element_words(key_ptr, i)
        f = _floor(v)
        k = f + ((w0 >> 8).to(tl.float32) < (v - f) * 16777216.0).to(tl.float32)
    else:
        k = _round_half_even(v)
        k = tl.where(k == 0, v * 0.0, k)  # torch.round gives -0.0 for v in [-0.5, -0.0]; the trick +0.0
    k = tl.where(m > 0, k, 0.0)  # m is NaN for a non-finite group
    scale = tl.where(m == 0, 0.0, s)
    tl.store(scales_ptr + j, scale, mask=inb & (i == j * n))
    return k, scale, inb & (tl.abs(g) > c), gt


@triton.jit
def _nibble(k):
    """k & 0xF of the integer-valued float k (two's complement), 0 for NaN (whose cast to int is undefined)."""
    return tl.where(k == k, k, 0.0).to(tl.int32) & 0xF


@triton.jit
def _quantize_kernel(g_ptr, amax_ptr, clip_ptr, key_ptr, out_ptr, scales_ptr, part_ptr, N, n, levels,
                     STOCHASTIC: tl.constexpr, PACKED: tl.constexpr, INDEX_I32: tl.constexpr, BLOCK: tl.constexpr):
    pid = _program_id(INDEX_I32)
    gamma = tl.load(clip_ptr)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    if PACKED:
        lo = 2 * offs
        hi = lo + 1
        k_lo, _, hit_lo, _ = _code(g_ptr, amax_ptr, scales_ptr, key_ptr, lo, lo < N, n, gamma, levels, STOCHASTIC)
        k_hi, _, hit_hi, _ = _code(g_ptr, amax_ptr, scales_ptr, key_ptr, hi, hi < N, n, gamma, levels, STOCHASTIC)
        tl.store(out_ptr + offs, (_nibble(k_lo) | (_nibble(k_hi) << 4)).to(tl.uint8), mask=lo < N)
        hits = hit_lo.to(tl.int32) + hit_hi.to(tl.int32)
    else:
        inb = offs < N
        k, scale, hit, gt = _code(g_ptr, amax_ptr, scales_ptr, key_ptr, offs, inb, n, gamma, levels, STOCHASTIC)
        tl.store(out_ptr + offs, (k * scale).to(gt.dtype), mask=inb)
        hits = hit.to(tl.int32)
    tl.store(part_ptr + pid, count_lanes(hits, None))


def _launch(kernel, grid, *args, **constexprs):
    kernel[grid](*args, **constexprs, num_warps=_WARPS, enable_fp_fusion=False)


def absmax(g, n, amax):
    """Launcher (contract: qkernels/grad_quant.py, LAUNCHERS): amax[j] = max |g| over group j (float32; NaN for a
    group holding a NaN or an infinity)."""
    groups = g.numel() // n
    block_n = min(triton.next_power_of_2(n), _TILE)
    rows = _TILE // block_n
    chunk = min(n, _CHUNK)
    P = triton.cdiv(n, chunk)
    part = amax if P == 1 else torch.empty(groups, P, dtype=torch.float32, device=amax.device)
    # the largest offset formed (masked rows past G included) is below (G + ROWS) * n + BLOCK_N
    i32 = (groups + rows) * n + block_n < _INDEX_LIMIT
    _launch(_absmax_kernel, (triton.cdiv(groups, rows) * P,), g, part, groups, n, chunk, P,
            ROWS=rows, BLOCK_N=block_n, INDEX_I32=i32)
    if P > 1:
        amax.copy_(finish(part, 1, "absmax"))


def quantize(g, n, amax, bits, clip_ratio, key, packed, out, scales, n_clipped):
    """Launcher: out (ĝ in g's dtype, or the packed nibbles), scales[j] and n_clipped (int64, exact) from the
    module docstring's math, with amax, clip_ratio (float32 0-dim) and key (int64 [seed, offset]; None:
    nearest rounding) read on the device."""
    N = g.numel()
    programs = triton.cdiv(out.numel(), _BLOCK)
    parts = torch.empty(programs, dtype=torch.int64, device=out.device)
    # stochastic or not is a constexpr: without a key, amax stands in for the pointer, never read
    _launch(_quantize_kernel, (programs,), g, amax, clip_ratio, amax if key is None else key, out, scales, parts,
            N, n, levels(bits), STOCHASTIC=key is not None, PACKED=bool(packed),
            INDEX_I32=N + 2 * _BLOCK + 2 < _INDEX_LIMIT, BLOCK=_BLOCK)
    n_clipped.copy_(finish(parts, 0, "count"))


def launch_every_specialization():
    """Calls the launchers on CPU tensors once per kernel specialization they make (tests/triton_compile_check.py
    compiles each for a GPU): every gradient dtype; absmax with several short groups per program, one group
    per program and a group in several chunks; quantize nearest and stochastic, dequantized and packed, with
    L == 1 (a constexpr) and L > 1; int32 and int64 offsets."""
    global _INDEX_LIMIT
    shapes = ((6, 20), (3, 5000), (1, 2 * _CHUNK + 3))
    try:
        for limit, dtype, shape in itertools.product((2**31, 0), (torch.float32, torch.float16, torch.bfloat16),
                                                     shapes):
            _INDEX_LIMIT = limit
            g = torch.randn(shape, dtype=dtype)
            n = g.numel() // shape[0]
            amax = torch.empty(shape[0])
            absmax(g, n, amax)
            for bits, key, packed in itertools.product((2, 4), (None, torch.tensor([1, 2])), (False, True)):
                out = torch.empty((g.numel() + 1) // 2, dtype=torch.uint8) if packed else torch.empty_like(g)
                quantize(g, n, amax, bits, torch.tensor(0.5), key, packed, out, torch.empty(shape[0]),
                         torch.empty((), dtype=torch.int64))
    finally:
        _INDEX_LIMIT = 2**31
