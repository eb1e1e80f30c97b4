"""Attaching qkernels' fake quantizers to a model: LSQ for QAT, observers for PTQ, max-abs weights for
cross-bit evaluation.

Which tensors are quantized (the setup of Nagel et al.'s code, "LSQ_paper"): every ``Conv2d`` and ``Linear``
quantizes its weight and its input. The first layer's input (the image) is not quantized; the first and last
layers use ``first_last_bits`` for their weights (and the last for its input), 32 meaning full precision;
``abits`` 32 quantizes no input at all (weights only). An input grid is unsigned (``[0, 2^b − 1]``) when the
calibration data feeding it is non-negative (after a ReLU), signed (``[−2^(b−1), 2^(b−1) − 1]``) otherwise;
weight grids are signed. Zero points are 0. With ``gbits`` below 32 every layer's output gradient is quantized
too (Kim et al. 2024), the first and last layer's at ``first_last_bits``.

Layers are visited in registration order, so the first and last registered ``Conv2d``/``Linear`` are taken as
the first and last layers: ``qkernels.train.models`` registers submodules in the order forward uses them.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

import qkernels
from qkernels.nn import FakeQuantize, GradientQuantizer, LearnableFakeQuantize, OscillationFakeQuantize
from qkernels.oscillation import float_copy, initial_scale

from .config import FULL_PRECISION

__all__ = ["QuantizedLayer", "quantize_model", "quantizer_parameters", "ptq_model", "quantize_weights_max_abs",
           "weights_max_abs", "quantized_layers", "gradient_quantizers", "initial_scale", "float_weights_copy",
           "max_abs_layer_bits"]

class QuantizedLayer(nn.Module):
    """A ``Conv2d`` or ``Linear`` computing ``grad_quantizer(layer(input_quantizer(x)))`` with
    ``weight_quantizer(W)`` for its weight; ``grad_quantizer`` (a ``qkernels.nn.GradientQuantizer``) is the
    identity forward and quantizes the output's gradient, from which the backward computes both dX and dW. A
    missing quantizer (full precision) is ``nn.Identity``. The float weight stays ``layer.weight``."""

    def __init__(self, layer: nn.Module, weight_quantizer: nn.Module | None = None,
                 input_quantizer: nn.Module | None = None, grad_quantizer: nn.Module | None = None):
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"layer: QuantizedLayer wraps nn.Conv2d or nn.Linear, got {type(layer).__name__}")
        self.layer = layer
        self.weight_quantizer = weight_quantizer or nn.Identity()
        self.input_quantizer = input_quantizer or nn.Identity()
        self.grad_quantizer = grad_quantizer or nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_quantizer(x)
        w = self.weight_quantizer(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            return self.grad_quantizer(self.layer._conv_forward(x, w, self.layer.bias))
        return self.grad_quantizer(F.linear(x, w, self.layer.bias))


def quantized_layers(model: nn.Module) -> list:
    """``(name, module)`` of every ``Conv2d``/``Linear`` (bare or inside a ``QuantizedLayer``, which is then
    listed instead), in registration order."""
    found, inside = [], set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, QuantizedLayer):
            found.append((name, module))
            inside.add(name + ".")
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            found.append((name, module))
    if not found:
        raise ValueError("model: has no nn.Conv2d or nn.Linear layer to quantize")
    return found


def _replace(model: nn.Module, name: str, new: nn.Module):
    if not name:
        raise ValueError("model: is itself a single layer; wrap it in a container module")
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _signed_range(bits: int) -> tuple:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _unsigned_range(bits: int) -> tuple:
    return 0, (1 << bits) - 1


def _layer_bits(index: int, count: int, wbits: int, abits: int, first_last_bits: int) -> tuple:
    """(weight bits, input bits) of layer ``index`` of ``count``; input bits None for the first layer, and for
    every layer when ``abits`` is 32 (weights-only quantization: no input is quantized, the last's neither)."""
    first, last = index == 0, index == count - 1
    weight = first_last_bits if first or last else wbits
    inputs = None if first or abits == FULL_PRECISION else (first_last_bits if last else abits)
    return weight, inputs


def _capture_inputs(model: nn.Module, batches) -> dict:
    """The input of every layer of ``quantized_layers(model)``, concatenated over ``batches`` (eval mode, no
    grad; the model's training mode is restored)."""
    captured, hooks = {}, []
    for name, module in quantized_layers(model):
        hooks.append(module.register_forward_pre_hook(
            lambda mod, args, name=name: captured.setdefault(name, []).append(args[0].detach())))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in captured.items()}


