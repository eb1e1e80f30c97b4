"""One training step of a weight's oscillation-tracked LSQ fake quantization (``qkernels.oscillation_fake_quantize``,
Nagel et al. 2022): per channel along axis 0 (w [C, ...], C = 256 in the sweep: [256, n / 256]), int4 grid
[-8, 7], zero point 0, tracking on, freezing on (threshold 0.02, momentum 0.01, EMA integer). With ``inv =
float32(1 / s)``, per element, in float32:

    x   = frozen ? frozen_x_int : clamp(rne(w · inv) + z, -8, 7)        (the frozen state of before the step)
    y   = (x − z) · s                                                     (in w's dtype)
    the state update (prev_x_int, prev_switch_dir, ema_oscillation, frozen, frozen_x_int, ema_x_int) of the
    official ``TrackOscillation``; backward (LSQ): dw = dy where unfrozen and inside the grid, else 0;
    ds_c = Σ dy · ((x − z) − w / s) inside, Σ dy · (x − z) clipped or frozen.

The state is a mid-training one, made in ``make`` from a fixed generator (no warm steps): the weight's current
integers moved by -1/0/+1 as the previous ones, random last directions, oscillation EMAs in [0, 0.03) (some
cross the threshold in this step and freeze), 5 % of the weights frozen on random grid integers, integer EMAs
near the current integers. Every provider gets its own copy (``make`` is called per provider), so the state a
step mutates never leaks into another provider's check.

eager: the official code's step in plain torch: ``v = w · (1/s)``, the integer ``clamp(v + stopgrad(round(v) −
v) + z)`` (straight-through round), the official arithmetic blend ``~frozen · x_int + frozen · frozen_x_int`` (no
task gradient to a frozen weight), the tracker's state update under no_grad
(``qkernels.reference.oscillation_fake_quant.OfficialTracker``, seven float32 state tensors, the boolean-index
writes of the official code), ``((x − z) · s)`` cast to w's dtype; autograd's backward.

Minimal traffic (b = the weight's element size; the state is 12 bytes per element, read and written in full):
fwd reads w, writes y, reads and writes the state: 2b + 24; bwd reads dy, w and the forward's int8 integer and
1-byte mask, writes dw: 3b + 2; fwdbwd is both, the forward also writing the integer and the mask: 5b + 28 (the
per-channel scale and its gradient are negligible).
"""

from __future__ import annotations

import torch

from qkernels import new_oscillation_state, oscillation_fake_quantize
from qkernels.reference.oscillation_fake_quant import OfficialTracker

from ..spec import Op, Tolerance, exact

QMIN, QMAX, MOMENTUM, THRESHOLD, CHANNELS = -8, 7, 0.01, 0.02, 256


def traffic(mode: str, numel: int, itemsize: int) -> int:
    return {"fwd": 2 * itemsize + 24, "bwd": 3 * itemsize + 2, "fwdbwd": 5 * itemsize + 28}[mode] * numel


def _view(w):
    return (-1,) + (1,) * (w.dim() - 1)


def make(dims, dtype, device) -> dict:
    g = torch.Generator(device).manual_seed(0)
    w = (torch.randn(dims, generator=g, device=device) * 0.05).to(dtype)
    scale = torch.rand(dims[0], generator=g, device=device) * 0.01 + 0.01  # w / s in about [-10, 10]: some clip
    zero_point = torch.zeros(dims[0], device=device)
    s = scale.view(_view(w))
    x = torch.round(w.float() * torch.reciprocal(s)).clamp(QMIN, QMAX)  # the integers of this step (z = 0)
    state = new_oscillation_state(w)
    state.prev_x_int.copy_((x + torch.randint(-1, 2, dims, generator=g, device=device)).clamp(QMIN, QMAX))
    state.prev_switch_dir.copy_(torch.randint(-1, 2, dims, generator=g, device=device))
    state.ema_oscillation.copy_(torch.rand(dims, generator=g, device=device) * 0.03)
    state.frozen.copy_(torch.rand(dims, generator=g, device=device) < 0.05)
    state.frozen_x_int.copy_(torch.randint(QMIN, QMAX + 1, dims, generator=g, device=device) * state.frozen)
    state.ema_x_int.copy_(x + torch.randn(dims, generator=g, device=device) * 0.3)
    state.started.fill_(1)  # the tracker and the integer EMA have started
    # The official tracker holding the same state (its float32 tensors), as after the same history.
    tracker = OfficialTracker(MOMENTUM, THRESHOLD, use_ema_x_int=True)
    tracker.prev_x_int = state.prev_x_int.float()
    tracker.prev_switch_dir = state.prev_switch_dir.float()
    tracker.ema_oscillation = state.ema_oscillation.clone()
    tracker.total_oscillation = torch.zeros(dims, device=device)
    tracker.frozen = state.frozen.clone()
    tracker.frozen_x_int = state.frozen_x_int.float()
    tracker.ema_x_int = state.ema_x_int.clone()
    return {"w": w, "scale": scale, "zero_point": zero_point, "state": state, "tracker": tracker,
            "threshold": torch.tensor(THRESHOLD, device=device), "tracking": torch.tensor(True, device=device)}


