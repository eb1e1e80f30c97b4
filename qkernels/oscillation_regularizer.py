"""The oscillation-inducing regularizer of Wenshøj et al. 2025, fused: value and gradient over a list of weights.

    value = qkernels.oscillation_regularizer(weights, bits, scale_grad=True)

``sum_l mean(q_b(W_l)^2 - W_l^2)`` with the per-tensor max-abs narrow quantizer ``s = max|W| / (2^(b-1) - 1)``,
``q = s · rne(W / s)``; the math, the gradient (straight-through rounding, plus the path through ``max|W|`` when
``scale_grad``) and the edge cases are ``qkernels.reference.oscillation_regularizer``. Two passes forward (the
maxima; then the sums and the tie counts), one backward. A pass covers every tensor of the list at once where the
backend allows (CPU: one parallel loop; CUDA: one launch per 64 tensors, plus one that finishes the sums; Triton:
one launch per tensor); the sums are fixed-block and finished in float64, so a call gives the same bits on every
run. The weights of one call share a device and a dtype (float32, float16 or bfloat16);
``qkernels.oscillation.regularizer`` takes any mix and groups them.

Registered ops (namespace ``qkernels``):

* ``oscillation_regularizer(Tensor[] weights, int bits, bool scale_grad) -> (Tensor value, Tensor amax,
  Tensor sums, Tensor ties)``: the value (float32, 0-dim) and what the backward needs (float32 [L], float64
  [L, 2], int64 [L]); no autograd of its own;
* ``oscillation_regularizer_backward(Tensor[] weights, Tensor grad, Tensor amax, Tensor sums, Tensor ties,
  int bits, bool scale_grad) -> Tensor[]``: the weights' gradients for the upstream gradient ``grad``.

``oscillation_regularizer`` (the function) applies them under one autograd definition (``_Regularizer``), in
eager mode and under ``torch.compile``: an autograd.Function takes the list as separate inputs without the
argument flattening of a registered autograd formula, which costs more than the kernels on a ResNet-20's 41
small weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import backends
from ._launchers import LauncherContract
from ._shared import _fail
from .reference.oscillation_regularizer import levels

__all__ = ["oscillation_regularizer", "check", "check_bits", "BITS"]

_FAMILY = "oscillation_regularizer"
_OP = "oscillation_regularizer"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BITS = range(2, 9)

# The family's launcher contract (qkernels/_launchers.py). w: the L weights, contiguous, one device and dtype, each
# walked flat; amax float32 [L], sums float64 [L, 2], ties int64 [L], grad float32 [] (read on the device), dw: L
# tensors of the weights' shapes and dtype. amax writes max|w_l| (NaN sticking); sums writes (S1_l / N_l, S2_l),
# the sums over the fixed blocks of make_blocks((1, 1, 1, N_l), REDUCE_TARGET) finished in float64, and the tie
# counts; backward writes dw. The math: qkernels.reference.oscillation_regularizer.
LAUNCHERS = LauncherContract(_FAMILY, {
    "amax": "(Tensor[] w, Tensor(a!) out) -> ()",
    "sums": "(Tensor[] w, Tensor amax, int bits, Tensor(a!) out, Tensor(b!) ties) -> ()",
    "backward": "(Tensor[] w, Tensor(a!)[] dw, Tensor grad, Tensor amax, Tensor sums, Tensor ties, int bits, "
                "bool scale_grad) -> ()",
})


def check(weights, bits, fused: bool = True):
    """Raises a RuntimeError naming the argument unless ``weights`` is a non-empty list of non-empty strided
    float32/float16/bfloat16 tensors (for one ``fused`` call: contiguous, of one device and dtype) and ``bits`` an
    int from 2 to 8."""
    check_list(weights)
    first = weights[0]
    for i, w in enumerate(weights):
        if w.dtype not in _DTYPES:
            _fail(f"{_OP}: `weights[{i}]` must be float32, float16 or bfloat16, got {w.dtype}")
        if w.numel() == 0:
            _fail(f"{_OP}: `weights[{i}]` has no elements (shape {tuple(w.shape)}): its mean is undefined")
        if w.layout != torch.strided or (fused and not w.is_contiguous()):
            _fail(f"{_OP}: `weights[{i}]` must be a {'contiguous ' if fused else ''}strided tensor")
        if fused and (w.dtype != first.dtype or w.device != first.device):
            _fail(f"{_OP}: `weights` must share one device and dtype: weights[0] is {first.dtype} on {first.device}, "
                  f"weights[{i}] is {w.dtype} on {w.device} (qkernels.oscillation.regularizer groups a mix)")
    check_bits(bits)


def check_list(weights):
    """What the op's schema cannot take: ``weights`` not a non-empty list (or tuple) of tensors."""
    if isinstance(weights, Tensor) or not isinstance(weights, (list, tuple)) or not weights:
        _fail(f"{_OP}: `weights` must be a non-empty list of tensors, got {type(weights).__name__}"
              + (" (empty)" if isinstance(weights, (list, tuple)) else ""))
    for i, w in enumerate(weights):
        if not isinstance(w, Tensor):
            _fail(f"{_OP}: `weights[{i}]` must be a tensor, got {type(w).__name__}")


