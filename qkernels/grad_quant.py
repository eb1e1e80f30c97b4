"""Low-bit gradient quantization (Kim et al. 2024, "Toward INT4 Fixed-Point Training via Exploring Quantization
Error for Gradients"), fused: argument checks, torch.library registration, fake kernels.

    g_hat, n_clipped = qkernels.quantize_gradient(g, bits=4, clip_ratio=gamma)           # dequantized, g's dtype
    codes, scales, n_clipped = qkernels.quantize_gradient_packed(g, bits=4, clip_ratio=gamma)
    g_hat = qkernels.unpack_int4(codes, scales, g.shape, g.dtype)

Per group (the whole tensor, each row, or ``group_size`` elements of a row) the clip value ``c = γ · max|g|``,
the step ``s = c / (2^(b-1) - 1)``, codes ``-L..L`` by nearest or stochastic rounding (a 24-bit threshold from
Philox4x32-10 keyed per call, per flat element index: the same bits on every backend and launch), values beyond
``±c`` at ``±L``; in the same pass the clipped count ``#{|g| > c}``. The math and the edge cases (all-zero and
non-finite groups) are ``qkernels.reference.grad_quant``. Two passes: the group maxima, then quantize and count.
No host sync: ``clip_ratio`` may be a device tensor, the key is drawn on the device from PyTorch's generator
(``torch.manual_seed``, ``generator=``, ``get_rng_state``/``set_rng_state`` reproduce a call); nearest rounding
draws nothing.

Registered op (namespace ``qkernels``): ``grad_quant(Tensor g, int bits, Tensor clip_ratio, int group_len,
Tensor? key, bool packed) -> (Tensor out, Tensor scales, Tensor n_clipped, Tensor amax)``: ``out`` the
dequantized gradient (g's dtype and shape) or the packed codes (uint8 ``[ceil(numel / 2)]``), ``scales`` float32
per group, ``n_clipped`` int64 0-dim, ``amax`` float32 per group (NaN for a non-finite group); not
differentiable (it quantizes gradients).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import backends
from ._launchers import LauncherContract
from ._shared import _fail, _failing_values, _values_checkable
from .reference import grad_quant as _ref
from .reference.grad_quant import GRANULARITIES, INITS, ROUNDINGS, group_len, levels, unpack_int4 as _unpack
from .reference.philox import draw_key

__all__ = ["quantize_gradient", "quantize_gradient_packed", "unpack_int4", "grad_quant", "update_clip_ratio",
           "initial_clip_ratio", "quantization_errors", "GRANULARITIES", "ROUNDINGS", "INITS"]

_FAMILY = "grad_quant"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The family's launcher contract (qkernels/_launchers.py). g is contiguous and walked flat in groups of n
# consecutive elements (G = numel / n groups). absmax writes amax float32 [G]: max |g| of each group, NaN for a
# group holding a NaN or an infinity. quantize reads amax, clip_ratio (float32 []) and, for stochastic rounding,
# key (int64 [2], philox.draw_key's; None: nearest) on the device, and writes out (g's dtype and shape; packed:
# uint8 [ceil(numel / 2)], element i in the low nibble of byte i // 2 when i is even), scales float32 [G] and
# n_clipped int64 [] (exact). The math: qkernels.reference.grad_quant.
LAUNCHERS = LauncherContract(_FAMILY, {
    "absmax": "(Tensor g, int n, Tensor(a!) amax) -> ()",
    "quantize": "(Tensor g, int n, Tensor amax, int bits, Tensor clip_ratio, Tensor? key, bool packed, "
                "Tensor(a!) out, Tensor(b!) scales, Tensor(c!) n_clipped) -> ()",
})


def _check_bits(op, bits, packed):
    top = 4 if packed else 8
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= top:
        _fail(f"{op}: `bits` must be an integer from 2 to {top}{' (int4 codes)' if packed else ''}, got {bits!r}")


def _check(op, g, bits, clip_ratio, rounding, granularity, group_size, packed):
    """Every argument, before any work; returns the group length n."""
    if not isinstance(g, Tensor) or g.dtype not in _DTYPES:
        _fail(f"{op}: `g` must be a float32, float16 or bfloat16 tensor, got {getattr(g, 'dtype', type(g).__name__)}")
    if g.numel() == 0 or g.layout != torch.strided:
        _fail(f"{op}: `g` must be a strided tensor with at least one element, got shape {tuple(g.shape)}")
    _check_bits(op, bits, packed)
    if rounding not in ROUNDINGS:
        _fail(f"{op}: `rounding` must be one of {ROUNDINGS}, got {rounding!r}")
    if granularity not in GRANULARITIES:
        _fail(f"{op}: `granularity` must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity != "tensor" and g.dim() == 0:
        _fail(f"{op}: `granularity` {granularity!r} needs rows: `g` is 0-dim")
    if granularity == "group":
        row = g.numel() // g.shape[0]
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or row % group_size:
            _fail(f"{op}: `group_size` must be a positive integer that divides the row ({row} elements), got "
                  f"{group_size!r}")
    elif group_size is not None:
        _fail(f"{op}: `group_size` is for granularity 'group', got {group_size!r} with {granularity!r}")
    _check_clip_ratio(op, clip_ratio, g)
    return group_len(g.shape, granularity, group_size)


def _check_clip_ratio(op, clip_ratio, g):
    if isinstance(clip_ratio, Tensor):
        if clip_ratio.numel() != 1 or not clip_ratio.is_floating_point() or clip_ratio.device != g.device:
            _fail(f"{op}: `clip_ratio` must be a float or a one-element floating tensor on {g.device}, got "
                  f"{clip_ratio.dtype} of shape {tuple(clip_ratio.shape)} on {clip_ratio.device}")
        if _values_checkable(clip_ratio):
            bad = _failing_values(clip_ratio, lambda v: 0.0 < v <= 1.0, lambda t: bool(((t > 0) & (t <= 1)).all()))
            if bad is not None:
                _fail(f"{op}: `clip_ratio` must be in (0, 1], got {bad}")
        return
    if isinstance(clip_ratio, bool) or not isinstance(clip_ratio, (int, float)) or not 0.0 < clip_ratio <= 1.0:
        _fail(f"{op}: `clip_ratio` must be in (0, 1], got {clip_ratio!r}")


def _impl(g, bits, clip_ratio, group_len, key, packed):
    n = group_len
    if g.numel() % n:
        _fail(f"grad_quant: `group_len` must divide numel ({g.numel()}), got {n}")
    g = g.contiguous()
    groups = g.numel() // n
    launchers = backends.select(g, -levels(bits), levels(bits), _FAMILY)
    amax = torch.empty(groups, dtype=torch.float32, device=g.device)
    launchers.absmax(g, n, amax)
    out = (torch.empty((g.numel() + 1) // 2, dtype=torch.uint8, device=g.device) if packed
           else torch.empty_like(g))
    scales = torch.empty(groups, dtype=torch.float32, device=g.device)
    n_clipped = torch.empty((), dtype=torch.int64, device=g.device)
    launchers.quantize(g, n, amax, bits, clip_ratio.float(), key, packed, out, scales, n_clipped)
    return out, scales, n_clipped, amax


def _fake(g, bits, clip_ratio, group_len, key, packed):
    groups = g.numel() // group_len
    out = g.new_empty(((g.numel() + 1) // 2,), dtype=torch.uint8) if packed else torch.empty_like(g)
    return (out, g.new_empty((groups,), dtype=torch.float32), g.new_empty((), dtype=torch.int64),
            g.new_empty((groups,), dtype=torch.float32))


_lib = torch.library.Library("qkernels", "FRAGMENT")
_lib.define("grad_quant(Tensor g, int bits, Tensor clip_ratio, int group_len, Tensor? key, bool packed) "
            "-> (Tensor, Tensor, Tensor, Tensor)")
_lib.impl("grad_quant", _impl, "CompositeExplicitAutograd")
torch.library.register_fake("qkernels::grad_quant", _fake, lib=_lib)
grad_quant = torch.ops.qkernels.grad_quant


def _call(op, g, bits, clip_ratio, rounding, granularity, group_size, generator, packed):
    n = _check(op, g, bits, clip_ratio, rounding, granularity, group_size, packed)
    if not isinstance(clip_ratio, Tensor):
        # a fill on the device, not a copy from the host (which would wait for the stream)
        clip_ratio = torch.full((), float(clip_ratio), dtype=torch.float32, device=g.device)
    key = draw_key(g.device, generator) if rounding == "stochastic" else None
    return grad_quant(g.detach(), bits, clip_ratio.reshape(()), n, key, packed)


def quantize_gradient(g: Tensor, bits: int = 4, clip_ratio=1.0, rounding: str = "stochastic",
                      granularity: str = "tensor", group_size: Optional[int] = None,
                      generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """``(g_hat, n_clipped)``: ``g`` quantized on the ``bits``-bit grid of its groups and dequantized (``g``'s
    dtype and shape), and the number of elements beyond the clip value (int64 0-dim, on ``g``'s device). See the
    module docstring; ``clip_ratio`` is ``γ`` in (0, 1] (a float or a one-element device tensor), ``generator``
    the source of the stochastic rounding's key (default: the device's default generator)."""
    out, _, n_clipped, _ = _call("quantize_gradient", g, bits, clip_ratio, rounding, granularity, group_size,
                                 generator, packed=False)
    return out, n_clipped


def quantize_gradient_packed(g: Tensor, bits: int = 4, clip_ratio=1.0, rounding: str = "stochastic",
                             granularity: str = "tensor", group_size: Optional[int] = None,
                             generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(codes, scales, n_clipped)``: as ``quantize_gradient`` (``bits`` 2 to 4), the codes packed two per byte
    (uint8 ``[ceil(numel / 2)]``, low nibble first, two's complement) and the float32 step of each group;
    ``unpack_int4(codes, scales, g.shape, g.dtype)`` gives ``quantize_gradient``'s ``g_hat`` for the same key."""
    out, scales, n_clipped, _ = _call("quantize_gradient_packed", g, bits, clip_ratio, rounding, granularity,
                                      group_size, generator, packed=True)
    return out, scales, n_clipped


