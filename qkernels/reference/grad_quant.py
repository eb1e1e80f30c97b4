"""Pure-PyTorch reference of low-bit gradient quantization with an adaptive clipping interval (Kim et al. 2024,
"Toward INT4 Fixed-Point Training via Exploring Quantization Error for Gradients"; the released LBT code,
``../shared/research/kim-int4-gradients.md`` §1.2 and §3): the spec the gradient-quantization kernels will be
tested against.

**Groups.** A gradient ``G`` (contiguous, any shape, at least one element) is walked flat in storage order and
split into groups of ``n`` consecutive elements: ``granularity="tensor"`` one group (``n = numel``, the paper);
``"row"`` one per index of dim 0 (``n = numel / size(0)``, per sample: Chen et al.'s PSQ); ``"group"`` groups of
``group_size`` inside a row (``group_size`` divides the row). Per group ``j``, in float32 (fp16/bf16 widened),
with ``L = 2^(b-1) - 1`` (``2^b - 1`` levels, codes ``-L..L``) and ``γ`` the clip ratio (float32, ``0 < γ <= 1``):

    m   = max |g|                      over the group
    c   = γ * m                        the clip value
    s   = c / L                        the step (the group's scale)
    v   = clamp(g / s, -L, L)          (values beyond ±c get k = ±L: ĝ = ±L·s, c up to the rounding of s)
    k   = nearest:    rne(v)                                    (no randomness)
          stochastic: floor(v) + (r < (v - floor(v)) * 2^24)    (r: a uniform 24-bit integer per element)
    ĝ   = k * s                        in G's dtype

``r`` is the top 24 bits of word 0 of ``qkernels.reference.philox.element_words(key, i)`` for the element's
flat index ``i``: so the draw depends on the key and the element only, never on the launch, and
``P(k = floor(v) + 1) = ceil(frac · 2^24) / 2^24``, unbiased to float32 precision (the official ``round(x + u)``
with a float ``u`` is biased by about half an ulp of ``x``; note §1.2 and fakequant-peers-part2.md §4.6).

Edge cases: a group with ``m == 0`` (all zeros) gives ``ĝ = 0``, codes 0 and scale 0 (the official code's
``±1e-8`` guard, made exact); a group holding a NaN or an infinity gives NaN for every ``ĝ`` of the group, codes
0 and scale NaN (``m`` is not finite), and clips nothing.

**Clipped count.** ``n_clipped = #{i : |g_i| > c}`` (strict; summed over the groups), what the interval update
needs. **Packed int4** (``b <= 4``): code ``k`` of element ``i`` is the nibble ``k & 0xF`` (two's complement) of
byte ``i // 2``, the low nibble for even ``i`` (an odd count leaves the last high nibble 0); the scales are the
float32 ``s`` per group; ``unpack_int4`` gives ``k * s`` back, the same bits as ``ĝ``.

**Interval update** (note §3.1, every iteration of a layer, after its backward): with ``R = n_clipped / numel``
of that iteration and the released code's defaults ``α = 1e-3``, ``η = 1e-3``, ``γ_min = 1e-3``, ``γ_max = 1``,

    γ ← clamp(γ + η · sign(R − α / (2^b − 1)), γ_min, γ_max)     unless m == 0 (no update), in float32

**First-batch initialisation** (note §3.3, ``init="lbt"``, the released loop with its overshoot): from ``γ = 1``,
``ema = 0``, repeat ``R = mean(|G| > γ m)``, ``ema = 0.999 ema + 0.001 R``, ``t = sign(ema − α/(2^b − 1))``,
``γ = γ + 0.001 t`` while ``t <= 0``, then clamp; every operation in float32. ``init="quantile"``:
``γ = quantile(|G|, 1 − α/(2^b − 1)) / m``, clamped; ``init="none"``: ``γ = 1``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .philox import element_words

__all__ = ["GRANULARITIES", "ROUNDINGS", "INITS", "ALPHA", "ETA", "GAMMA_MIN", "GAMMA_MAX", "levels", "group_len",
           "quantize", "dequantize", "pack_int4", "unpack_int4", "target_ratio", "update_clip_ratio",
           "initial_clip_ratio", "uniform24", "absmax", "Launchers"]

GRANULARITIES = ("tensor", "row", "group")
ROUNDINGS = ("stochastic", "nearest")
INITS = ("lbt", "quantile", "none")
ALPHA, ETA, GAMMA_MIN, GAMMA_MAX = 1e-3, 1e-3, 1e-3, 1.0  # the released code's defaults (note §3.2)


def levels(bits: int) -> int:
    """``L = 2^(b-1) - 1``: the codes are ``-L..L``."""
    return (1 << (bits - 1)) - 1


def group_len(shape, granularity: str, group_size=None) -> int:
    """``n``, the elements per group (module docstring) of a gradient of ``shape``."""
    numel = math.prod(shape)
    if granularity == "tensor":
        return numel
    row = numel // shape[0]
    return row if granularity == "row" else group_size


def uniform24(key: torch.Tensor, numel: int) -> torch.Tensor:
    """``r`` int64 [numel]: the top 24 bits of Philox word 0 of each flat index (module docstring)."""
    index = torch.arange(numel, dtype=torch.int64, device=key.device)
    return element_words(key, index)[0] >> 8


def quantize(g: torch.Tensor, bits: int, clip_ratio, rounding: str, n: int, key=None):
    """``(k, scales, n_clipped)``: the codes as float32 of ``g``'s shape (exact integers ``-L..L``; 0 in a
    non-finite group), the scales float32 ``[numel / n]`` and the clipped count int64 0-dim. ``clip_ratio``:
    a float or a float32 tensor of one element; ``key``: ``philox.draw_key``'s (stochastic rounding only)."""
    gf = g.float().reshape(-1, n)
    gamma = torch.as_tensor(clip_ratio, dtype=torch.float32, device=g.device).reshape(())
    finite = gf.isfinite().all(1, keepdim=True)
    m = torch.where(finite, gf.abs().amax(1, keepdim=True), float("nan"))
    c = gamma * m
    s = c / levels(bits)
    v = torch.clamp(gf / s, -levels(bits), levels(bits))
    if rounding == "nearest":
        k = torch.round(v)
    else:
        floor = torch.floor(v)
        r = uniform24(key, gf.numel()).reshape(gf.shape).float()
        k = floor + (r < (v - floor) * 2.0 ** 24).float()
    usable = finite & (m > 0)
    k = torch.where(usable, k, torch.zeros_like(k))
    scales = torch.where(m == 0, torch.zeros_like(s), s).reshape(-1)
    n_clipped = (gf.abs() > c).sum()
    return k.reshape(g.shape), scales, n_clipped


