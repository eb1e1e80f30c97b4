"""Post-training quantization of weights with the max-abs quantizer of Wenshøj et al.'s regularizer: evaluate a
model at any bit width, its float weights restored afterwards (``../shared/research/
wenshoj-oscillation-regularizer.md`` §2, "eval at b'").

    with qkernels.ptq.quantized_weights(model, bits=3):
        accuracy = evaluate(model)                 # every weight s · rne(W / s), s = max|W| / (2^(b-1) - 1)
    # the float weights are back, bit for bit

    q = qkernels.ptq.max_abs_quantize(w, bits=4)   # one tensor

The quantizer is the regularizer's (``qkernels.reference.oscillation_regularizer.quantize``): the same grid, the
same division by ``s`` (not a multiplication by ``1 / s``, which rounds differently in rare ties), so a model
trained with ``qkernels.oscillation.OscillationRegularizer`` at ``b`` bits is evaluated on the grid it was pushed
towards. No calibration data, no clipping, no BatchNorm re-estimation or bias correction, as the official code.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .oscillation import weight_parameters
from .reference.oscillation_regularizer import quantize

__all__ = ["max_abs_quantize", "quantized_weights", "BITS", "FULL_PRECISION"]

BITS = range(2, 9)
FULL_PRECISION = 32  # a ``layer_bits`` value: leave that layer's weight in float


def _check_bits(name: str, bits, allow_full: bool = False):
    if isinstance(bits, bool) or not isinstance(bits, int) or not (bits in BITS or
                                                                   (allow_full and bits == FULL_PRECISION)):
        allowed = "an int from 2 to 8" + (" or 32 (full precision)" if allow_full else "")
        raise ValueError(f"{name}: must be {allowed}, got {bits!r}")


def max_abs_quantize(w: Tensor, bits: int, per_channel: bool = False) -> Tensor:
    """``w`` on the narrow symmetric max-abs grid of ``bits`` bits (2^b − 1 levels; ternary at 2 bits), a new
    tensor of ``w``'s dtype and shape. With ``L = 2^(b−1) − 1``, in float32 (fp16/bf16 widened):

        m = max |w|                 over the whole tensor, or per output channel (``per_channel``: over dims 1..
                                    for each index of dim 0)
        s = m / L
        q = s == 0 ? 0 : rne(w / s) · s        (round half to even; no clamp: |w / s| <= L)

    Per tensor this is ``qkernels.reference.oscillation_regularizer.quantize`` (it calls it). No gradient flows
    (a no-grad evaluation helper)."""
    _check_bits("bits", bits)
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise ValueError(f"w: must be a floating-point tensor, got {getattr(w, 'dtype', type(w).__name__)}")
    if per_channel and w.dim() == 0:
        raise ValueError("w: per_channel needs a tensor with a channel dimension (dim 0), got a 0-dim tensor")
    if w.numel() == 0:
        return w.detach().clone()
    with torch.no_grad():
        wf = w.float()
        if per_channel:
            m = wf.abs().reshape(wf.size(0), -1).amax(1).reshape((-1,) + (1,) * (wf.dim() - 1))
        else:
            m = wf.abs().amax()
        return quantize(wf, m, bits).to(w.dtype)


@contextlib.contextmanager
def quantized_weights(model: nn.Module, bits: int, exclude=(), per_channel: bool = False,
                      include_norms: bool = True, layer_bits: dict | None = None):
    """Within the block, the weights of ``model`` are ``max_abs_quantize(W, bits, per_channel)``; on leaving it
    (also by an exception) they are restored, bit for bit, in place (the same ``Parameter`` objects, so an
    optimizer's references stay valid).

    Which weights: ``qkernels.oscillation.weight_parameters(model, exclude, include_norms)``, the set
    ``OscillationRegularizer`` regularizes (every module's ``weight`` parameter, norm layers' included by
    default as the official code; a parametrized weight by its float original, which the parametrization then
    sees quantized; modules whose qualified name contains an ``exclude`` substring skipped). A parameter shared
    by several modules is quantized once. ``layer_bits``: ``{module name: bits}`` for modules quantized at other
    widths than ``bits`` (2-8, or 32 to leave them in float), e.g. the first and last layer at 8 bits. Every
    argument is checked before any weight changes (ValueError naming it). Yields the ``{module name: bits}``
    actually applied."""
    _check_bits("bits", bits)
    layer_bits = dict(layer_bits or {})
    found = weight_parameters(model, exclude, include_norms)
    unknown = sorted(set(layer_bits) - set(found))
    if unknown:
        raise ValueError(f"layer_bits: no such module among the quantized weights: {', '.join(unknown)} "
                         f"(they are: {', '.join(found)})")
    for name, b in layer_bits.items():
        _check_bits(f"layer_bits[{name!r}]", b, allow_full=True)
    plan, seen = {}, set()
    for name, weight in found.items():
        b = layer_bits.get(name, bits)
        if b == FULL_PRECISION or id(weight) in seen:
            continue
        seen.add(id(weight))
        plan[name] = (weight, b)
    saved = [(weight, weight.detach().clone()) for weight, _ in plan.values()]
    try:
        with torch.no_grad():
            for weight, b in plan.values():
                weight.copy_(max_abs_quantize(weight, b, per_channel))
        yield {name: b for name, (_, b) in plan.items()}
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)
