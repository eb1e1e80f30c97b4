"""Pure-PyTorch reference of the oscillation-inducing regularizer (Wenshøj, Pepin, Selvan 2025, "Oscillations
Make Neural Networks Robust to Quantization"; the official ``OsciQuantLoss``,
``../shared/research/wenshoj-oscillation-regularizer.md`` §2): the spec every backend is tested against.

For a list of weight tensors ``W_l`` (``N_l`` elements each) and ``b`` bits (2 to 8), ``L = 2^(b-1) - 1``, the
value is ``R = sum_l mean_i(q_i^2 - w_i^2)`` with the per-tensor max-abs narrow quantizer. Per tensor, in
float32 (fp16/bf16 weights widened):

    m   = max_i |w_i|                   (NaN sticks)
    s   = m / L
    q   = s == 0 ? 0 : rne(w / s) * s   (rne: round half to even, torch.round; no clamp: |w / s| <= L)
    e   = q * q - w * w,   t = q * (q - w)             (separate roundings, no fused multiply-add)
    S1  = sum_i e,  S2 = sum_i t,  c = #{i : |w_i| == m}

``S1`` and ``S2`` are summed over the fixed blocks of ``make_blocks((1, 1, 1, N), REDUCE_TARGET)`` (float32
partials, added in float64 in block order, not rounded): ``sums[l] = (S1 / N, S2)`` in float64, and the value is
``float32(sum_l sums[l, 0])``.

Gradient (straight-through rounding, as the official ``RoundSTE``), with the upstream gradient ``go``:

    coef = scale_grad and m > 0 ? float32(S2 / (float64(m) * c)) : 0     (the path through s = max|W| / L)
    f    = float32(float64(go) * 2 / N)
    dw   = ((q - w) + (|w| == m ? (w > 0 ? coef : -coef) : 0)) * f       (in w's dtype)

The scale term is ``dR/dm · dm/dw_i``: ``dR/ds = (2/N) S2 / s``, ``ds/dm = 1 / L``, and the max splits its
gradient evenly over the ``c`` tied elements (torch.max over a whole tensor), so ``(2/N) S2 / (m c) · sign(w_i)``.
``max|W| = 0`` gives ``q = 0``, value 0 and gradient 0; a NaN or infinite weight makes its tensor's value and
gradient NaN.
"""

from __future__ import annotations

import torch

from .reduce import make_blocks, reference_partials

__all__ = ["REDUCE_TARGET", "levels", "quantize", "elements", "amax", "sums", "backward", "Launchers", "official"]

REDUCE_TARGET = 16384  # elements per block of the sums (make_blocks' target)


def levels(bits: int) -> int:
    """``L = 2^(b-1) - 1``: the grid is the integers ``-L..L`` (``2^b - 1`` levels)."""
    return 2 ** (bits - 1) - 1


def quantize(w: torch.Tensor, m: torch.Tensor, bits: int) -> torch.Tensor:
    """``q`` float32 of ``w``'s shape for the tensor's max ``m`` (float32 0-dim)."""
    wf = w.float()
    s = m / levels(bits)
    q = torch.round(wf / s) * s
    return torch.where(s == 0, torch.zeros_like(q), q)


def elements(w: torch.Tensor, m: torch.Tensor, bits: int):
    """Per-element ``(q, e, t, tie)`` float32 (tie bool) of one tensor, flat."""
    wf = w.float().reshape(-1)
    q = quantize(wf, m, bits)
    return q, q * q - wf * wf, q * (q - wf), wf.abs() == m


def amax(w: torch.Tensor) -> torch.Tensor:
    """``max|w|`` float32 0-dim, NaN sticking."""
    wf = w.float().reshape(-1)
    return torch.where(wf.isnan().any(), float("nan"), wf.abs().amax())


def _block_sum(v: torch.Tensor) -> torch.Tensor:
    """The float64 sum of a flat float32 tensor over the fixed blocks (float32 partials, not rounded after)."""
    dims = (1, 1, 1, v.numel())
    return reference_partials(v.view(dims), make_blocks(dims, REDUCE_TARGET), "sum").double().sum()


def sums(w: torch.Tensor, m: torch.Tensor, bits: int):
    """``((S1 / N, S2) float64 [2], c int64 0-dim)`` of one tensor."""
    _, e, t, tie = elements(w, m, bits)
    return torch.stack([_block_sum(e) / w.numel(), _block_sum(t)]), tie.sum()


def backward(w, grad, m, sums_l, ties, bits: int, scale_grad: bool) -> torch.Tensor:
    """``dw`` in w's dtype and shape for one tensor (``sums_l``: its float64 ``(S1 / N, S2)``, ``ties``: c)."""
    q, _, _, tie = elements(w, m, bits)
    wf = w.float().reshape(-1)
    coef = (sums_l[1] / (m.double() * ties)).float() if scale_grad else torch.zeros((), device=w.device)
    coef = torch.where(m > 0, coef, torch.zeros_like(coef))
    tie_term = torch.where(tie, torch.where(wf > 0, coef, -coef), torch.zeros_like(wf))
    factor = (grad.double() * 2 / w.numel()).float()
    return (((q - wf) + tie_term) * factor).to(w.dtype).view(w.shape)


class Launchers:
    """The reference backend's adapter of the family's launcher contract (qkernels/oscillation_regularizer.py)."""

    @staticmethod
    def amax(w, out):
        for i, t in enumerate(w):
            out[i] = amax(t)

    @staticmethod
    def sums(w, amax, bits, out, ties):
        for i, t in enumerate(w):
            out[i], ties[i] = sums(t, amax[i], bits)

    @staticmethod
    def backward(w, dw, grad, amax, sums, ties, bits, scale_grad):
        for i, t in enumerate(w):
            dw[i].copy_(backward(t, grad, amax[i], sums[i], ties[i], bits, scale_grad))


class _RoundSTE(torch.autograd.Function):
    """torch.round forward, the identity backward (the official ``RoundSTE``)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def official(weights, bits: int, scale_grad: bool = True):
    """The official ``OsciQuantLoss`` term (λ = 1) as its code forms it, with torch autograd, in the weights'
    dtype: per tensor ``s = max|W| / L`` (through ``torch.max``, whose gradient splits evenly over ties, unless
    ``scale_grad`` is false), ``q = round(W / s) · s`` with a straight-through round, ``sum_l mean(q² − W²)``.
    What the tests and benchmarks compare against; the spec above is what the kernels reproduce bit for bit."""
    total = 0.0
    for w in weights:
        s = w.abs().max() / levels(bits)
        s = s if scale_grad else s.detach()
        q = _RoundSTE.apply(w / s) * s
        total = total + (q * q - w * w).mean()
    return total