def dequantize(k: torch.Tensor, scales: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``ĝ = k · s`` in ``dtype`` (k of the gradient's shape, s per group of ``n``)."""
    return (k.reshape(-1, n) * scales.reshape(-1, 1)).reshape(k.shape).to(dtype)


def pack_int4(k: torch.Tensor) -> torch.Tensor:
    """uint8 ``[ceil(numel / 2)]``: two codes per byte, the low nibble first (two's complement nibbles)."""
    codes = k.reshape(-1).to(torch.int64) & 0xF
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, scales: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """``k · s`` of ``shape`` in ``dtype`` from ``pack_int4``'s bytes and the per-group scales (the group length
    is ``numel / scales.numel()``)."""
    numel = math.prod(shape)
    b = packed.to(torch.int64)
    nibbles = torch.stack([b & 0xF, b >> 4], 1).reshape(-1)[:numel]
    k = torch.where(nibbles >= 8, nibbles - 16, nibbles).float()
    return dequantize(k.reshape(shape), scales.float(), numel // scales.numel(), dtype)


def target_ratio(bits: int, alpha: float = ALPHA) -> float:
    """``α / (2^b − 1)``, the clipped fraction the interval tracks (6.67e-5 at 4 bits)."""
    return alpha / ((1 << bits) - 1)


def update_clip_ratio(gamma: torch.Tensor, n_clipped: torch.Tensor, numel: int, amax: torch.Tensor, bits: int,
                      alpha: float = ALPHA, eta: float = ETA, gamma_min: float = GAMMA_MIN,
                      gamma_max: float = GAMMA_MAX) -> torch.Tensor:
    """The new ``γ`` (float32 0-dim) after one iteration (module docstring): a sign step towards the target
    clipped fraction, no step when the gradient was all zero (``amax == 0``)."""
    ratio = n_clipped.double() / numel  # numel: an int, or a float64 tensor (summed over ranks)
    step = torch.sign(ratio - target_ratio(bits, alpha)).float()
    new = torch.clamp(gamma.float() + eta * step, gamma_min, gamma_max)  # float32 ops, as the released code's
    return torch.where(amax.float() == 0, gamma.float(), new)


def initial_clip_ratio(g: torch.Tensor, bits: int, init: str = "lbt", alpha: float = ALPHA,
                       gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX) -> float:
    """``γ`` after the first batch's initialisation from this batch's ``g`` (module docstring), a Python float
    (float32 value). ``lbt`` transcribes the released loop step by step in float32 (numpy scalars), overshoot
    included."""
    a = g.detach().float().abs().reshape(-1).cpu().numpy()
    m = np.float32(a.max()) if a.size else np.float32(0)
    target = np.float32(target_ratio(bits, alpha))
    if init == "none" or m == 0:
        return 1.0
    if init == "quantile":
        q = np.float32(np.quantile(a.astype(np.float64), 1.0 - float(target)))
        return float(np.clip(np.float32(q / m), np.float32(gamma_min), np.float32(gamma_max)))
    ordered = np.sort(a)
    n = np.float32(a.size)
    gamma, ema, t = np.float32(1.0), np.float32(0.0), 0.0
    while t <= 0:
        threshold = np.float32(gamma * m)
        above = a.size - np.searchsorted(ordered, threshold, side="right")  # #{|g| > γ m}, strict
        ratio = np.float32(np.float32(above) / n)
        ema = np.float32(np.float32(0.999) * ema) + np.float32(np.float32(0.001) * ratio)
        t = np.sign(ema - target)
        gamma = np.float32(gamma + np.float32(np.float32(0.001) * np.float32(t)))
    return float(np.clip(gamma, np.float32(gamma_min), np.float32(gamma_max)))


def absmax(g: torch.Tensor, n: int) -> torch.Tensor:
    """float32 ``[numel / n]``: ``max |g|`` per group, NaN for a group holding a NaN or an infinity."""
    gf = g.float().reshape(-1, n)
    return torch.where(gf.isfinite().all(1), gf.abs().amax(1), float("nan"))


class Launchers:
    """The reference backend's adapter of the family's launcher contract (qkernels/grad_quant.py)."""

    @staticmethod
    def absmax(g, n, amax):
        amax.copy_(absmax(g, n))

    @staticmethod
    def quantize(g, n, amax, bits, clip_ratio, key, packed, out, scales, n_clipped):
        k, s, count = quantize(g, bits, clip_ratio, "nearest" if key is None else "stochastic", n, key)
        out.copy_(pack_int4(k) if packed else dequantize(k, s, n, g.dtype))
        scales.copy_(s)
        n_clipped.copy_(count)
