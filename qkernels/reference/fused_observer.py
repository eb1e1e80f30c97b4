"""Pure-PyTorch reference of the fused moving-average observer + fake quantization: the spec of
``torch.fused_moving_avg_obs_fake_quant`` (and of the unfused torch.ao observer it approximates).

One step, with ``c = averaging_const`` (float32) and flags read as "on" when nonzero:

1. Observer (``observer_on``): the current min/max of x (per tensor, or per channel along ``ch_axis``) update
   the running ones in place, ``r = isinf(r) ? cur : r + c * (cur - r)`` in float32, element by element
   (so a never-observed ``(+inf, -inf)`` channel takes the current values): two roundings on the CPU, one
   FMA ``fma(c, cur - r, r)`` in flavour "cuda" (see ``update_running``).
2. Qparams, written into ``scale``/``zero_point``:
   ``qparams="fused"`` (torch's fused op): recomputed whenever ``fake_quant_on``, even with the observer off
   (overwriting manually set buffers), with FBGEMM's ``ChooseQuantizationParams`` (float and double
   arithmetic below; ``flavour`` "cpu" with the 6.1e-5 small-scale floor, "cuda" without);
   ``qparams="observer"`` (the unfused ``FakeQuantize(MovingAverage*MinMaxObserver)``): recomputed whenever
   ``observer_on``, with torch.ao's ``_calculate_qparams`` (float32, ``eps`` floor). The running min/max
   follow the rule of step 1 in both modes; torch.ao's observers differ only when exactly one of a running
   pair is infinite (they re-initialise a per-tensor pair only when both are, a per-channel one never).
3. Fake quantization with those qparams (``qkernels.reference.fake_quant``: per-tensor rules, or per-channel
   int-zero-point rules on ``ch_axis``); with ``fake_quant_on`` off, ``y = x``.

FBGEMM ``ChooseQuantizationParams(min, max, qmin, qmax, preserve_sparsity=symmetric)``, per quantizer:

    if symmetric and min < 0 < max:                      # only then; [0.5, 3] stays affine
        n = qmax - qmin; smin = -(n // 2 + 1); smax = n // 2
        m = max(|min / smin|, |max / smax|)   (float);  min = m * smin; max = m * smax
    min = min(min, 0); max = max(max, 0)
    scale = float((double(max) - min) / (qmax - qmin)); scale = 0.1 if scale == 0 or 1 / scale is inf
    cpu: if scale < 6.1e-5: rescale min/max to the floor 6.1e-5 (see _small_scale_floor)
    z_min = qmin - min / double(scale); z_max = qmax - max / double(scale)
    z0 = z_min if |qmin| + |min / scale| < |qmax| + |max / scale| else z_max   (double)
    symmetric and min < 0 < max: z0 = (qmin + qmax) / 2
    zero_point = qmin if z0 < qmin, qmax if z0 > qmax, else int32(rne(z0))

The min/max of a channel that holds both -0.0 and +0.0 may be either zero (torch.aminmax's answer depends on
the order it folds in, and so do the kernels'); the qparams do not depend on the sign.

Shapes: running_min/max float32, 0-dim or [1] per tensor, [C] per channel (an empty [0] buffer is resized
and filled with +-inf first, as torch does); scale float32 and zero_point int32 of the same length.
"""

from __future__ import annotations

import torch

from ..enums import Flavour, QParamsMode
from .fake_quant import (
    _fma_f32,
    default_flavour,
    fake_quant_per_channel,
    fake_quant_per_tensor,
    storage_view,
)

__all__ = [
    "QPARAMS_MODES",
    "SMALL_SCALE",
    "update_running",
    "channel_rows",
    "flag_on_device",
    "flag_is_on",
    "choose_qparams_fused",
    "choose_qparams_observer",
    "fused_moving_avg_obs_fake_quant",
]

QPARAMS_MODES = ("fused", "observer")
SMALL_SCALE = float(torch.tensor(6.1e-5, dtype=torch.float32))  # FBGEMM's SMALL_SCALE_THRESHOLD as a float
_F32_EPS = torch.finfo(torch.float32).eps


def update_running(running: torch.Tensor, cur: torch.Tensor, averaging_const: float,
                   flavour: str = "cpu") -> torch.Tensor:
    """``isinf(r) ? cur : r + c * (cur - r)`` in float32: two roundings (flavour "cpu", aten's CPU op), or
    ``fma(c, cur - r, r)`` (flavour "cuda": aten's CUDA kernel, whose expression nvcc contracts into an FMA
    under its default ``--fmad=true``; assumed from the source and the build flags until
    test_op_matches_torch_fused_op_on_cuda has run on a GPU)."""
    c = torch.tensor(averaging_const, dtype=torch.float32, device=running.device)
    d = cur - running
    avg = _fma_f32(c, d, running) if flavour == "cuda" else running + c * d
    return torch.where(torch.isinf(running), cur, avg)


