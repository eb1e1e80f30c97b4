"""The fused moving-average observer + fake quantization (``qkernels.fused_moving_avg_obs_fake_quant``): one
training step with the observer and fake quant on, uint8 grid [0, 255], asymmetric, averaging constant 0.01,
the qparams of torch's fused op (FBGEMM's ``ChooseQuantizationParams``). Per tensor: x any shape (sweep: 1-D),
running min/max 0-dim; per channel: x [C, ...] (sweep: [256, n / 256]), ch_axis 0, running min/max [C]; per
channel inner: the same with the channel innermost in storage (a channels-last activation's layout: the
kernels' row mode). The state (running min/max as after earlier steps, around ∓2.75, so the moving average is
taken; scale 1, zero point 0, both overwritten) is made fresh for every provider and compared after the step.

Math (``qkernels.reference.fused_observer``), per quantizer, float32 unless stated:
1. ``r = isinf(r) ? cur : r + c · (cur − r)`` for the running min and max, ``cur`` the min/max of x (on CUDA
   one FMA, ``fma(c, cur − r, r)``);
2. ``mn = min(r_min, 0)``, ``mx = max(r_max, 0)``, ``s = float32((double(mx) − mn) / (qmax − qmin))`` (0.1 if
   zero or its reciprocal is inf; on the CPU scales below 6.1e-5 floored there, mn/mx widened to match);
   ``z0 = qmin − mn / s`` or ``qmax − mx / s`` (double; the one whose ``|qmin| + |mn / s|`` vs ``|qmax| +
   |mx / s|`` side is smaller), ``z = clamp(rne(z0))`` (int32); written into ``scale``/``zero_point``;
3. ``y = (clamp(rne(x · float32(1 / s)) + z) − z) · s`` in x's dtype; ``dx = dy`` where the level is inside
   the grid, else 0 (straight-through).

eager: those steps in PyTorch ops, the observer under ``no_grad``, the fake quant with the straight-through
mask; the same expressions and precisions (on CUDA the FMA of step 1 is a float64 product, exact, and sum,
rounded once to float32: the FMA unless that sum rounds onto a float32 midpoint, which takes a 2^-29
coincidence). aten: ``torch.fused_moving_avg_obs_fake_quant``, float32 only ("expected scalar type Float").

Minimal traffic (b = element size; the state is negligible): the scale depends on the min/max of all of x (per
channel: of the whole row), so x is read twice, for the min/max and for the fake quant: fwd 3b (read x twice,
write y); bwd reads dy and a 1-byte mask, writes dx (2b + 1); fwdbwd is both, the forward also writing the
mask (5b + 2).
"""

from __future__ import annotations

import torch

from qkernels import fused_moving_avg_obs_fake_quant

from ..spec import Op

QMIN, QMAX, AVERAGING, CHANNELS, AXIS = 0, 255, 0.01, 256, 0
SMALL_SCALE = float(torch.tensor(6.1e-5, dtype=torch.float32))  # FBGEMM's CPU scale floor, as a float32


def traffic(mode: str, numel: int, itemsize: int) -> int:
    return {"fwd": 3 * itemsize, "bwd": 2 * itemsize + 1, "fwdbwd": 5 * itemsize + 2}[mode] * numel


def _inputs(dims, dtype, device, per_channel: bool, inner: bool = False) -> dict:
    x = torch.randn(dims, generator=torch.Generator(device).manual_seed(0), device=device).to(dtype)
    if inner:  # the same values with the channel innermost in storage, as a channels-last activation's
        x = x.movedim(AXIS, -1).contiguous().movedim(-1, AXIS)
    n = dims[AXIS] if per_channel else 1
    generator = torch.Generator(device).manual_seed(2)
    running_min = -2.5 - 0.5 * torch.rand(n, generator=generator, device=device)
    running_max = 2.5 + 0.5 * torch.rand(n, generator=generator, device=device)
    if not per_channel:  # as torch.ao's per-tensor observers hold them
        running_min, running_max = running_min.reshape(()), running_max.reshape(())
    on = torch.ones(1, dtype=torch.long, device=device)
    return {"x": x, "observer_on": on, "fake_quant_on": on, "running_min": running_min,
            "running_max": running_max, "scale": torch.ones(n, device=device),
            "zero_point": torch.zeros(n, dtype=torch.int32, device=device)}


def _qkernels(i, per_channel: bool):
    return fused_moving_avg_obs_fake_quant(i["x"], i["observer_on"], i["fake_quant_on"], i["running_min"],
                                           i["running_max"], i["scale"], i["zero_point"], AVERAGING, QMIN, QMAX,
                                           AXIS, per_channel, False)


