"""Pure-PyTorch reference of learnable (LSQ) fake quantization: the spec every backend is tested against.

Granularity, one quantizer (scale ``s``, zero point ``zp``) per

* tensor (``axis=None``): ``scale``/``zero_point`` hold one element;
* channel (``axis=a``): shape ``[x.size(a)]``;
* group (``axis=a, group_size=G``): G consecutive elements along ``a``; shape ``x.shape`` with ``size(a)``
  replaced by ``size(a) // G`` (e.g. a weight ``[out, in]`` grouped along ``in`` has ``[out, in // G]``).

Forward (aten's ``_fake_quantize_learnable_*``): the zero point is rounded half to even and clamped,
``z = clamp(rne(zp), qmin, qmax)``, then the tensor is fake-quantized with the integer ``z`` exactly as
``qkernels.reference.fake_quant`` does (per-tensor rules for one quantizer, per-channel int-zero-point rules of
the flavour otherwise).

Backward, per element, with ``inv = float32(1 / s)``, ``gf = grad_factor`` and a backward zero point ``zb``:

    q      = integer level of x (flavour rules below)
    dx     = dy * (qmin <= q <= qmax)
    inside:  ds = ((dy * d) * inv) * gf,  d = float(q - zb) * s - x,   dz = 0
    below:   ds = (dy * float(qmin - zb)) * gf,                        dz = ((dy * -1) * s) * gf
    above:   ds = (dy * float(qmax - zb)) * gf,                        dz = ((dy * -1) * s) * gf

``dscale``/``dzero_point`` are the float32 sums of ``ds``/``dz`` over each quantizer's elements.

``zero_point_rounding``:

* ``"torch"`` (default, aten's numbers): per-tensor ``zb = trunc(clamp(zp + 0.5, qmin, qmax))`` (so 2.5 gives
  forward 2 but backward 3), per-channel and per-group ``zb = z``. The level ``q`` follows the device's aten
  backward kernel:
  - cpu: ``q = int64(rne(x * inv + zb))`` with x86 conversion (NaN, inf -> INT64_MIN, i.e. below); on
    AVX2/AVX512 builds ``x * inv + zb`` and ``d`` are each one FMA. The zero point enters *before* rounding,
    so at ties the backward mask can differ from the forward one (aten's behaviour).
  - cuda: ``q = int64_saturating(rne(x * inv)) + zb`` (wrapping), ``d`` one FMA.
* ``"consistent"``: ``zb = z`` and ``q = rne(x * inv) + z`` as in the forward pass, so ``dx``'s mask is the
  forward mask on every device (NaN counts as below, as its forward output sits at qmin); ``d`` as the
  flavour computes it.

fp16/bf16 ``x``/``dy`` are widened to float32; ``dx`` takes ``x``'s dtype, the qparam grads float32.
Unlike aten, an empty ``x`` gives zero qparam gradients (aten returns ``scale`` and ``zero_point``
themselves), and a 1-D per-channel ``x`` gives ``[C]`` gradients (aten raises).
"""

from __future__ import annotations

import math

import torch

from ..enums import Flavour, ZpRule
from .fake_quant import (
    _fma_f32,
    _to_int64_cuda,
    _to_int64_x86,
    default_flavour,
    fake_quant_per_tensor,
    int_zero_point_per_channel,
    storage_view,
    uses_fma,
)
from .reduce import finish_sum

__all__ = [
    "ZERO_POINT_ROUNDINGS",
    "lsq_grad_factor",
    "qparam_shape",
    "broadcast_qparam",
    "reduce_to_qparam",
    "forward_zero_point",
    "learnable_forward",
    "forward_broadcast",
    "learnable_backward_elements",
    "backward_elements_broadcast",
    "learnable_backward",
    "reduce_partials",
]

ZERO_POINT_ROUNDINGS = ("torch", "consistent")


def lsq_grad_factor(numel: int, quant_max: int) -> float:
    """LSQ's gradient scale ``1 / sqrt(numel * quant_max)`` (Esser et al. 2020; torch.ao's
    ``use_grad_scaling``). For per-channel or per-group quantizers pass the elements per quantizer."""
    if numel <= 0 or quant_max <= 0:
        raise ValueError(f"lsq_grad_factor needs numel > 0 and quant_max > 0, got {numel}, {quant_max}")
    return 1.0 / math.sqrt(numel * quant_max)