def unpack_int4(codes: Tensor, scales: Tensor, shape, dtype: torch.dtype = torch.float32) -> Tensor:
    """``k · s`` of ``shape`` in ``dtype`` from ``quantize_gradient_packed``'s codes and scales (the group length
    is ``numel / scales.numel()``)."""
    numel = math.prod(shape)
    if not isinstance(codes, Tensor) or codes.dtype != torch.uint8 or codes.numel() != (numel + 1) // 2:
        _fail(f"unpack_int4: `codes` must be uint8 of {(numel + 1) // 2} bytes for shape {tuple(shape)}, got "
              f"{getattr(codes, 'dtype', type(codes).__name__)} of {getattr(codes, 'numel', lambda: '?')()}")
    if not isinstance(scales, Tensor) or scales.dtype != torch.float32 or scales.numel() == 0 or \
            numel % scales.numel():
        _fail(f"unpack_int4: `scales` must be float32 with a count that divides {numel}, got "
              f"{getattr(scales, 'dtype', type(scales).__name__)}")
    return _unpack(codes, scales, tuple(shape), dtype)


def update_clip_ratio(clip_ratio: Tensor, n_clipped: Tensor, numel, amax: Tensor, bits: int = 4,
                      alpha: float = _ref.ALPHA, eta: float = _ref.ETA, gamma_min: float = _ref.GAMMA_MIN,
                      gamma_max: float = _ref.GAMMA_MAX, process_group=None) -> Tensor:
    """The released code's interval update, in place on ``clip_ratio`` (float32, one element) and on its device
    (no host sync): with ``R = n_clipped / numel`` of this iteration,
    ``γ ← clamp(γ + η · sign(R − α / (2^b − 1)), γ_min, γ_max)``, and no step when the gradient was all zero
    (``max(amax) == 0``; ``amax``: the op's per-group maxima). Under ``torch.distributed`` (initialized, or
    ``process_group`` given) the ranks sum ``n_clipped`` and ``numel`` and take the largest ``amax`` first, so
    ``γ`` stays the same on every rank. Returns ``clip_ratio``."""
    if not isinstance(clip_ratio, Tensor) or clip_ratio.numel() != 1 or clip_ratio.dtype != torch.float32:
        _fail(f"update_clip_ratio: `clip_ratio` must be a one-element float32 tensor, got "
              f"{getattr(clip_ratio, 'dtype', type(clip_ratio).__name__)}")
    if not 0.0 < gamma_min <= gamma_max <= 1.0:
        _fail(f"update_clip_ratio: `gamma_min`, `gamma_max` must satisfy 0 < gamma_min <= gamma_max <= 1, got "
              f"{gamma_min}, {gamma_max}")
    if not isinstance(numel, Tensor):  # a fill on the device, not a copy from the host
        numel = torch.full((), float(numel), dtype=torch.float64, device=clip_ratio.device)
    counts = torch.stack([n_clipped.reshape(()).to(torch.float64), numel.reshape(()).to(torch.float64)])
    top = amax.float().amax().reshape(1)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if process_group is not None or distributed:
        torch.distributed.all_reduce(counts, group=process_group)
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX, group=process_group)
    new = _ref.update_clip_ratio(clip_ratio.reshape(()), counts[0], counts[1], top[0], bits, alpha, eta, gamma_min,
                                 gamma_max)
    with torch.no_grad():
        clip_ratio.copy_(new.reshape(clip_ratio.shape))
    return clip_ratio


