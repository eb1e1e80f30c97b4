"""Nagel et al.'s oscillation dampening loss of one weight (``qkernels.oscillation_dampening``, the official
``DampeningLoss``, research note §4): per channel along axis 0 (w [C, ...], C = 256 in the sweep:
[256, n / 256]), int4 grid [-8, 7], zero point 0, 10 % of the weights frozen on random grid integers,
aggregation ``kernel_mean`` (the official default). With ``inv = float32(1 / s)``, per element, in float32:

    x    = frozen ? frozen_x_int : clamp(rne(w · inv) + z, -8, 7)     (the quantizer's integer, frozen included)
    w_q  = stopgrad((x − z) · s),   w_c = clamp(w, (-8 − z) · s, (7 − z) · s)
    loss = Σ (w_q − w_c)² / K,      K = numel / C (the sum over dim 0, averaged over the rest)

a float32 scalar; its gradient goes to the weight (inside the clip range: 2 (w − w_q) / K) and to the scale
(through an active clip bound, i.e. only from frozen weights outside the range).

eager: the official formulation in plain torch, math in float32 as the reference (fp16/bf16 weights widened):
the quantizer's forward (``w · (1/s)`` rounded, clamped, the official arithmetic blend
``~frozen · x + frozen · frozen_x_int``), detached, ``torch.clamp`` of the weight to the scaled grid ends, then
``((w_q − w_c) ** 2).sum(0).mean()``; autograd's backward.

Minimal traffic (b = the weight's element size; the sums and the scale's gradient are negligible): fwd reads w
and the frozen state (bool + int8): b + 2; bwd re-reads them and writes dw (2b + 2) or reads a saved float32
unit gradient and writes dw (4 + b, what qkernels does), whichever is less: b + min(b + 2, 4); fwdbwd: the
forward and the re-reading backward, 3b + 4.
"""

from __future__ import annotations

import torch

from qkernels import oscillation_dampening
from qkernels.reference import oscillation_dampening as reference
from qkernels.reference.reduce import sum_bound

from ..spec import Op, Tolerance, exact

QMIN, QMAX, CHANNELS = -8, 7, 256


def traffic(mode: str, numel: int, itemsize: int) -> int:
    return {"fwd": itemsize + 2, "bwd": itemsize + min(itemsize + 2, 4), "fwdbwd": 3 * itemsize + 4}[mode] * numel


def _view(w):
    return (-1,) + (1,) * (w.dim() - 1)


def make(dims, dtype, device) -> dict:
    g = torch.Generator(device).manual_seed(0)
    w = (torch.randn(dims, generator=g, device=device) * 0.05).to(dtype)
    scale = torch.rand(dims[0], generator=g, device=device) * 0.01 + 0.01  # ~5 % of w outside [-8 s, 7 s]
    frozen = torch.rand(dims, generator=g, device=device) < 0.1
    frozen_x_int = (torch.randint(QMIN, QMAX + 1, dims, generator=g, device=device) * frozen).to(torch.int8)
    return {"w": w, "scale": scale, "zero_point": torch.zeros(dims[0], dtype=torch.int32, device=device),
            "frozen": frozen, "frozen_x_int": frozen_x_int}


def _qkernels(i):
    return oscillation_dampening(i["w"], i["scale"], i["zero_point"], 0, QMIN, QMAX, i["frozen"], i["frozen_x_int"])


def _eager(i):
    w, frozen, view = i["w"].float(), i["frozen"], _view(i["w"])
    s, z = i["scale"].view(view), i["zero_point"].view(view).float()
    with torch.no_grad():  # the target: the quantizer's forward, detached
        x = (torch.round(w * torch.reciprocal(s)) + z).clamp(QMIN, QMAX)
        x = ~frozen * x + frozen * i["frozen_x_int"].float()
        target = (x - z) * s
    clipped = torch.clamp(w, (QMIN - z) * s, (QMAX - z) * s)
    return ((target - clipped) ** 2).sum(0).mean()