def _small_scale_floor(scale, mn, mx, quant_min, quant_max):
    """FBGEMM's CPU floor: scales below 6.1e-5 become 6.1e-5, and min/max are widened to match."""
    small = scale < SMALL_SCALE
    width = quant_max - quant_min
    floor = torch.full_like(scale, SMALL_SCALE)
    ratio = floor / scale
    new_mx = torch.where(mn == 0, floor * width, torch.where(mx == 0, mx, mx * ratio))
    new_mn = torch.where(mn == 0, mn, torch.where(mx == 0, -floor * width, mn * ratio))
    return (torch.where(small, floor, scale), torch.where(small, new_mn, mn), torch.where(small, new_mx, mx))


def choose_qparams_fused(min_val, max_val, quant_min: int, quant_max: int, symmetric: bool,
                         flavour: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scale, int32 zero point) of torch's fused op for float32 min/max tensors (any shape)."""
    mn, mx = min_val.float(), max_val.float()
    sym = (mn < 0) & (mx > 0) if symmetric else torch.zeros_like(mn, dtype=torch.bool)
    if symmetric:
        n = quant_max - quant_min
        smin, smax = float(-(n // 2 + 1)), float(n // 2)
        m = torch.maximum((mn / smin).abs(), (mx / smax).abs())
        mn = torch.where(sym, m * smin, mn)
        mx = torch.where(sym, m * smax, mx)
    mn = torch.minimum(mn, torch.zeros_like(mn))
    mx = torch.maximum(mx, torch.zeros_like(mx))
    scale = ((mx.double() - mn.double()) / (quant_max - quant_min)).float()
    scale = torch.where((scale == 0) | torch.isinf(1.0 / scale), torch.full_like(scale, 0.1), scale)
    if flavour == "cpu":
        scale, mn, mx = _small_scale_floor(scale, mn, mx, quant_min, quant_max)
    sd, mnd, mxd = scale.double(), mn.double(), mx.double()
    z_min = quant_min - mnd / sd
    z_max = quant_max - mxd / sd
    from_min = (abs(quant_min) + (mnd / sd).abs()) < (abs(quant_max) + (mxd / sd).abs())
    z0 = torch.where(from_min, z_min, z_max)
    z0 = torch.where(sym, torch.full_like(z0, (quant_min + quant_max) / 2), z0)
    zp = torch.where(z0 < quant_min, torch.full_like(z0, quant_min),
                     torch.where(z0 > quant_max, torch.full_like(z0, quant_max), torch.round(z0)))
    return scale, zp.to(torch.int32)


def choose_qparams_observer(min_val, max_val, quant_min: int, quant_max: int, symmetric: bool, *,
                            eps: float = _F32_EPS, symmetric_zero_point: int = 0,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scale, int32 zero point) of torch.ao's observers (``_calculate_qparams``). Never-observed
    stats (+inf, -inf) give (1.0, 0). ``symmetric_zero_point``: the observer's choice for symmetric schemes
    (0 for signed dtypes, 128 for quint8's default range, (qmin + qmax) // 2 for a custom unsigned range)."""
    mn, mx = min_val.float(), max_val.float()
    unset = torch.isposinf(mn) & torch.isneginf(mx)
    minn = torch.minimum(mn, torch.zeros_like(mn))
    maxp = torch.maximum(mx, torch.zeros_like(mx))
    eps_t = torch.tensor(eps, dtype=torch.float32, device=mn.device)
    if symmetric:
        scale = torch.maximum(torch.maximum(-minn, maxp) / (float(quant_max - quant_min) / 2), eps_t)
        zp = torch.full_like(mn, symmetric_zero_point, dtype=torch.int32)
    else:
        scale = torch.maximum((maxp - minn) / float(quant_max - quant_min), eps_t)
        zp = (quant_min - torch.round(minn / scale).to(torch.int32)).clamp(quant_min, quant_max).to(torch.int32)
    scale = torch.where(unset, torch.ones_like(scale), scale)
    zp = torch.where(unset, torch.zeros_like(zp), zp)
    return scale, zp


def channel_rows(x: torch.Tensor, ch_axis: int) -> torch.Tensor:
    """x as [C, elements per channel], C = x.size(ch_axis)."""
    return x.movedim(ch_axis, 0).reshape(x.size(ch_axis), -1)


def flag_on_device(flag: torch.Tensor) -> torch.Tensor:
    """0-dim bool on the flag's device: nonzero after truncation toward zero (no host sync)."""
    t = flag.detach().reshape(())
    return (t.trunc() if t.is_floating_point() else t) != 0


def flag_is_on(flag) -> bool:
    """A bool, or a one-element tensor that is nonzero after truncation toward zero (torch's CPU reading): for a
    float, |v| >= 1 or NaN. (Read as a Python number: tensor ops on one element cost several microseconds.)"""
    if not isinstance(flag, torch.Tensor):
        return bool(flag)
    v = flag.item()
    return not -1.0 < v < 1.0 if isinstance(v, float) else v != 0


def fused_moving_avg_obs_fake_quant(
    x: torch.Tensor,
    observer_on,
    fake_quant_on,
    running_min: torch.Tensor,
    running_max: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    averaging_const: float,
    quant_min: int,
    quant_max: int,
    ch_axis: int,
    per_row_fake_quant: bool = False,
    symmetric_quant: bool = False,
    *,
    qparams: str = "fused",
    eps: float = _F32_EPS,
    symmetric_zero_point: int = 0,
    flavour: str | None = None,
) -> torch.Tensor:
    """One observer + fake-quant step; updates running_min/max, scale and zero_point in place and returns y.
    The flags are bools or one-element tensors (``flag_is_on``). See the module docstring."""
    if qparams not in QPARAMS_MODES:
        raise ValueError(f"qparams must be one of {QPARAMS_MODES}, got {qparams!r}")
    flavour = flavour or default_flavour(x)
    if x.numel() == 0:
        return x.clone()
    if per_row_fake_quant:
        channels = x.size(ch_axis)
        if running_min.numel() == 0:
            running_min.resize_(channels).fill_(float("inf"))
            running_max.resize_(channels).fill_(float("-inf"))
            scale.resize_(channels)
            zero_point.resize_(channels)
    if flag_is_on(observer_on):
        if per_row_fake_quant:
            cur_min, cur_max = torch.aminmax(channel_rows(x.detach().float(), ch_axis), dim=1)
        else:
            cur_min, cur_max = torch.aminmax(x.detach().float())
        running_min.copy_(update_running(running_min, cur_min.reshape(running_min.shape), averaging_const, flavour))
        running_max.copy_(update_running(running_max, cur_max.reshape(running_max.shape), averaging_const, flavour))
    if qparams == "fused" and flag_is_on(fake_quant_on):
        s, z = choose_qparams_fused(running_min, running_max, quant_min, quant_max, symmetric_quant, flavour)
        scale.copy_(s.reshape(scale.shape))
        zero_point.copy_(z.reshape(zero_point.shape))
    elif qparams == "observer" and flag_is_on(observer_on):
        s, z = choose_qparams_observer(running_min, running_max, quant_min, quant_max, symmetric_quant, eps=eps,
                                       symmetric_zero_point=symmetric_zero_point)
        scale.copy_(s.reshape(scale.shape))
        zero_point.copy_(z.reshape(zero_point.shape))
    if not flag_is_on(fake_quant_on):
        return x.clone()
    if per_row_fake_quant:
        y, _ = fake_quant_per_channel(x, scale.reshape(-1), zero_point.reshape(-1).to(torch.int32), ch_axis,
                                      quant_min, quant_max, flavour=flavour)
    else:
        y, _ = fake_quant_per_tensor(x, scale.reshape(-1)[0], zero_point.reshape(-1)[0], quant_min, quant_max,
                                     flavour=flavour)
    return y


# ----------------------------------------------------------------------------------------------------------
# The family's launcher (qkernels/fused_observer.py, LAUNCHERS) on this spec: the reference backend.
# ----------------------------------------------------------------------------------------------------------
class Launchers:
    """The observer launcher as PyTorch ops on x's device, flags read there (no host sync): the min/max
    reduction therefore runs even while the observer is off. x (dense) in storage order as [outer, C, inner],
    C = running_min.numel(); ``mode`` and ``flavour`` are qkernels.enums' QParamsMode and Flavour."""

    @staticmethod
    def update(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const,
               quant_min, quant_max, inner, symmetric, mode, eps, symmetric_zero_point, flavour):
        flavour = Flavour(flavour).name.lower()
        C = running_min.numel()
        rows = storage_view(x).float().view(-1, C, inner).transpose(0, 1).reshape(C, -1)
        cur_min, cur_max = torch.aminmax(rows, dim=1)
        observe = flag_on_device(observer_on)
        for running, cur in ((running_min, cur_min), (running_max, cur_max)):
            running.copy_(torch.where(observe, update_running(running, cur.view(running.shape), averaging_const,
                                                              flavour), running))
        if mode == QParamsMode.Fused:
            s, z = choose_qparams_fused(running_min, running_max, quant_min, quant_max, symmetric, flavour)
            recompute = flag_on_device(fake_quant_on)
        else:
            s, z = choose_qparams_observer(running_min, running_max, quant_min, quant_max, symmetric, eps=eps,
                                           symmetric_zero_point=symmetric_zero_point)
            recompute = observe
        scale.copy_(torch.where(recompute, s.view(scale.shape), scale))
        zero_point.copy_(torch.where(recompute, z.view(zero_point.shape).to(zero_point.dtype), zero_point))