def _lsq_quantizer(x: Tensor, bits: int, signed: bool, per_channel: bool, scale_init: str,
                   grad_scaling: bool) -> LearnableFakeQuantize:
    """A learnable (LSQ) quantizer for ``x``'s tensor, its scale initialized from ``x``, learning on; the zero
    point stays 0 (not learned)."""
    qmin, qmax = _signed_range(bits) if signed else _unsigned_range(bits)
    dtype = torch.qint8 if signed else torch.quint8
    if per_channel:
        quantizer = LearnableFakeQuantize(MovingAveragePerChannelMinMaxObserver, qmin, qmax,
                                          channel_len=x.shape[0], use_grad_scaling=grad_scaling, dtype=dtype,
                                          qscheme=torch.per_channel_symmetric, ch_axis=0)
    else:
        qscheme = torch.per_tensor_symmetric if signed else torch.per_tensor_affine
        quantizer = LearnableFakeQuantize(MovingAverageMinMaxObserver, qmin, qmax, use_grad_scaling=grad_scaling,
                                          dtype=dtype, qscheme=qscheme)
    with torch.no_grad():
        quantizer.scale.copy_(initial_scale(x, qmin, qmax, scale_init, per_channel))
    quantizer.enable_param_learning()
    quantizer.zero_point.requires_grad_(False)
    return quantizer.to(x.device)


def quantize_model(model: nn.Module, calibration: Tensor, wbits: int, abits: int, *, first_last_bits: int = 8,
                   per_channel: bool = False, scale_init: str = "mse", grad_scaling: bool = False,
                   weights: bool = True, gbits: int = FULL_PRECISION,
                   grad_quantizer: dict | None = None) -> nn.Module:
    """Attaches LSQ quantizers (``qkernels.nn.LearnableFakeQuantize``) to ``model`` in place, and returns it.

    Every ``Conv2d``/``Linear`` becomes a ``QuantizedLayer`` (see the module docstring for which tensors, at
    which bits and on which grid). Weight quantizers are symmetric, per tensor or per output channel
    (``per_channel``); input quantizers per tensor. Scales start from ``scale_init`` (``"mse"`` or
    ``"minmax"``, see ``initial_scale``) on the weights and on the layers' inputs for the ``calibration``
    batch ([B, ...], run through the float model in eval mode). Scales are then ``nn.Parameter``s that
    train with the model (put them in their own optimizer with ``quantizer_parameters``). ``grad_scaling``:
    LSQ's gradient scale ``1 / sqrt(numel · qmax)`` (off by default, as in Nagel et al.'s released runs; an
    input's numel counts the batch of each process, so it changes with the number of processes).
    ``weights=False``: no weight quantizers (inputs only; ``qkernels.oscillation.attach`` puts Nagel et al.'s
    on the weights). ``gbits`` 2-8: a ``qkernels.nn.GradientQuantizer`` on each layer's output gradient at
    ``gbits`` (first and last layer at ``first_last_bits``, 32 = none), built with the keyword arguments
    ``grad_quantizer`` (``interval``, ``clip_ratio``, ...)."""
    layers = quantized_layers(model)
    if any(isinstance(module, QuantizedLayer) for _, module in layers):
        raise ValueError("model: is already quantized")
    inputs = _capture_inputs(model, [calibration])
    for index, (name, layer) in enumerate(layers):
        weight_bits, input_bits = _layer_bits(index, len(layers), wbits, abits, first_last_bits)
        grad_bits = FULL_PRECISION if gbits == FULL_PRECISION else _layer_bits(
            index, len(layers), gbits, gbits, first_last_bits)[0]
        grad_q = None if grad_bits == FULL_PRECISION else GradientQuantizer(
            grad_bits, **(grad_quantizer or {})).to(calibration.device)
        weight_q = None if weight_bits == FULL_PRECISION or not weights else _lsq_quantizer(
            layer.weight.detach(), weight_bits, True, per_channel, scale_init, grad_scaling)
        input_q = None
        if input_bits is not None and input_bits != FULL_PRECISION:
            x = inputs[name]
            input_q = _lsq_quantizer(x, input_bits, bool((x < 0).any()), False, scale_init, grad_scaling)
        _replace(model, name, QuantizedLayer(layer, weight_q, input_q, grad_q))
    return model


def gradient_quantizers(model: nn.Module) -> dict:
    """``{layer name: its GradientQuantizer}`` of a ``quantize_model``-ed model (``gbits`` below 32), in
    registration order."""
    return {name: module.grad_quantizer for name, module in quantized_layers(model)
            if isinstance(module, QuantizedLayer) and isinstance(module.grad_quantizer, GradientQuantizer)}


def quantizer_parameters(model: nn.Module) -> list:
    """The learnable quantizer parameters (LSQ scales, oscillation quantizers' too) of ``model``, for a separate
    optimizer."""
    return [p for m in model.modules() if isinstance(m, (LearnableFakeQuantize, OscillationFakeQuantize))
            for p in m.parameters(recurse=False) if p.requires_grad]