def qparam_shape(x_shape, axis: int | None, group_size: int | None) -> tuple[int, ...]:
    """Shape of scale/zero_point for this granularity (per-tensor: ``(1,)``)."""
    if axis is None:
        return (1,)
    axis = axis % len(x_shape)
    if group_size is None:
        return (x_shape[axis],)
    return tuple(x_shape[:axis]) + (x_shape[axis] // group_size,) + tuple(x_shape[axis + 1:])


def broadcast_qparam(t: torch.Tensor, x: torch.Tensor, axis: int | None, group_size: int | None) -> torch.Tensor:
    """A qparam tensor broadcastable against x (per-group: repeated G times along axis)."""
    if axis is None:
        return t.reshape(())
    axis = axis % x.dim()
    if group_size is None:
        shape = [1] * x.dim()
        shape[axis] = -1
        return t.reshape(shape)
    return t.reshape(qparam_shape(x.shape, axis, group_size)).repeat_interleave(group_size, dim=axis)


def reduce_to_qparam(v: torch.Tensor, axis: int | None, group_size: int | None, shape) -> torch.Tensor:
    """Sum per-element values over each quantizer's elements (float32), shaped like the qparam."""
    if axis is None:
        return v.sum().reshape(shape)
    axis = axis % v.dim()
    if group_size is None:
        others = [d for d in range(v.dim()) if d != axis]
        return (v.sum(dim=others) if others else v).reshape(shape)  # sum(dim=[]) would sum everything
    split = v.shape[:axis] + (v.shape[axis] // group_size, group_size) + v.shape[axis + 1:]
    return v.reshape(split).sum(dim=axis + 1).reshape(shape)


def forward_zero_point(zero_point: torch.Tensor, quant_min: int, quant_max: int) -> torch.Tensor:
    """The forward pass's zero point: float32 ``clamp(rne(zp), qmin, qmax)`` (integral values). A NaN zero point
    (an error where its values are checked, as in torch) gives quant_min."""
    return torch.round(zero_point.float()).clamp(quant_min, quant_max).nan_to_num(nan=float(quant_min))


def _backward_zero_point(zero_point, quant_min, quant_max, per_tensor: bool, rounding: str) -> torch.Tensor:
    if per_tensor and rounding == "torch":
        return (zero_point.float() + 0.5).clamp(quant_min, quant_max).nan_to_num(nan=float(quant_min)).trunc()
    return forward_zero_point(zero_point, quant_min, quant_max)


def learnable_forward(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    *,
    axis: int | None = None,
    group_size: int | None = None,
    flavour: str | None = None,
) -> torch.Tensor:
    """``y`` of learnable fake quantization; shape and dtype of ``x``."""
    return forward_broadcast(
        x, broadcast_qparam(scale, x, axis, group_size), broadcast_qparam(zero_point, x, axis, group_size),
        quant_min, quant_max, per_tensor=axis is None, flavour=flavour,
    )


def forward_broadcast(x, scale, zero_point, quant_min: int, quant_max: int, *, per_tensor: bool,
                      flavour: str | None = None) -> torch.Tensor:
    """``learnable_forward`` with qparams already broadcastable against x (any grouping of elements)."""
    flavour = flavour or default_flavour(x)
    z = forward_zero_point(zero_point, quant_min, quant_max)
    if per_tensor:
        y, _ = fake_quant_per_tensor(x, scale.reshape(()).float(), z.reshape(()), quant_min, quant_max,
                                     flavour=flavour)
        return y
    y, _ = int_zero_point_per_channel(x, scale.float(), z.to(torch.int64), quant_min, quant_max, flavour)
    return y


def learnable_backward_elements(
    dy: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    grad_factor: float = 1.0,
    *,
    axis: int | None = None,
    group_size: int | None = None,
    zero_point_rounding: str = "torch",
    flavour: str | None = None,
    use_fma: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element ``(dx, ds, dz)`` before the reduction: dx in x's dtype, ds/dz float32 in x's shape.
    ``use_fma`` defaults to the flavour's aten behaviour (cpu: vectorized builds only; cuda: always)."""
    return backward_elements_broadcast(
        dy, x, broadcast_qparam(scale, x, axis, group_size), broadcast_qparam(zero_point, x, axis, group_size),
        quant_min, quant_max, grad_factor, per_tensor=axis is None, zero_point_rounding=zero_point_rounding,
        flavour=flavour, use_fma=use_fma,
    )


def backward_elements_broadcast(
    dy, x, scale, zero_point, quant_min: int, quant_max: int, grad_factor: float, *, per_tensor: bool,
    zero_point_rounding: str = "torch", flavour: str | None = None, use_fma: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``learnable_backward_elements`` with qparams already broadcastable against x."""
    if zero_point_rounding not in ZERO_POINT_ROUNDINGS:
        raise ValueError(f"zero_point_rounding must be one of {ZERO_POINT_ROUNDINGS}, got {zero_point_rounding!r}")
    flavour = flavour or default_flavour(x)
    if use_fma is None:
        use_fma = uses_fma(flavour, torch.float32)
    xf, g = x.float(), dy.float()
    s = scale.float()
    zb = _backward_zero_point(zero_point, quant_min, quant_max, per_tensor, zero_point_rounding)
    inv = 1.0 / s
    s, zb, inv = (t.expand_as(xf) for t in (s, zb, inv))
    if zero_point_rounding == "consistent":
        qf = torch.round(xf * inv) + zb
        below = (qf < quant_min) | torch.isnan(qf)
        above = qf > quant_max
        level = torch.where(below | above, torch.zeros_like(qf), qf)
    else:
        if flavour == "cpu":
            v = _fma_f32(xf, inv, zb) if use_fma else xf * inv + zb
            q = _to_int64_x86(torch.round(v))
        else:  # int64 addition wraps, as on the device
            q = _to_int64_cuda(torch.round(xf * inv)) + zb.to(torch.int64)
        below, above = q < quant_min, q > quant_max
        level = torch.where(below | above, torch.zeros_like(q), q).float()
    inside = ~(below | above)
    dx = (g * inside).to(x.dtype)
    diff = level - zb  # exact: both are integers below 2^24 in magnitude
    d = _fma_f32(diff, s, -xf) if use_fma else diff * s - xf
    ds_in = ((g * d) * inv) * grad_factor
    edge = torch.where(below, quant_min - zb, quant_max - zb)
    ds_out = (g * edge) * grad_factor
    ds = torch.where(inside, ds_in, ds_out)
    dz = torch.where(inside, torch.zeros_like(g), ((g * -1.0) * s) * grad_factor)
    return dx, ds, dz


def learnable_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    grad_factor: float = 1.0,
    *,
    axis: int | None = None,
    group_size: int | None = None,
    zero_point_rounding: str = "torch",
    flavour: str | None = None,
    use_fma: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dscale, dzero_point)``; the qparam grads are float32 with the shapes of scale and zero_point."""
    dx, ds, dz = learnable_backward_elements(
        dy, x, scale, zero_point, quant_min, quant_max, grad_factor, axis=axis, group_size=group_size,
        zero_point_rounding=zero_point_rounding, flavour=flavour, use_fma=use_fma,
    )
    return (
        dx,
        reduce_to_qparam(ds, axis, group_size, scale.shape),
        reduce_to_qparam(dz, axis, group_size, zero_point.shape),
    )


def reduce_partials(partials: torch.Tensor, scale_grad_dtype: torch.dtype, zero_point_grad_dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dscale, dzero_point) from the kernels' float32 partial sums [2, B, P, C] (ds, then dz), finished by the
    reduction layer (``qkernels.reference.reduce.finish_sum``: summed over P in float64 and rounded once to its
    dtype), 1-D [B * C], in storages of their own."""
    return (finish_sum(partials[0], 1, scale_grad_dtype).reshape(-1),
            finish_sum(partials[1], 1, zero_point_grad_dtype).reshape(-1))


# ----------------------------------------------------------------------------------------------------------
# The family's launchers (qkernels/fake_quant_learnable.py, LAUNCHERS) on this spec: the reference backend.
# ----------------------------------------------------------------------------------------------------------
def no_qparam_grads(like: torch.Tensor, ds_dtype: torch.dtype, dz_dtype: torch.dtype):
    """(dscale, dzero_point) of a backward launch that needs none: empty tensors on like's device, as the C++
    launchers return them."""
    return like.new_empty((0,), dtype=ds_dtype), like.new_empty((0,), dtype=dz_dtype)


_ROUNDINGS = {ZpRule.TorchPerTensor: "torch", ZpRule.Torch: "torch", ZpRule.Consistent: "consistent"}


class Launchers:
    """The learnable launchers as the spec computes them: x (and out, dy, dx) in storage order as [B, O, C, I],
    float32 qparams [B * C] (fake_quant_learnable_kernels.h). ``flavour`` and ``rule`` are qkernels.enums'
    Flavour and ZpRule."""

    @staticmethod
    def forward(x, out, scale, zero_point, B, O, C, I, quant_min, quant_max, flavour, per_tensor):
        y = forward_broadcast(storage_view(x).view(B, O, C, I), scale.view(B, 1, C, 1), zero_point.view(B, 1, C, 1),
                              quant_min, quant_max, per_tensor=per_tensor, flavour=Flavour(flavour).name.lower())
        storage_view(out).copy_(y.flatten())

    @staticmethod
    def backward(dy, x, dx, scale, zero_point, B, O, C, I, quant_min, quant_max, grad_factor, flavour, rule, use_fma,
                 need_qgrads, ds_dtype, dz_dtype):
        dy4, x4 = (storage_view(t).view(B, O, C, I) for t in (dy, x))
        g, ds, dz = backward_elements_broadcast(
            dy4, x4, scale.view(B, 1, C, 1), zero_point.view(B, 1, C, 1), quant_min, quant_max, grad_factor,
            per_tensor=rule == ZpRule.TorchPerTensor, zero_point_rounding=_ROUNDINGS[ZpRule(rule)],
            flavour=Flavour(flavour).name.lower(), use_fma=use_fma,
        )
        storage_view(dx).copy_(g.flatten())
        if not need_qgrads:
            return no_qparam_grads(x, ds_dtype, dz_dtype)
        partials = torch.stack([ds, dz]).sum((2, 4), dtype=torch.float64).float().view(2, B, 1, C)
        return reduce_partials(partials, ds_dtype, dz_dtype)