def _aten(i, per_channel: bool):
    return torch.fused_moving_avg_obs_fake_quant(i["x"], i["observer_on"], i["fake_quant_on"], i["running_min"],
                                                 i["running_max"], i["scale"], i["zero_point"], AVERAGING, QMIN,
                                                 QMAX, AXIS, per_channel, False)


def _moving_average(running, cur):
    """Step 1: a never-observed (inf) entry takes the current value."""
    if running.device.type == "cuda":  # aten's CUDA kernel contracts this into an FMA
        avg = (running.double() + AVERAGING * (cur.double() - running.double())).float()
    else:
        avg = running + AVERAGING * (cur - running)
    return torch.where(torch.isinf(running), cur, avg)


def _choose_qparams(min_val, max_val):
    """Step 2: FBGEMM's asymmetric ``ChooseQuantizationParams`` per element of min_val/max_val."""
    mn, mx = torch.clamp(min_val, max=0.0), torch.clamp(max_val, min=0.0)  # the range must hold zero
    scale = ((mx.double() - mn.double()) / (QMAX - QMIN)).float()
    scale = torch.where((scale == 0) | torch.isinf(1.0 / scale), torch.full_like(scale, 0.1), scale)
    if min_val.device.type != "cuda":  # FBGEMM on the CPU: no scale below 6.1e-5, the range widened instead
        small = scale < SMALL_SCALE
        floor = torch.full_like(scale, SMALL_SCALE)
        ratio = floor / scale
        widened_mx = torch.where(mn == 0, floor * (QMAX - QMIN), torch.where(mx == 0, mx, mx * ratio))
        widened_mn = torch.where(mn == 0, mn, torch.where(mx == 0, -floor * (QMAX - QMIN), mn * ratio))
        scale, mn, mx = torch.where(small, floor, scale), torch.where(small, widened_mn, mn), \
            torch.where(small, widened_mx, mx)
    lo, hi = mn.double() / scale.double(), mx.double() / scale.double()
    # FBGEMM takes the zero point from the end whose quantization error is smaller
    z0 = torch.where(abs(QMIN) + lo.abs() < abs(QMAX) + hi.abs(), QMIN - lo, QMAX - hi)
    zero_point = torch.round(z0).clamp(QMIN, QMAX)  # rne inside the grid; outside, the nearest bound
    return scale, zero_point.to(torch.int32)


def _eager(i, per_channel: bool):
    x = i["x"]
    xf = x.detach().float()
    shape = (-1,) + (1,) * (x.dim() - 1) if per_channel else ()
    with torch.no_grad():
        if per_channel:
            cur_min, cur_max = torch.aminmax(xf.movedim(AXIS, 0).reshape(x.size(AXIS), -1), dim=1)
        else:
            cur_min, cur_max = torch.aminmax(xf)
        i["running_min"].copy_(_moving_average(i["running_min"], cur_min))
        i["running_max"].copy_(_moving_average(i["running_max"], cur_max))
        scale, zero_point = _choose_qparams(i["running_min"], i["running_max"])
        i["scale"].copy_(scale.reshape(i["scale"].shape))
        i["zero_point"].copy_(zero_point.reshape(i["zero_point"].shape))
    s, z = scale.reshape(shape), zero_point.reshape(shape).float()
    level = torch.round(xf * (1.0 / s)) + z  # aten multiplies by the float32 reciprocal, never divides
    y = ((torch.clamp(level, QMIN, QMAX) - z) * s).to(x.dtype)
    inside = (level >= QMIN) & (level <= QMAX)
    return y + (x - x.detach()) * inside  # the straight-through gradient: dy where inside the grid


def _op(name: str, per_channel: bool, summary: str, kinds: tuple, inner: bool = False) -> Op:
    return Op(name, "fused_observer", summary,
              make=lambda dims, dtype, device: _inputs(dims, dtype, device, per_channel, inner),
              state=("running_min", "running_max", "scale", "zero_point"),
              sweep_shape=(lambda n: (CHANNELS, n // CHANNELS) if n % CHANNELS == 0 else None) if per_channel
              else (lambda n: (n,)),
              traffic=traffic, kinds=kinds,
              qkernels=lambda i: _qkernels(i, per_channel), aten=lambda i: _aten(i, per_channel),
              aten_dtypes=("float32",), eager=lambda i: _eager(i, per_channel))


OPS = [
    _op("fused_observer_per_tensor", False,
        "fused_moving_avg_obs_fake_quant, one step (observer and fake quant on), uint8, x any shape",
        ("weight", "activation")),
    _op("fused_observer_per_channel", True,
        "fused_moving_avg_obs_fake_quant, one step (observer and fake quant on), uint8, per channel, axis 0",
        ("weight",)),
    _op("fused_observer_per_channel_inner", True,
        "fused_moving_avg_obs_fake_quant, one step, uint8, per channel, the channel innermost in storage",
        ("weight",), inner=True),
]
