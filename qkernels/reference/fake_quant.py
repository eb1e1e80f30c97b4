"""Pure-PyTorch reference of the fake-quant family: the spec every backend is tested against.

Affine fake quantization maps each element ``x`` to

    q = clamp(round(x * inv_scale) + zero_point, quant_min, quant_max)     inv_scale = float32(1 / scale)
    y = (q - zero_point) * scale
    mask = quant_min <= round(x * inv_scale) + zero_point <= quant_max     (inclusive, on the rounded value)

with ``round`` half-to-even and ``inv_scale`` one float32 division, exactly as PyTorch's kernels compute it
(``x * inv_scale``, never ``x / scale``). The backward pass is the straight-through estimator
``dx = dy * mask``, with the mask promoted to dy's dtype (so ``-dy * 0`` gives ``-0.0`` and NaN stays NaN).

PyTorch's CPU and CUDA kernels differ in where the zero point enters and in how NaN, +-inf and values beyond
int64 are converted, so every function takes a ``flavour`` ("cpu" or "cuda"; default: the device type of
``x``) and reproduces that device's aten kernel bit for bit:

* per-tensor: identical except for the dequantization of zero points beyond 2^24 (cpu: exact integer
  ``q - z`` rounded once; cuda: float subtraction);
* per-channel, int zero point: cpu adds ``float(z)`` after rounding and converts with x86 semantics (NaN, inf
  and |q| >= 2^63 -> INT64_MIN, i.e. quant_min, mask false); cuda rounds, saturates to int64, then adds ``z``
  in wrapping int64 arithmetic; cpu dequantizes in double, cuda in float;
* per-channel, float zero point: ``q = round(x * inv_scale + z)``, where the multiply-add is one FMA on
  CUDA and, for float32 zero points, on AVX2/AVX512 builds of aten (``use_fma``), two roundings otherwise.

Shapes: ``x`` any shape; per-channel ``scale``/``zero_point`` are 1-D of length ``x.size(axis)``. Outputs
have ``x``'s shape and dtype (mask: bool). All arithmetic is float32, or float64 for float64 ``x``.
"""

from __future__ import annotations

import functools

import torch

from ..enums import Flavour

__all__ = [
    "fake_quant_per_tensor",
    "fake_quant_per_channel",
    "fake_quant_backward",
    "storage_view",
    "pack_bits",
    "unpack_bits",
    "default_flavour",
    "uses_fma",
    "int_zero_point_per_channel",
]

_TWO63 = 9.223372036854775808e18
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1


def default_flavour(x: torch.Tensor) -> str:
    return "cuda" if x.device.type == "cuda" else "cpu"


def uses_fma(flavour: str, zero_point_dtype: torch.dtype) -> bool:
    """Whether aten fuses the float-zero-point ``x * inv + z`` into one FMA: always on CUDA; on the CPU for a
    float32 zero point in vectorized builds (AVX2/AVX512 capability), never for a float16 one (its
    ``c10::Half`` addition is not contracted; measured against torch 2.13)."""
    if flavour == "cuda":
        return True
    return zero_point_dtype == torch.float32 and _aten_cpu_vectorized()


@functools.lru_cache(maxsize=None)
def _aten_cpu_vectorized() -> bool:
    """aten's CPU capability, fixed when torch loads (ATEN_CPU_CAPABILITY); cached: the eager ops ask per call."""
    return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _to_int64_cuda(v: torch.Tensor) -> torch.Tensor:
    """Saturating float -> int64 with NaN -> INT64_MIN (CUDA's cvt, measured on an H100)."""
    hi = v >= _TWO63
    lo = torch.isnan(v) | (v < -_TWO63)
    safe = torch.where(hi | lo, torch.zeros_like(v), v).to(torch.int64)
    safe = torch.where(hi, torch.full_like(safe, _I64_MAX), safe)
    return torch.where(lo, torch.full_like(safe, _I64_MIN), safe)


def _to_int64_x86(v: torch.Tensor) -> torch.Tensor:
    """x86-64 cvttss2si: NaN and anything outside [-2^63, 2^63) -> INT64_MIN."""
    ok = (v >= -_TWO63) & (v < _TWO63)
    safe = torch.where(ok, v, torch.zeros_like(v)).to(torch.int64)
    return torch.where(ok, safe, torch.full_like(safe, _I64_MIN))