def weights_max_abs(w: Tensor, bits: int, per_channel: bool = False) -> Tensor:
    """Round-to-nearest max-abs weights: ``s · round(w / s)`` with ``L = 2^(b−1) − 1`` and ``s = max|w| / L``
    per tensor (or per output channel), half to even; 2^b − 1 levels (ternary at 2 bits), nothing clipped. An
    all-zero tensor stays zero. This is ``qkernels.ptq.max_abs_quantize``, the package's one max-abs quantizer
    (the oscillation regularizer's: a division by ``s``)."""
    return qkernels.ptq.max_abs_quantize(w, bits, per_channel)


def float_weights_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its float weights and no weight quantizers (``attach``'s parametrizations and
    ``QuantizedLayer``'s weight quantizers removed); input quantizers stay as they are."""
    model = float_copy(model)
    for module in model.modules():
        if isinstance(module, QuantizedLayer):
            module.weight_quantizer = nn.Identity()
    return model


def max_abs_layer_bits(model: nn.Module, bits: int, first_last_bits: int = 8) -> dict:
    """``{module name: bits}`` for every weight ``qkernels.oscillation.weight_parameters(model,
    include_norms=False)`` finds: each ``Conv2d``/``Linear`` at ``bits``, the first and last (registration
    order) at ``first_last_bits``, any other (none in the harness's models) at 32 = left in float. The one rule
    for which weight gets which width in the cross-bit evaluation (``layer_bits`` of
    ``qkernels.ptq.quantized_weights``), ``quantize_weights_max_abs`` and the ``oscreg`` regularizer, the same
    as QAT's (``quantize_model``); norm layers' weights are never quantized, as in QAT."""
    layers = [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    found = {name: FULL_PRECISION for name in qkernels.oscillation.weight_parameters(model, include_norms=False)}
    for index, name in enumerate(layers):
        found[name], _ = _layer_bits(index, len(layers), bits, bits, first_last_bits)
    return found


def quantize_weights_max_abs(model: nn.Module, bits: int, *, first_last_bits: int = 8,
                             per_channel: bool = False) -> nn.Module:
    """A copy of ``model`` (``float_weights_copy``) whose ``Conv2d``/``Linear`` weights are ``weights_max_abs``
    at ``bits`` (first and last layer at ``first_last_bits``, 32 = unchanged: ``max_abs_layer_bits``); input
    quantizers stay as they are. The PTQ of a model's weights; the same weights as
    ``qkernels.ptq.quantized_weights(model, bits, include_norms=False, layer_bits=max_abs_layer_bits(...))``."""
    model = float_weights_copy(model)
    layer_bits = max_abs_layer_bits(model, bits, first_last_bits)
    for name, weight in qkernels.oscillation.weight_parameters(model, include_norms=False).items():
        if layer_bits[name] != FULL_PRECISION:
            weight.data = weights_max_abs(weight.detach(), layer_bits[name], per_channel)
    return model


def _observed_quantizer(x: Tensor, bits: int) -> FakeQuantize:
    signed = bool((x < 0).any())
    qmin, qmax = _signed_range(bits) if signed else _unsigned_range(bits)
    return FakeQuantize(MovingAverageMinMaxObserver, quant_min=qmin, quant_max=qmax,
                        dtype=torch.qint8 if signed else torch.quint8,
                        qscheme=torch.per_tensor_symmetric if signed else torch.per_tensor_affine).to(x.device)


def ptq_model(model: nn.Module, calibration: list, wbits: int, abits: int, *, first_last_bits: int = 8,
              per_channel: bool = False) -> nn.Module:
    """Post-training quantization of a float ``model`` (a new model, eval mode): weights
    ``weights_max_abs`` at ``wbits``, layer inputs through ``qkernels.nn.FakeQuantize`` with torch.ao's
    moving-average min/max observer (averaging constant 0.01), calibrated on the ``calibration`` batches
    (observers on, fake quantization off), then frozen. Bits per layer as ``quantize_model``."""
    model = copy.deepcopy(model)
    layers = quantized_layers(model)
    if any(isinstance(module, QuantizedLayer) for _, module in layers):
        raise ValueError("model: ptq_model takes a float model; this one is already quantized")
    inputs = _capture_inputs(model, calibration)
    for index, (name, layer) in enumerate(layers):
        _, input_bits = _layer_bits(index, len(layers), wbits, abits, first_last_bits)
        observed = None if input_bits in (None, FULL_PRECISION) else _observed_quantizer(inputs[name], input_bits)
        _replace(model, name, QuantizedLayer(layer, None, observed))
    model.eval()
    observers = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    for observer in observers:
        observer.disable_fake_quant()
        observer.enable_observer()
    with torch.no_grad():
        for batch in calibration:
            model(batch)
    for observer in observers:
        observer.enable_fake_quant()
        observer.disable_observer()
    return quantize_weights_max_abs(model, wbits, first_last_bits=first_last_bits, per_channel=per_channel)
