"""Wenshøj et al.'s oscillation-inducing regularizer over one weight tensor (``qkernels.oscillation.regularizer``
on a list of one tensor, the official ``OsciQuantLoss`` term with λ = 1), 4 bits (L = 2^3 − 1 = 7 levels a side),
the gradient through the max (``scale_grad``, the official default). The weight is flat in the sweep ([n]; the
op is per tensor) and any weight shape in the registry. Per tensor of N elements, in float32:

    s = max|w| / L,   q = rne(w / s) · s,   R = mean(q² − w²)        (a float32 scalar)
    dR/dw = (2/N) (q − w), straight through the rounding, plus at the max's elements the path through s

eager: the official per-tensor loop of ``benchmarks/bench_regularizer.py`` (``s = w.abs().max() / L`` through
torch.max, the straight-through round, ``total + (q * q − w * w).mean()``) in plain torch, on ``w.float()``: the
reference's precision (the official code runs in the weights' dtype, which for fp16/bf16 rounds q, q² and w² to
that dtype and would differ from the reference by far more than the order of a sum); autograd's backward.

Minimal traffic (b = the weight's element size): fwd reads w twice (the max, then the sums with s known): 2b;
bwd reads w and writes dw: 2b; fwdbwd: 4b.
"""

from __future__ import annotations

import torch

import qkernels
from qkernels.reference import oscillation_regularizer as reference
from qkernels.reference.reduce import sum_bound

from ..spec import Op, Tolerance, exact

BITS = 4
LEVELS = 2 ** (BITS - 1) - 1


def traffic(mode: str, numel: int, itemsize: int) -> int:
    return {"fwd": 2 * itemsize, "bwd": 2 * itemsize, "fwdbwd": 4 * itemsize}[mode] * numel


def make(dims, dtype, device) -> dict:
    g = torch.Generator(device).manual_seed(0)
    return {"w": (torch.randn(dims, generator=g, device=device) * 0.05).to(dtype)}


def _qkernels(i):
    return qkernels.oscillation.regularizer([i["w"]], BITS)


def _eager(i):
    total = 0.0
    for w in [i["w"].float()]:  # the official loop, over a list of one tensor
        s = w.abs().max() / LEVELS
        v = w / s
        q = (v + (torch.round(v) - v).detach()) * s  # the straight-through round (its value is round(v) exactly)
        total = total + (q * q - w * w).mean()
    return total


def _eager_check(want, got, inputs):
    """The value (0-dim): rtol 1e-5, atol 1e-7, a float32 mean in torch's order against the reference's fixed
    blocks finished in float64 (tests/test_oscillation_regularizer.py's bound for the value against the official
    formula). The gradient off the max: rtol 1e-5 and an atol of 1e-6 of the cancelling terms' magnitude, as that
    test states it: autograd forms 2q · (s / s) − 2w (terms of (2/N)·|w|) where the reference rounds
    (q − w) · 2/N once; the magnitude max|w| · 2/N · |go| is taken as 2L · max|dw| (|q − w| reaches
    s/2 = max|w| / 2L), which needs no upstream gradient. At the max's elements the gradient is mostly the scale
    path, (2/N) · go · dR/ds / L split over the ties; autograd forms dR/ds as two float32 sums, Σ 2q · round(v) and
    Σ 2q · v (v = w / s), of magnitude M = Σ 2|q| (|round(v)| + |v|), that cancel to 2 Σ q (round(v) − v), where
    the reference sums q (q − w) in fixed blocks in float64: there the rtol is 1e-5 + 2^-22 √N · M / |2 Σ q
    (round(v) − v)|, i.e. 4 u √N of the sums' magnitude (u = 2^-24; u √N: the random-walk error of a float32 sum
    accumulated sequentially, as Inductor's CPU reductions do per vector lane) carried to the result."""
    problem = exact(want, got)
    if problem is None or got.dtype != want.dtype or got.shape != want.shape:
        return problem
    a, b = got.double(), want.double()
    if want.dim() == 0:
        ok = torch.isclose(a, b, rtol=1e-5, atol=1e-7)
    else:
        w = inputs["w"].double()
        m = w.abs().max()
        v = w / (m / LEVELS)
        q = torch.round(v) * (m / LEVELS)
        magnitude = (2 * q.abs() * (torch.round(v).abs() + v.abs())).sum()
        ratio = float(magnitude / (2 * q * (torch.round(v) - v)).sum().abs())
        rtol = torch.where(w.abs() == m, 1e-5 + 2.0 ** -22 * w.numel() ** 0.5 * ratio, 1e-5)
        ok = (a - b).abs() <= rtol * b.abs() + 1e-6 * 2 * LEVELS * float(b.abs().max())
    bad = int((~ok).sum())
    return None if bad == 0 else f"{bad} of {want.numel()} elements beyond the bound " \
                                 f"(max difference {float((a - b).abs().max()):.3g})"


EAGER = Tolerance("value rtol 1e-5 atol 1e-7 (a float32 mean in torch's order); dw rtol 1e-5, atol 1e-6 · 2L · "
                  "max|dw| (autograd's 2q·(s/s) − 2w cancels terms of (2/N)|w|), as tests/test_oscillation_"
                  "regularizer.py states both; at the max's elements rtol 1e-5 + 2^-22·√N · M/|dR/ds|, M the "
                  "magnitude of autograd's two cancelling float32 sums forming dR/ds", _eager_check)



def _qkernels_check(want, got, inputs):
    """The family's contract for every backend (tests/test_oscillation_regularizer_cpu.py and
    tests/test_oscillation_regularizer.py): the value's sum S1 / N within conftest's ``assert_sums_close`` of the
    exact sum of the reference's e / N (``qkernels.reference.reduce.sum_bound``); the gradient bit for bit off the
    max's elements, and at them (the scale path, a quotient of the sum S2) rtol max(1e-5, eps(dtype)), atol 0."""
    problem = exact(want, got)
    if problem is None or got.dtype != want.dtype or got.shape != want.shape:
        return problem
    w = inputs["w"]
    m = reference.amax(w)
    if want.dim() == 0:
        _, e, _, _ = reference.elements(w, m, BITS)
        exact_sum, bound = sum_bound(e.double() / w.numel(), lambda v: v.sum())
        diff = abs(float(got) - float(exact_sum))
        return None if diff <= float(bound) else f"value {float(got)!r}: {diff:.3g} from the exact sum, bound " \
                                                 f"{float(bound):.3g}"
    tied = w.float().abs() == m
    if exact(want[~tied], got[~tied]) is not None:
        return "off the max: " + exact(want[~tied], got[~tied])
    rtol = max(1e-5, torch.finfo(w.dtype).eps)
    ok = torch.isclose(got[tied].double(), want[tied].double(), rtol=rtol, atol=0.0)
    return None if bool(ok.all()) else f"at the max: {int((~ok).sum())} elements beyond rtol {rtol:g}"


QKERNELS = Tolerance("the family's contract: the value within tests/conftest.py's assert_sums_close of the exact "
                     "sum; dw exact off the max, rtol max(1e-5, eps) at it (tests/test_oscillation_regularizer*.py)",
                     _qkernels_check)

OPS = [
    Op("regularizer", "regularizer", "oscillation regularizer (Wenshøj et al.), 4 bits, one tensor, scale_grad",
       make=make, sweep_shape=lambda n: (n,), traffic=traffic, qkernels=_qkernels, eager=_eager, kinds=("weight",),
       grads=("w",), tolerances={"eager": EAGER, "compile": EAGER, "qkernels": QKERNELS}),
]