def _clamp_nan_low(v: torch.Tensor, lo, hi) -> torch.Tensor:
    """clamp with NaN -> lo, as fminf(hi, fmaxf(lo, v)) does."""
    return torch.where(torch.isnan(v), torch.full_like(v, lo), v.clamp(lo, hi))


def _fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 fma(a, b, c) from float64 arithmetic.

    a*b is exact in float64; the sum is formed with its exact rounding error (TwoSum), rounded to odd, and only
    then to float32, which avoids the double-rounding error of a plain float64 sum.
    """
    prod = a.double() * b.double()
    cd = c.double()
    s = prod + cd
    bp = s - prod
    err = (prod - (s - bp)) + (cd - bp)
    odd = (s.view(torch.int64) & 1) == 1
    toward = torch.where(err > 0, torch.full_like(s, float("inf")), torch.full_like(s, float("-inf")))
    s = torch.where((err != 0) & ~odd & torch.isfinite(s), torch.nextafter(s, toward), s)
    return s.float()


def _as_scalar_tensor(v, dtype, device) -> torch.Tensor:
    return v.to(dtype=dtype, device=device).reshape(()) if isinstance(v, torch.Tensor) else torch.tensor(
        v, dtype=dtype, device=device
    )


def fake_quant_per_tensor(
    x: torch.Tensor,
    scale,
    zero_point,
    quant_min: int,
    quant_max: int,
    *,
    enabled=True,
    flavour: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor fake quantization; returns ``(y, mask)``.

    ``scale``: Python number or one-element tensor, narrowed to float32. ``zero_point``: int, or a one-element
    tensor truncated toward zero to an integer. ``enabled``: bool or one-element tensor; when zero,
    ``y = x`` and the mask is all true.
    """
    flavour = flavour or default_flavour(x)
    P = _compute_dtype(x)
    s = _as_scalar_tensor(scale, torch.float32, x.device)
    inv = 1.0 / s
    z = _as_scalar_tensor(zero_point, torch.float64, x.device).trunc().to(torch.int64)
    r = torch.round(x.to(P) * inv.to(P))
    qf = r + z.to(P)
    if flavour == "cpu":
        mask = (qf >= quant_min) & (qf <= quant_max)
        q = _clamp_nan_low(qf.double(), quant_min, quant_max).to(torch.int64)
        y = (q - z).to(torch.float32) * s
    else:
        q = _to_int64_cuda(qf)
        mask = (q >= quant_min) & (q <= quant_max)
        qc = _clamp_nan_low(q.to(torch.float32), float(quant_min), float(quant_max))
        y = (qc - z.to(torch.float32)) * s
    y = y.to(x.dtype)
    on = _as_scalar_tensor(enabled, torch.float64, x.device).trunc() != 0
    y = torch.where(on, y, x)
    mask = torch.where(on, mask, torch.ones_like(mask))
    return y, mask