def check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        _fail(f"{_OP}: `bits` must be an integer from 2 to 8, got {bits!r}")


def _launchers(weights, bits):
    return backends.select(weights[0], -levels(bits), levels(bits), _FAMILY)


def _forward_impl(weights, bits, scale_grad):
    check(weights, bits)
    device, n = weights[0].device, len(weights)
    amax = torch.empty(n, dtype=torch.float32, device=device)
    sums = torch.empty(n, 2, dtype=torch.float64, device=device)
    ties = torch.empty(n, dtype=torch.int64, device=device)
    launchers = _launchers(weights, bits)
    launchers.amax(weights, amax)
    launchers.sums(weights, amax, bits, sums, ties)
    return sums[:, 0].sum().float(), amax, sums, ties


def _forward_fake(weights, bits, scale_grad):
    check(weights, bits)
    device, n = weights[0].device, len(weights)
    return (torch.empty((), dtype=torch.float32, device=device), torch.empty(n, dtype=torch.float32, device=device),
            torch.empty(n, 2, dtype=torch.float64, device=device), torch.empty(n, dtype=torch.int64, device=device))


def _backward_impl(weights, grad, amax, sums, ties, bits, scale_grad):
    check(weights, bits)
    dw = [torch.empty_like(w) for w in weights]
    _launchers(weights, bits).backward(weights, dw, grad.float(), amax, sums, ties, bits, scale_grad)
    return dw


def _backward_fake(weights, grad, amax, sums, ties, bits, scale_grad):
    return [torch.empty_like(w) for w in weights]


_lib = torch.library.Library("qkernels", "FRAGMENT")
_lib.define("oscillation_regularizer(Tensor[] weights, int bits, bool scale_grad) -> (Tensor, Tensor, Tensor, Tensor)")
_lib.define("oscillation_regularizer_backward(Tensor[] weights, Tensor grad, Tensor amax, Tensor sums, Tensor ties, "
            "int bits, bool scale_grad) -> Tensor[]")
_lib.impl("oscillation_regularizer", _forward_impl, "CompositeExplicitAutograd")
_lib.impl("oscillation_regularizer_backward", _backward_impl, "CompositeExplicitAutograd")
torch.library.register_fake("qkernels::oscillation_regularizer", _forward_fake, lib=_lib)
torch.library.register_fake("qkernels::oscillation_regularizer_backward", _backward_fake, lib=_lib)
_op = torch.ops.qkernels.oscillation_regularizer
_backward_op = torch.ops.qkernels.oscillation_regularizer_backward


class _Regularizer(torch.autograd.Function):
    """The one autograd definition: the two forward passes, the fused backward."""

    @staticmethod
    def forward(ctx, bits, scale_grad, *weights):
        value, amax, sums, ties = _op(list(weights), bits, scale_grad)
        ctx.save_for_backward(*weights, amax, sums, ties)
        ctx.bits, ctx.scale_grad = bits, scale_grad
        return value

    @staticmethod
    def backward(ctx, grad):
        *weights, amax, sums, ties = ctx.saved_tensors
        dw = _backward_op(weights, grad, amax, sums, ties, ctx.bits, ctx.scale_grad)
        return (None, None) + tuple(d if need else None for d, need in zip(dw, ctx.needs_input_grad[2:]))


def oscillation_regularizer(weights: Sequence[Tensor], bits: int, scale_grad: bool = True) -> Tensor:
    """``sum_l mean(q_b(W_l)^2 - W_l^2)`` (float32, 0-dim; see the module docstring), differentiable in every
    weight: ``dW = (2/N)(q - W)`` plus, with ``scale_grad`` (the official code), ``(2/N) S2 / (m c) · sign(W)`` on
    the ``c`` elements at ``m = max|W|``. ``weights``: a non-empty list of contiguous tensors of one device and
    dtype; ``bits`` 2 to 8."""
    check_list(weights)
    return _Regularizer.apply(bits, scale_grad, *weights)