def initial_clip_ratio(g: Tensor, bits: int = 4, init: str = "lbt", alpha: float = _ref.ALPHA) -> float:
    """``γ`` from the first batch's gradient ``g`` (the released code's initialisation, note §3.3): ``"lbt"``
    replays its loop (γ from 1 down by 0.001 until an EMA of the clipped fraction passes the target; it
    overshoots below the exact quantile, as the released code does), ``"quantile"`` the exact quantile of ``|g|``
    for the target fraction, ``"none"`` 1. It runs once per layer and reads ``g`` back to the host (one sync)."""
    if init not in INITS:
        _fail(f"initial_clip_ratio: `init` must be one of {INITS}, got {init!r}")
    return _ref.initial_clip_ratio(g, bits, init, alpha)


def quantization_errors(g: Tensor, g_hat: Tensor, large_fraction: float = 1e-3) -> Tensor:
    """Kim et al.'s two error measures of a quantized gradient (note §2.1), float64 ``[2]`` on ``g``'s device (no
    host sync): ``E(G) = mean |ĝ − g| / max|g|`` over every element, and ``E(G_L)``, the same mean over the large
    gradients ``L = {|g| ≥ t}``, ``t`` the ``k``-th largest ``|g|`` with ``k = max(1, ceil(large_fraction ·
    numel))`` (ties at ``t`` all included; the released code tracks a threshold that keeps that fraction, 0.1 %).
    An all-zero ``g`` has errors 0. ``g`` and ``g_hat``: the same shape, finite."""
    if not isinstance(g, Tensor) or not isinstance(g_hat, Tensor) or g.shape != g_hat.shape or g.numel() == 0:
        _fail("quantization_errors: `g` and `g_hat` must be non-empty tensors of the same shape, got "
              f"{tuple(getattr(g, 'shape', ()))} and {tuple(getattr(g_hat, 'shape', ()))}")
    if not 0.0 < large_fraction <= 1.0:
        _fail(f"quantization_errors: `large_fraction` must be in (0, 1], got {large_fraction!r}")
    magnitude = g.detach().reshape(-1).double().abs()
    error = (g_hat.detach().reshape(-1).double() - g.detach().reshape(-1).double()).abs()
    k = max(1, math.ceil(large_fraction * magnitude.numel()))
    threshold = torch.kthvalue(magnitude, magnitude.numel() - k + 1).values
    large = magnitude >= threshold
    top = magnitude.max()
    norm = torch.where(top > 0, top, torch.ones_like(top))  # all zero: the errors are 0 / 1
    return torch.stack([error.mean(), (error * large).sum() / large.sum()]) / norm