def _eager_check(want, got, inputs):
    """Per element the eager loss terms and the weight's gradient equal the reference's ((go / K) · 2d is the
    reference's (−2d) · float32(go / K) up to the exact factor −1): the weight's gradient is exact. The loss and
    the scale's gradient are float32 sums in autograd's order (the sum over dim 0, then the mean; per channel
    over the broadcast) where the reference sums fixed blocks finished in float64: rtol 1e-5 as
    tests/test_oscillation_dampening.py states for both (atol 0 for the loss, 1e-7 for the scale's gradient),
    widened to 2^-22 √n for a sum of n terms (4 u √n, u = 2^-24: the random-walk error of a float32 sum
    accumulated sequentially, as Inductor's CPU reductions do per vector lane; the loss's terms are ≥ 0, so its
    magnitude is itself; n = numel for the loss, numel / C for a channel's scale gradient)."""
    problem = exact(want, got)
    if problem is None or got.dtype != want.dtype or got.shape != want.shape or want.shape == inputs["w"].shape:
        return problem
    n = inputs["w"].numel() // (1 if want.dim() == 0 else want.numel())
    rtol, atol = 1e-5 + 2.0 ** -22 * n ** 0.5, 0.0 if want.dim() == 0 else 1e-7
    a, b = got.double(), want.double()
    bad = int((~torch.isclose(a, b, rtol=rtol, atol=atol)).sum())
    return None if bad == 0 else f"{bad} of {want.numel()} elements beyond rtol {rtol:.3g}, atol {atol:g} " \
                                 f"(max difference {float((a - b).abs().max()):.3g})"


EAGER = Tolerance("dw exact; loss rtol 1e-5 + 2^-22·√numel, dscale rtol 1e-5 + 2^-22·√(numel/C) atol 1e-7: "
                  "float32 sums in autograd's order against fixed blocks finished in float64 "
                  "(tests/test_oscillation_dampening.py's rtol 1e-5, widened for long sequential sums)",
                  _eager_check)

def _qkernels_check(want, got, inputs):
    """The family's contract for every backend (tests/test_oscillation_dampening.py, ``_check_launcher``): dw
    bit for bit; the per-quantizer sums of e and ds within tests/conftest.py's ``assert_sums_close`` of their exact sums
    (``qkernels.reference.reduce.sum_bound``). Here: the loss Σ e / K against the exact sum of the reference's e / K;
    the scale's gradient ds_c · (go / K) against the reference's within |go / K| (recovered from the reference's
    largest channel) times the bound of both sums, plus one float32 rounding of each product."""
    problem = exact(want, got)
    w = inputs["w"]
    if problem is None or got.dtype != want.dtype or got.shape != want.shape or want.shape == w.shape:
        return problem
    dims = (1, 1, w.size(0), w.numel() // w.size(0))  # [B, O, C, I] of channels on axis 0
    e, _, ds = reference.elements(w, inputs["scale"], inputs["zero_point"].float(), dims, QMIN, QMAX,
                                  inputs["frozen"], inputs["frozen_x_int"])
    if want.dim() == 0:
        exact_sum, bound = sum_bound(e.double().reshape(-1) / (w.numel() // w.size(0)), lambda v: v.sum())
        diff = abs(float(got) - float(exact_sum))
        return None if diff <= float(bound) else f"loss {float(got)!r}: {diff:.3g} from the exact sum, bound " \
                                                 f"{float(bound):.3g}"
    exact_sums, bounds = sum_bound(ds.movedim(2, 0).reshape(dims[2], -1), lambda v: v.sum(-1))
    top = int(exact_sums.abs().argmax())
    factor = abs(float(want[top]) / float(exact_sums[top])) if float(exact_sums[top]) != 0 else 0.0
    limit = factor * 2 * bounds + 2.0 ** -23 * want.double().abs()
    diff = (got.double() - want.double()).abs()
    bad = int((diff > limit).sum())
    return None if bad == 0 else f"{bad} of {want.numel()} channel sums beyond the bound"


QKERNELS = Tolerance("the family's contract: dw exact; the loss and the scale's gradient within tests/conftest.py's "
                     "assert_sums_close of the exact sums (tests/test_oscillation_dampening.py)", _qkernels_check)

OPS = [
    Op("dampening", "dampening", "oscillation_dampening loss, int4 per channel, kernel_mean, 10 % frozen",
       make=make, sweep_shape=lambda n: (CHANNELS, n // CHANNELS) if n % CHANNELS == 0 else None,
       traffic=traffic, qkernels=_qkernels, eager=_eager, kinds=("weight",), grads=("w", "scale"),
       tolerances={"eager": EAGER, "compile": EAGER, "qkernels": QKERNELS}),
]