def fake_quant_per_channel(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int,
    quant_min: int,
    quant_max: int,
    *,
    flavour: str | None = None,
    use_fma: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel fake quantization along ``axis``; returns ``(y, mask)``.

    ``scale``: float32/bfloat16 [C] (widened to float32). ``zero_point``: int32 [C], or float32/float16 [C]
    (float path: ``round(x * inv + z)``). ``use_fma`` defaults to the flavour's aten behaviour.
    """
    flavour = flavour or default_flavour(x)
    if use_fma is None:
        use_fma = uses_fma(flavour, zero_point.dtype)
    axis = axis % x.dim()
    shape = [1] * x.dim()
    shape[axis] = -1
    s = scale.float().view(shape)
    if not zero_point.is_floating_point():
        return int_zero_point_per_channel(x, s, zero_point.to(torch.int64).view(shape), quant_min, quant_max,
                                          flavour)
    P = _compute_dtype(x)
    inv = 1.0 / s
    xp = x.to(P)
    z = zero_point.float().view(shape)
    if P == torch.float64:
        v = xp * inv.double() + z.double()
        if flavour == "cpu":  # aten's CPU kernel rounds with lrintf: the double sum is narrowed first
            v = v.float().double()
    elif use_fma:
        v = _fma_f32(xp, inv, z)
    else:
        v = xp * inv + z
    r = torch.round(v) + 0.0  # aten rounds to an integer: no -0.0
    if flavour == "cpu":
        q = _to_int64_x86(r.float())
        qc = q.clamp(quant_min, quant_max)
        y = (qc.double() - z.double()) * s.double()
    else:
        q = _to_int64_cuda(r)
        qc = _clamp_nan_low(q.to(torch.float32), float(quant_min), float(quant_max))
        y = (qc - z) * s
    mask = (q >= quant_min) & (q <= quant_max)
    if x.dtype != torch.float64:
        y = y.to(torch.float32)  # aten narrows double results through float (c10 16-bit types take floats)
    return y.to(x.dtype), mask


def int_zero_point_per_channel(x, s, z, quant_min: int, quant_max: int, flavour: str):
    """Per-channel rules for an integer zero point, with ``s`` (float32) and ``z`` (int64) already
    broadcastable against ``x`` (one quantizer per channel, per group, ...); returns ``(y, mask)``."""
    P = _compute_dtype(x)
    r = torch.round(x.to(P) * (1.0 / s).to(P))
    if flavour == "cpu":
        q = _to_int64_x86(z.to(P) + r)
        qc = q.clamp(quant_min, quant_max)
        y = (qc.double() - z.double()) * s.double()
    else:
        q = _to_int64_cuda(r) + z  # int64 addition wraps, as on the device
        qc = q.clamp(quant_min, quant_max)
        y = (qc - z).to(torch.float32) * s
    if x.dtype != torch.float64:
        y = y.to(torch.float32)
    return y.to(x.dtype), (q >= quant_min) & (q <= quant_max)


def storage_view(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor as the 1-D run of its storage (the order in which packed mask bits are laid out)."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """1-D bool -> uint8 [ceil(n/8)]: bit k of byte j is element 8j + k; missing trailing bits are 0."""
    padded = torch.zeros(bits.numel() + (-bits.numel()) % 8, dtype=torch.uint8, device=bits.device)
    padded[: bits.numel()] = bits.to(torch.uint8)
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8, device=bits.device)
    return (padded.view(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 [ceil(n/8)] -> 1-D bool [n], the inverse of ``pack_bits``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.view(-1, 1) >> shifts) & 1).flatten()[:n].bool()


def fake_quant_backward(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Straight-through gradient ``grad * mask`` in grad's dtype. A packed (uint8) mask holds one bit per
    element of ``grad`` in grad's storage order (grad must be dense)."""
    if mask.dtype == torch.uint8:
        dense = torch.empty_like(grad, dtype=torch.bool)
        storage_view(dense).copy_(unpack_bits(mask, grad.numel()))
        mask = dense
    return grad * mask


# ----------------------------------------------------------------------------------------------------------
# The family's launchers (qkernels/fake_quant.py, LAUNCHERS) on this spec: the reference backend.
# ----------------------------------------------------------------------------------------------------------
def _write(out: torch.Tensor, mask, y: torch.Tensor, m: torch.Tensor):
    """y and m, 1-D in storage order, into out and mask (None, bool in out's layout, or packed)."""
    storage_view(out).copy_(y)
    if mask is None:
        return
    if mask.dtype == torch.bool:
        storage_view(mask).copy_(m)
    else:
        mask.copy_(pack_bits(m))


class Launchers:
    """The fake-quant launchers as the spec computes them, in storage order (x, out and mask share one dense
    layout). ``flavour`` is a ``qkernels.enums.Flavour``."""

    @staticmethod
    def per_tensor(x, out, mask, scale, zero_point, scale_t, zero_point_t, enabled_t, quant_min, quant_max,
                   flavour):
        y, m = fake_quant_per_tensor(
            storage_view(x), scale if scale_t is None else scale_t, zero_point if zero_point_t is None else
            zero_point_t, quant_min, quant_max, enabled=True if enabled_t is None else enabled_t,
            flavour=Flavour(flavour).name.lower())
        _write(out, mask, y, m)

    @staticmethod
    def per_channel(x, out, mask, scale, zero_point, inner, quant_min, quant_max, flavour, use_fma):
        # Storage offset i belongs to channel (i // inner) % C: x as [outer, C, inner], channels on axis 1.
        y, m = fake_quant_per_channel(storage_view(x).view(-1, scale.numel(), inner), scale, zero_point, 1,
                                      quant_min, quant_max, flavour=Flavour(flavour).name.lower(), use_fma=use_fma)
        _write(out, mask, y.flatten(), m.flatten())

    @staticmethod
    def backward(grad, mask, out):
        out.copy_(fake_quant_backward(grad, mask))
