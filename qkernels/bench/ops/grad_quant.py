"""INT4 stochastic gradient quantization (Kim et al. 2024; ``qkernels.quantize_gradient`` and
``quantize_gradient_packed``), γ = 0.8 as a float32 device tensor, the key of each call drawn from a
``torch.Generator`` that ``make`` seeds (so every provider starts from the same seed, and the qkernels backends
must give the reference's bits: the family's contract).

Math (``qkernels.reference.grad_quant``), per group (the tensor; per row: each index of dim 0) in float32, with
``L = 2^(b−1) − 1 = 7``: ``c = γ · max|g|``, ``s = c / L``, ``v = clamp(g / s, −L, L)``, ``k = floor(v) + [r <
frac(v) · 2^24]`` (``r`` 24 Philox bits per element), ``ĝ = k · s`` in g's dtype; ``n_clipped = #{|g| > c}``.
Packed: ``k & 0xF`` two per byte, low nibble first (uint8 ``[numel / 2]``), and ``s`` float32 per group.

Shapes: a layer's output gradient (kind ``activation``, e.g. [256, 64, 56, 56]); the sweep lays n out as [n]
(per row: [256, n / 256]).

eager: the released code's quantizer (its ``grad_quant`` backward) on a float32 copy:
``s = 2c / (2^b − 2)``, ``ĝ = round(clamp((g + c) / s + U[−½, ½), 0, 2^b − 2)) · s − c`` with ``U`` from
``torch.rand_like`` (the global generator, as released), and the clipped count the interval update needs,
``(|g| > c).sum()``; packed: the codes ``k = round(...) − L`` packed as a user would, two nibbles per byte, low
first, and ``s``. Its grid is the reference's: ``2c / (2^b − 2)`` and ``c / L`` are the same float32 (a
power-of-two factor: one rounding of the same quotient), and its level ``j`` in 0..2^b − 2 is ``(j − L) · s`` up
to float32 roundings of ``c``. Its draws are not Philox's, so ĝ (or the codes) is checked by the tolerance
``stochastic_rounding``: every value on the grid ``k · s`` (s from the inputs as the reference computes it; a
slack of one rounding to g's dtype and a few float32 ulps of c), ``k`` the floor or ceil of ``clamp(g / s, −L,
L)``, and the rounding errors ``k − g / s`` with the mean (0) and mean square (``frac (1 − frac)``) of stochastic
rounding within Hoeffding bounds (false-fail chance 1e-9 each): a wrong step, a clip, a code off by two, nearest
or floor rounding all fail it. ``n_clipped`` and the scales are compared exactly.

Minimal traffic (b = element size, fwd only): g read twice (the maxima, then quantize) and ĝ written once: 3b
per element; packed: 2b + ½ (the codes). The scales and the count (a few bytes per group) are left out.
"""

from __future__ import annotations

import math

import torch

from qkernels import quantize_gradient, quantize_gradient_packed

from ..spec import Op, Tolerance, exact

BITS, GAMMA, ROWS = 4, 0.8, 256
LEVELS = (1 << (BITS - 1)) - 1  # L = 7: codes -7..7
FALSE_FAIL = 1e-9  # the chance that the moment checks reject a correct stochastic rounding (Hoeffding)


def traffic(mode: str, numel: int, itemsize: int) -> int:
    return 3 * itemsize * numel


def packed_traffic(mode: str, numel: int, itemsize: int) -> int:
    return 2 * itemsize * numel + (numel + 1) // 2


def _rows(dims, granularity) -> int:
    return 1 if granularity == "tensor" else dims[0]


def _maker(granularity):
    def make(dims, dtype, device) -> dict:
        g = torch.randn(dims, generator=torch.Generator(device).manual_seed(0), device=device).to(dtype)
        # a fresh generator per make: the rounding key every provider draws is the same
        return {"g": g, "gamma": torch.full((), GAMMA, dtype=torch.float32, device=device),
                "generator": torch.Generator(device).manual_seed(2), "granularity": granularity}
    return make


def _released(i):
    """The released quantizer: (levels v in 0..2^b − 2 as float32 [groups, n], s, c, n_clipped)."""
    g = i["g"].float()
    flat = g.reshape(_rows(g.shape, i["granularity"]), -1)
    c = i["gamma"] * flat.abs().amax(1, keepdim=True)
    top = 2 ** BITS - 2
    s = 2 * c / top
    v = torch.round(torch.clamp((flat + c) / s + (torch.rand_like(flat) - 0.5), 0, top))
    return v, s, c, (flat.abs() > c).sum()


def _eager(i):
    v, s, c, n_clipped = _released(i)
    return (v * s - c).reshape(i["g"].shape).to(i["g"].dtype), n_clipped


def _eager_packed(i):
    v, s, _, n_clipped = _released(i)
    nibbles = (v.reshape(-1).to(torch.int64) - LEVELS) & 0xF  # two's complement nibbles of k = v − L
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    pairs = nibbles.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8), s.reshape(-1), n_clipped


def _qkernels(i):
    return quantize_gradient(i["g"], BITS, i["gamma"], "stochastic", i["granularity"], generator=i["generator"])


def _qkernels_packed(i):
    return quantize_gradient_packed(i["g"], BITS, i["gamma"], "stochastic", i["granularity"],
                                    generator=i["generator"])