def _qkernels(i):
    return oscillation_fake_quantize(i["w"], i["scale"], i["zero_point"], 0, QMIN, QMAX, i["state"],
                                     momentum=MOMENTUM, freeze_threshold=i["threshold"], tracking=i["tracking"])


def _eager(i):
    w, tracker, view = i["w"], i["tracker"], _view(i["w"])
    s, z = i["scale"].view(view), i["zero_point"].view(view)
    v = w.float() * torch.reciprocal(s)  # math in float32, 1/s correctly rounded (the reference's inv)
    x_int = (v + (torch.round(v) - v).detach() + z).clamp(QMIN, QMAX)
    x = x_int
    if tracker.frozen is not None:  # the official blend, before the state update: dx/dw = 0 where frozen
        x = ~tracker.frozen * x_int + tracker.frozen * tracker.frozen_x_int
    if torch.compiler.is_compiling():
        # The update below writes frozen and frozen_x_int in place. Eager autograd saved ~frozen (a new tensor);
        # a compiled graph saves its input frozen itself (recomputing ~ in the backward), so give the tracker
        # copies to write, or the backward finds a saved tensor modified.
        tracker.frozen, tracker.frozen_x_int = tracker.frozen.clone(), tracker.frozen_x_int.clone()
    with torch.no_grad():  # the official update; it blends again (the same x) and mutates its state in place
        tracker(x_int.detach())
    return ((x - z) * s).to(w.dtype)


def _eager_check(want, got, inputs):
    """The gradients (y is compared exactly). dw within 2 float32 ulps (rtol 2^-22): the official autograd passes
    dw as (dy · s) · (1/s), the product's and the quotient's path (two roundings; exact again in fp16/bf16, which round
    it back to dy). The scale's gradient ([C], n elements a channel): within 1e-5 of itself plus 2^-22 √n of its terms'
    magnitude M_c = Σ_i (|x_i − z| + |w_i / s|) (per unit dy; the runner's dy is standard normal), i.e. 4 u √n (u =
    2^-24; u √n: the random-walk error of a float32 sum accumulated sequentially, as Inductor's CPU reductions do per
    vector lane): autograd sums dy · (x − z) and the rounding path's −dy · w / s (through 1/s, i.e. −dy·s·w · (1/s)²)
    per element in float32, in its own order, terms that cancel to (x − z) − w / s, where the reference sums
    ((dy · (level · s − w)) · inv) in fixed blocks finished in float64."""
    problem = exact(want, got)
    if problem is None or got.dtype != want.dtype or got.shape != want.shape:
        return problem
    diff = (got.double() - want.double()).abs()
    if want.shape == inputs["scale"].shape:
        w, s = inputs["w"].float(), inputs["scale"].view(_view(inputs["w"]))
        v = w * torch.reciprocal(s)
        terms = torch.round(v).clamp(QMIN, QMAX).abs() + v.abs()
        per_channel = terms.reshape(terms.shape[0], -1)
        bound = 1e-5 * want.double().abs() + 2.0 ** -22 * per_channel.shape[1] ** 0.5 * per_channel.sum(1).double()
    else:
        bound = 2.0 ** -22 * want.double().abs()
    bad = int((diff > bound).sum())
    return None if bad == 0 else f"{bad} of {want.numel()} elements beyond the bound " \
                                 f"(max difference {float(diff.max()):.3g})"


EAGER = Tolerance("y exact; dw 2 float32 ulps ((dy·s)·(1/s)); dscale rtol 1e-5 + 2^-22·√n · Σ(|x−z| + |w/s|) "
                  "per channel: autograd's float32 sums of cancelling LSQ terms in its order", _eager_check,
                  covers=("gradient 0", "gradient 1"))


OPS = [
    Op("oscillation_step", "oscillation", "oscillation_fake_quantize step, int4 per channel, tracking + freezing",
       make=make, sweep_shape=lambda n: (CHANNELS, n // CHANNELS) if n % CHANNELS == 0 else None,
       traffic=traffic, qkernels=_qkernels, eager=_eager, kinds=("weight",), grads=("w", "scale"),
       tolerances={"eager": EAGER, "compile": EAGER}),
]