def _grid(inputs):
    """(g float32 [groups, n], s [groups, 1], v = clamp(g / s, −L, L)) as the reference computes them."""
    g = inputs["g"].float()
    flat = g.reshape(_rows(g.shape, inputs["granularity"]), -1)
    s = inputs["gamma"] * flat.abs().amax(1, keepdim=True) / LEVELS
    return flat, s, torch.clamp(flat / s, -LEVELS, LEVELS)


def _check_codes(k, v, s) -> str | None:
    """None when the codes ``k`` (float64, [groups, n]) are a stochastic rounding of ``v``: each in −L..L and
    floor(v) or ceil(v) (a slack of 1e-3 steps: the released formula's (g + c) / s is not g / s + L bit for bit),
    and the rounding errors e = k − v unbiased, E e = 0, and of the stochastic variance, E e² = frac (1 − frac):
    each sum within Hoeffding's bound for e, e² in a unit range at ``FALSE_FAIL`` (nearest or floor rounding,
    or a wrong grid, fail at the sizes benchmarked)."""
    v = v.double()
    outside = (k < -LEVELS) | (k > LEVELS) | (k < torch.floor(v - 1e-3)) | (k > torch.ceil(v + 1e-3))
    if outside.any():
        at = int(outside.reshape(-1).nonzero()[0])
        return f"{int(outside.sum())} of {k.numel()} codes not floor or ceil of g / s (first at {at}: code " \
               f"{float(k.reshape(-1)[at]):g}, g / s {float(v.reshape(-1)[at]):.4f}, step {float(s.max()):.4g})"
    n, frac, e = k.numel(), v - torch.floor(v), k - v
    bound = math.sqrt(n * math.log(2 / FALSE_FAIL) / 2)
    bias, spread = float(e.sum()), float((e * e - frac * (1 - frac)).sum())
    if abs(bias) > bound:
        return f"rounding biased: sum(k − g/s) {bias:.1f} over {n} elements, bound {bound:.1f}"
    if abs(spread) > bound:
        return f"not stochastic rounding: sum((k − g/s)² − frac(1 − frac)) {spread:.1f}, bound {bound:.1f}"
    return None


def _check_dequantized(want, got, inputs) -> str | None:
    if got.dtype != want.dtype or got.shape != want.shape:
        return exact(want, got)
    flat, s, v = _grid(inputs)
    values = got.float().reshape(flat.shape)
    k = torch.round(values / s)
    # the released (v · s) − c is k · s up to a few float32 roundings of c, then one rounding to g's dtype
    slack = torch.finfo(got.dtype).eps * (k * s).abs() + 8 * torch.finfo(torch.float32).eps * s * LEVELS
    off = (values - k * s).abs() > slack
    if off.any():
        return f"{int(off.sum())} of {got.numel()} values off the grid k · s (s = γ max|g| / {LEVELS})"
    return _check_codes(k.double(), v, s)


def _check_packed(want, got, inputs) -> str | None:
    if got.dtype != want.dtype or got.shape != want.shape:
        return exact(want, got)
    flat, s, v = _grid(inputs)
    b = got.to(torch.int64)
    nibbles = torch.stack([b & 0xF, b >> 4], 1).reshape(-1)
    if flat.numel() % 2 and int(nibbles[-1]):
        return "the padding nibble of an odd count is not 0"
    k = nibbles[:flat.numel()]
    return _check_codes(torch.where(k >= 8, k - 16, k).double().reshape(flat.shape), v, s)


def stochastic_rounding(check) -> Tolerance:
    """``check`` on the first output (ĝ or the codes); the others (scales, count) exactly."""
    return Tolerance("stochastic rounding on the reference's grid: every value k · s with k floor or ceil of "
                     "clamp(g / s, -L, L) and the errors' mean and variance those of stochastic rounding "
                     f"(Hoeffding, false-fail chance {FALSE_FAIL:g}); scales and n_clipped exact: the released "
                     "code draws U from torch.rand, not Philox", check, covers=("output 0",))


_TOLERANCE = stochastic_rounding(_check_dequantized)
_PACKED_TOLERANCE = stochastic_rounding(_check_packed)


def _rows_shape(n):
    return (ROWS, n // ROWS) if n % ROWS == 0 else None


OPS = [
    Op("grad_quant", "grad_quant", "quantize_gradient, INT4 stochastic, per tensor, γ 0.8 (device tensor)",
       make=_maker("tensor"), sweep_shape=lambda n: (n,), traffic=traffic, kinds=("activation",), modes=("fwd",),
       grads=(), qkernels=_qkernels, eager=_eager, tolerances={"eager": _TOLERANCE, "compile": _TOLERANCE}),
    Op("grad_quant_packed", "grad_quant", "quantize_gradient_packed, INT4 codes two per byte and scales, per tensor",
       make=_maker("tensor"), sweep_shape=lambda n: (n,), traffic=packed_traffic, kinds=("activation",),
       modes=("fwd",), grads=(), qkernels=_qkernels_packed, eager=_eager_packed,
       tolerances={"eager": _PACKED_TOLERANCE, "compile": _PACKED_TOLERANCE}),
    Op("grad_quant_per_row", "grad_quant", "quantize_gradient, INT4 stochastic, per row (dim 0), γ 0.8",
       make=_maker("row"), sweep_shape=_rows_shape, traffic=traffic, kinds=("activation",), modes=("fwd",),
       grads=(), qkernels=_qkernels, eager=_eager, tolerances={"eager": _TOLERANCE, "compile": _TOLERANCE}),
]
