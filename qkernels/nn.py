"""torch.ao-compatible fake-quant modules that run on qkernels and compile with ``fullgraph=True``.

``FakeQuantize``, ``FusedMovingAvgObsFakeQuantize`` and ``LearnableFakeQuantize`` subclass torch.ao's
``FakeQuantize``, ``FusedMovingAvgObsFakeQuantize`` and ``_LearnableFakeQuantize``: the same constructor
arguments, methods (``enable_fake_quant``, ``disable_observer``, ``with_args``, ``calculate_qparams``, ...),
buffers, parameters and state-dict keys, dtypes and shapes, so checkpoints load both ways and
``isinstance`` checks in torch.ao keep working. Only ``forward`` is new: it is defined here, outside
``torch.ao`` (which Dynamo does not trace), and under compile/export or on CUDA tensors it has no Python
branch on buffer values: the enable flags are read on the device by the ops
(``qkernels.fused_moving_avg_obs_fake_quant`` and the learnable ops). On CPU tensors in eager mode the
fake-quant flag is read on the host (``fake_quant._host_flag``: no sync there, and no costly ``where``).

Observers: ``MovingAverageMinMaxObserver`` and ``MovingAveragePerChannelMinMaxObserver`` (what torch.ao's
default QAT qconfigs use); other observers, float qparams and dynamic quantization raise at construction.
Numbers: ``FakeQuantize`` equals torch.ao's unfused module (``qparams="observer"``),
``FusedMovingAvgObsFakeQuantize`` torch's fused op, ``LearnableFakeQuantize`` torch.ao's learnable module,
bit for bit in the outputs and buffers (the learnable qparam gradients up to summation order).

``OscillationFakeQuantize`` (no torch.ao counterpart) is LSQ weight fake quantization with Nagel et al.'s
oscillation tracking and freezing (``qkernels.oscillation_fake_quantize``); see its docstring.

Per-channel running stats start empty, as in torch.ao (the observer's ``min_val``/``max_val`` have no elements
until its first call gives it the channel count): run one eager forward step (or load a state dict) before
``torch.compile``. Compiling (or exporting) a module whose per-channel stats are still empty raises
``EmptyRunningStatsError`` (a ``RuntimeError``) saying so, with or without ``fullgraph``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.ao.quantization import fake_quantize as _ao_fq
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

from .fused_observer import fused_moving_avg_obs_fake_quant, observer_update
from .fake_quant import _host_flag
from .oscillation_fake_quant import OscillationState, new_oscillation_state, oscillation_fake_quantize
from .grad_quant import (GRANULARITIES, INITS, ROUNDINGS, _call as _quantize_gradient_call, initial_clip_ratio,
                         update_clip_ratio)
from .fake_quant_learnable import (
    fake_quantize_learnable_per_channel_affine,
    fake_quantize_learnable_per_tensor_affine,
    lsq_grad_factor,
)

# (and EmptyRunningStatsError, made on first access: module __getattr__ below)
__all__ = ["FakeQuantize", "FusedMovingAvgObsFakeQuantize", "LearnableFakeQuantize", "OscillationFakeQuantize",
           "GradientQuantizer", "LSQQuantizer", "QuantLinear", "QuantConv2d", "quantize_layers"]

_SUPPORTED = (MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver)
_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)


def _setup(module: torch.nn.Module):
    """Checks the observer, and caches its eps as a Python float (refreshed when a state dict is loaded):
    reading the buffer in forward would be a data-dependent ``.item()`` under compile."""
    _check_observer(module)
    module._observer_eps = float(module.activation_post_process.eps)

    def refresh(mod, incompatible_keys):
        mod._observer_eps = float(mod.activation_post_process.eps)

    module.register_load_state_dict_post_hook(refresh)


def _check_observer(module: torch.nn.Module):
    obs = module.activation_post_process
    if not isinstance(obs, _SUPPORTED):
        raise ValueError(f"qkernels.nn.{type(module).__name__} needs a MovingAverageMinMaxObserver or "
                         f"MovingAveragePerChannelMinMaxObserver, got {type(obs).__name__}")
    if obs.qscheme == torch.per_channel_affine_float_qparams or getattr(obs, "is_dynamic", False):
        raise ValueError(f"qkernels.nn.{type(module).__name__} does not support float qparams or dynamic "
                         f"quantization (qscheme {obs.qscheme})")


def _symmetric_zero_point(obs) -> int:
    """The zero point torch.ao's observers give symmetric schemes (observer.py, _calculate_qparams)."""
    if obs.dtype in (torch.quint8, torch.uint8):
        return (obs.quant_min + obs.quant_max) // 2 if obs.has_customized_qrange else 128
    if obs.dtype == torch.uint16:
        return 2**15
    return 0


def _observer_args(module, x: Tensor, observer_on: Tensor, fake_quant_on: Tensor, scale: Tensor,
                   zero_point: Tensor):
    """The arguments of fused_moving_avg_obs_fake_quant / observer_update for this module's observer."""
    obs = module.activation_post_process
    return (x, observer_on, fake_quant_on, obs.min_val, obs.max_val, scale, zero_point, obs.averaging_constant,
            obs.quant_min, obs.quant_max, module.ch_axis if module.is_per_channel else 0, module.is_per_channel,
            obs.qscheme in _SYMMETRIC)


@functools.cache
def _empty_stats_error_class() -> type:
    """``EmptyRunningStatsError``, made on first use: it subclasses Dynamo's ``UserError`` (a ``RuntimeError``),
    which Dynamo raises to the caller as it is rather than wrapping it, and importing ``torch._dynamo`` costs
    about a second, which ``import qkernels.nn`` does not pay (it is already imported whenever this is raised)."""
    from torch._dynamo.exc import UserError, UserErrorType

    class EmptyRunningStatsError(UserError):
        """A qkernels.nn module with empty per-channel running stats was compiled or exported."""

        def __init__(self, msg: str):
            super().__init__(UserErrorType.INVALID_INPUT, msg)

    EmptyRunningStatsError.__module__ = __name__
    return EmptyRunningStatsError


def __getattr__(name: str):
    if name == "EmptyRunningStatsError":
        return _empty_stats_error_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _raise_empty_stats(module_name: str) -> bool:
    raise _empty_stats_error_class()(
        f"qkernels.nn.{module_name}: the per-channel running stats are empty (torch.ao's per-channel observer "
        "sizes them on its first call, which cannot happen while compiling): run one eager forward step, or "
        "load a state dict, before torch.compile or torch.export")


# What torch.compiler.assume_constant_result(_raise_empty_stats) does, without importing torch._dynamo here (about
# a second): Dynamo calls the function itself while tracing instead of tracing it, so our error reaches the caller
# rather than being reported as an exception observed in the traced code (tests/test_nn.py checks both).
_raise_empty_stats._dynamo_marked_constant = True


def _check_stats_sized(module) -> None:
    """Under compile/export, raises EmptyRunningStatsError if the per-channel observer was never run (the
    check is on static buffer sizes: nothing in the compiled graph). In eager mode the first call sizes them."""
    if torch.compiler.is_compiling() and module.is_per_channel:
        obs = module.activation_post_process
        if obs.min_val.numel() == 0 or obs.max_val.numel() == 0:
            _raise_empty_stats(type(module).__name__)


def _observer_options(module, qparams: str) -> dict:
    obs = module.activation_post_process
    return dict(qparams=qparams, eps=module._observer_eps, symmetric_zero_point=_symmetric_zero_point(obs))


class FakeQuantize(_ao_fq.FakeQuantize):
    """torch.ao's ``FakeQuantize`` (moving-average observers) on qkernels: the same numbers as the unfused
    torch.ao module, with the observer step and the flags on the device."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _setup(self)

    def forward(self, X: Tensor) -> Tensor:
        _check_stats_sized(self)
        return fused_moving_avg_obs_fake_quant(
            *_observer_args(self, X, self.observer_enabled, self.fake_quant_enabled, self.scale, self.zero_point),
            **_observer_options(self, "observer"))


class FusedMovingAvgObsFakeQuantize(_ao_fq.FusedMovingAvgObsFakeQuantize):
    """torch.ao's ``FusedMovingAvgObsFakeQuantize`` on qkernels (torch's fused op's numbers), also for fp16/bf16
    inputs and any ``ch_axis``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _setup(self)

    def forward(self, X: Tensor) -> Tensor:
        _check_stats_sized(self)
        return fused_moving_avg_obs_fake_quant(
            *_observer_args(self, X, self.observer_enabled, self.fake_quant_enabled, self.scale, self.zero_point),
            **_observer_options(self, "fused"))


class LearnableFakeQuantize(_LearnableFakeQuantize):
    """torch.ao's ``_LearnableFakeQuantize`` (LSQ) on qkernels. ``static_enabled`` observes and copies the
    observer's qparams into the parameters; otherwise the scale is clamped to ``eps``; ``fake_quant_enabled``
    applies the learnable op (symmetric schemes zero the zero point first)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _setup(self)
        self.is_per_channel = self.activation_post_process.qscheme in (torch.per_channel_symmetric,
                                                                       torch.per_channel_affine)

    def forward(self, X: Tensor) -> Tensor:
        _check_stats_sized(self)
        obs = self.activation_post_process
        static = self.static_enabled.reshape(()) != 0
        fake_quant = self.fake_quant_enabled.reshape(()) != 0
        with torch.no_grad():
            # The observer's qparams, as int32, land in the parameters only while static estimation is on.
            observed_scale = self.scale.detach().clone()
            observed_zp = self.zero_point.detach().round().to(torch.int32)
            observer_update(*_observer_args(self, X.detach(), self.static_enabled, self.static_enabled,
                                            observed_scale, observed_zp), **_observer_options(self, "observer"))
            self.scale.copy_(torch.where(static, observed_scale, self.scale.clamp(min=self.eps)))
            self.zero_point.copy_(torch.where(static, observed_zp.to(self.zero_point.dtype), self.zero_point))
            if obs.qscheme in _SYMMETRIC:
                self.zero_point.copy_(torch.where(fake_quant, torch.zeros_like(self.zero_point), self.zero_point))
        on = _host_flag(self.fake_quant_enabled, X)
        if on is False:  # torch.ao returns X itself
            return X
        grad_factor = lsq_grad_factor(X.numel(), self.quant_max) if self.use_grad_scaling else 1.0
        if self.is_per_channel:
            y = fake_quantize_learnable_per_channel_affine(X, self.scale, self.zero_point, self.ch_axis,
                                                           self.quant_min, self.quant_max, grad_factor)
        else:
            y = fake_quantize_learnable_per_tensor_affine(X, self.scale, self.zero_point, self.quant_min,
                                                          self.quant_max, grad_factor)
        return y if on else torch.where(fake_quant, y, X)


_STATE_NAMES = OscillationState._fields
SCALE_EPS = 1e-8  # the least scale (Nagel et al.'s code)


class OscillationFakeQuantize(torch.nn.Module):
    """LSQ weight fake quantization with oscillation tracking and freezing (Nagel et al. 2022, the official
    code's semantics): ``module(w)`` returns ``s · (x − z)`` with ``x = clamp(rne(w / s) + z, qmin, qmax)``, or
    the frozen integer where an element is frozen, and updates the per-element state while tracking
    (``qkernels.oscillation_fake_quantize``; gradients to ``w`` (straight-through inside the range, 0 where
    frozen) and to ``scale`` (LSQ)).

    Parameters and buffers: ``scale`` (learned, ``[1]``, or ``[channels]`` along ``ch_axis``), ``zero_point``
    (int32, same shape, not learned), the state ``prev_x_int``, ``prev_switch_dir``, ``ema_oscillation``,
    ``frozen``, ``frozen_x_int``, ``ema_x_int`` (each the weight's shape), ``started`` (uint8 [2]) and
    ``num_oscillations`` (int64 [2]: total, last call) (``qkernels.OscillationState``), and
    ``freeze_threshold`` (float32, 0-dim; ``module.freeze_threshold = 0.05`` fills it in place, no host sync;
    ≤ 0: no freezing). The per-weight state is sized from the first weight the module sees, from
    ``weight_shape`` at construction, or from a loaded state dict; it must be sized before ``torch.compile``.

    Each call first clamps ``scale`` in place to at least ``SCALE_EPS`` (1e-8, as the official code's
    ``max(scale, 1e-8)``). Tracking is on in training mode and, with ``track_in_eval`` (default, as the
    official code, whose eval passes are tracked), in eval mode too; ``track=False`` never tracks (a plain
    LSQ quantizer that still applies frozen integers). The flag is a device tensor set by
    ``train()``/``eval()``: nothing is read on the host in ``forward``. ``momentum`` is the EMA momentum ``m``
    (in (0, 1]); ``use_ema_x_int`` freezes to ``rint(ema_x_int)`` (else to the current integer);
    ``grad_scaling`` multiplies the scale gradient by LSQ's ``1 / sqrt(N · qmax)`` (N: elements per scale)."""

    def __init__(self, quant_min: int, quant_max: int, momentum: float = 1e-3, freeze_threshold: float = 0.0,
                 use_ema_x_int: bool = True, track_in_eval: bool = True, ch_axis: int | None = None,
                 channels: int | None = None, scale=1.0, zero_point: int = 0, grad_scaling: bool = False,
                 track: bool = True, weight_shape=None):
        super().__init__()
        if not -128 <= quant_min <= 0 <= quant_max <= 127:
            raise ValueError(f"quant_min, quant_max: the range must contain 0 and fit int8, got "
                             f"[{quant_min}, {quant_max}]")
        if not (isinstance(momentum, (int, float)) and 0.0 < momentum <= 1.0):
            raise ValueError(f"momentum: must be in (0, 1], got {momentum!r}")
        if (ch_axis is None) != (channels is None):
            raise ValueError(f"ch_axis, channels: give both (per channel) or neither (per tensor), got "
                             f"{ch_axis!r}, {channels!r}")
        if channels is not None and not (isinstance(channels, int) and channels > 0):
            raise ValueError(f"channels: must be a positive int, got {channels!r}")
        if not quant_min <= zero_point <= quant_max:
            raise ValueError(f"zero_point: must be in [{quant_min}, {quant_max}], got {zero_point!r}")
        self.quant_min, self.quant_max, self.momentum = quant_min, quant_max, float(momentum)
        self.use_ema_x_int, self.ch_axis, self.grad_scaling = bool(use_ema_x_int), ch_axis, bool(grad_scaling)
        shape = (1,) if channels is None else (channels,)
        initial = torch.as_tensor(scale, dtype=torch.float32).detach()
        if initial.numel() not in (1, shape[0]) or not bool((initial > 0).all()):
            raise ValueError(f"scale: must be positive, one value or {shape[0]}, got {scale!r}")
        self.scale = torch.nn.Parameter(initial.reshape(-1).expand(shape).clone())
        self.register_buffer("zero_point", torch.full(shape, zero_point, dtype=torch.int32))
        for name, tensor in zip(_STATE_NAMES, new_oscillation_state(torch.empty(0))):
            self.register_buffer(name, tensor)
        self.register_buffer("freeze_threshold", torch.zeros((), dtype=torch.float32))
        self.register_buffer("_tracking_flag", torch.ones((), dtype=torch.uint8), persistent=False)
        self.register_buffer("_tracking_off", torch.zeros((), dtype=torch.uint8), persistent=False)
        self.track, self.track_in_eval = bool(track), bool(track_in_eval)
        self.freeze_threshold = freeze_threshold
        if weight_shape is not None:
            self._size_state(torch.empty(weight_shape, device=self.scale.device))

    def __setattr__(self, name, value):
        if name == "freeze_threshold" and "freeze_threshold" in self.__dict__.get("_buffers", {}):
            if isinstance(value, Tensor):
                self._buffers["freeze_threshold"].copy_(value.detach().reshape(()))
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                self._buffers["freeze_threshold"].fill_(float(value))
            else:
                raise ValueError(f"freeze_threshold: must be a float >= 0 or a 0-dim tensor, got {value!r}")
            return
        super().__setattr__(name, value)
        if name in ("track", "track_in_eval") and "_tracking_flag" in self._buffers:
            self._update_tracking_flag()

    def _update_tracking_flag(self):
        self._tracking_flag.fill_(int(self.track and (self.training or self.track_in_eval)))

    def train(self, mode: bool = True):
        super().train(mode)
        self._update_tracking_flag()
        return self

    @property
    def state(self) -> OscillationState:
        """The state buffers as a ``qkernels.OscillationState`` (the tensors themselves, not copies)."""
        return OscillationState(*(getattr(self, name) for name in _STATE_NAMES))

    def _size_state(self, weight: Tensor):
        for name, tensor in zip(_STATE_NAMES, new_oscillation_state(weight)):
            self._buffers[name] = tensor.to(self._buffers[name].device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        saved = state_dict.get(prefix + "prev_x_int")
        if isinstance(saved, Tensor) and saved.shape != self.prev_x_int.shape:
            self._size_state(torch.empty(saved.shape, device=self.prev_x_int.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, weight: Tensor, *, track: bool = True) -> Tensor:
        """The fake-quantized ``weight`` (its shape and dtype); ``track=False``: this call never tracks (the
        dampening target)."""
        if self.prev_x_int.shape != weight.shape:
            if self.prev_x_int.shape != (0,):
                raise ValueError(f"weight: shape {tuple(weight.shape)}, but the state was sized for "
                                 f"{tuple(self.prev_x_int.shape)}")
            if torch.compiler.is_compiling():
                raise RuntimeError("qkernels.nn.OscillationFakeQuantize: the state is not sized for this weight: "
                                   "run one eager call, pass weight_shape, or load a state dict before "
                                   "torch.compile")
            self._size_state(weight)
        with torch.no_grad():  # the official code uses max(scale, 1e-8); clamping the parameter lets it recover
            self.scale.clamp_(min=SCALE_EPS)
        grad_factor = 1.0
        if self.grad_scaling:
            per_scale = weight.numel() // self.scale.numel()
            grad_factor = lsq_grad_factor(max(per_scale, 1), self.quant_max)
        return oscillation_fake_quantize(
            weight, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max, self.state,
            freeze_threshold=self.freeze_threshold, tracking=self._tracking_flag if track else self._tracking_off,
            momentum=self.momentum, use_ema_x_int=self.use_ema_x_int, grad_factor=grad_factor)

    def extra_repr(self) -> str:
        axis = "" if self.ch_axis is None else f", ch_axis={self.ch_axis}, channels={self.scale.numel()}"
        return (f"quant_min={self.quant_min}, quant_max={self.quant_max}, momentum={self.momentum}{axis}, "
                f"use_ema_x_int={self.use_ema_x_int}, track={self.track}, track_in_eval={self.track_in_eval}")


class _QuantizeGradient(torch.autograd.Function):
    """Identity forward; the backward quantizes the incoming gradient and then updates the quantizer's interval."""

    @staticmethod
    def forward(ctx, x, quantizer):
        ctx.quantizer = quantizer
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.quantizer._quantize(grad), None


class _InitOnFirstCall(torch.nn.Module):
    """A module initialized from its first input: the ``initialized`` buffer (saved in state dicts) and
    ``_pending_init``, its host mirror (reading the buffer each call would sync), kept in step on loading."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._pending_init = not bool(self.initialized)


class GradientQuantizer(_InitOnFirstCall):
    """Identity in the forward pass; quantizes the gradient flowing back through it (Kim et al. 2024, the released
    code's ``grad_quant`` on a conv output): ``qkernels.quantize_gradient(grad, bits, clip_ratio, rounding,
    granularity, group_size)``, then, with ``interval="adaptive"``, ``qkernels.grad_quant.update_clip_ratio`` on
    the clip ratio γ (the ``clip_ratio`` buffer, float32, saved in state dicts) from that gradient's clipped count
    (``alpha``, ``eta``, ``gamma_min``, ``gamma_max``: the released code's defaults); the update runs on the
    device. The first gradient of an adaptive quantizer sets γ with ``initial_clip_ratio(grad, bits, init)``
    (``"lbt"``, the released loop, default; ``"quantile"``; ``"none"``: keep ``clip_ratio``) before it is
    quantized (under ``torch.distributed``, the mean of the ranks' γ); ``initialized`` (a buffer) records that.
    ``interval="fixed"``: γ stays ``clip_ratio`` (1 is per tensor min-max). ``bits`` 32 passes gradients through
    unchanged.

    The released code quantizes the gradient of the whole tensor at once with its current γ, and counts the
    clipped values of that same quantization, as this module does."""

    def __init__(self, bits: int = 4, rounding: str = "stochastic", interval: str = "adaptive",
                 clip_ratio: float = 1.0, granularity: str = "tensor", group_size=None, init: str = "lbt",
                 alpha: float = 1e-3, eta: float = 1e-3, gamma_min: float = 1e-3, gamma_max: float = 1.0):
        super().__init__()
        if bits != 32 and (isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8):
            raise ValueError(f"bits: must be 2 to 8, or 32 (full precision), got {bits!r}")
        if interval not in ("adaptive", "fixed"):
            raise ValueError(f"interval: must be 'adaptive' or 'fixed', got {interval!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding: must be one of {ROUNDINGS}, got {rounding!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity: must be one of {GRANULARITIES}, got {granularity!r}")
        if init not in INITS:
            raise ValueError(f"init: must be one of {INITS}, got {init!r}")
        if isinstance(clip_ratio, bool) or not isinstance(clip_ratio, (int, float)) or not 0 < clip_ratio <= 1:
            raise ValueError(f"clip_ratio: must be in (0, 1], got {clip_ratio!r}")
        if not 0 < gamma_min <= gamma_max <= 1:
            raise ValueError(f"gamma_min, gamma_max: must satisfy 0 < gamma_min <= gamma_max <= 1, got "
                             f"{gamma_min}, {gamma_max}")
        self.bits, self.rounding, self.interval = bits, rounding, interval
        self.granularity, self.group_size, self.init = granularity, group_size, init
        self.alpha, self.eta, self.gamma_min, self.gamma_max = alpha, eta, gamma_min, gamma_max
        self.register_buffer("clip_ratio", torch.tensor(float(clip_ratio)))
        self.register_buffer("initialized", torch.tensor(interval == "fixed" or init == "none"))
        self._pending_init = not bool(self.initialized)

    def forward(self, x: Tensor) -> Tensor:
        if self.bits == 32 or not torch.is_grad_enabled() or not x.requires_grad:
            return x
        return _QuantizeGradient.apply(x, self)

    def _quantize(self, grad: Tensor) -> Tensor:
        if self._pending_init:  # the first gradient only
            with torch.no_grad():
                self.clip_ratio.fill_(initial_clip_ratio(grad, self.bits, self.init, self.alpha))
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    # each rank saw its own share of the batch; the mean keeps γ the same on every rank
                    torch.distributed.all_reduce(self.clip_ratio)
                    self.clip_ratio.div_(torch.distributed.get_world_size())
                self.initialized.fill_(True)
            self._pending_init = False
        out, _, n_clipped, amax = _quantize_gradient_call("GradientQuantizer", grad, self.bits, self.clip_ratio,
                                                          self.rounding, self.granularity, self.group_size, None,
                                                          packed=False)
        if self.interval == "adaptive":
            update_clip_ratio(self.clip_ratio, n_clipped, grad.numel(), amax, self.bits, self.alpha, self.eta,
                              self.gamma_min, self.gamma_max)
        return out

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, rounding={self.rounding!r}, interval={self.interval!r}, "
                f"granularity={self.granularity!r}, init={self.init!r}")


class LSQQuantizer(_InitOnFirstCall):
    """LSQ on the package's learnable op, per tensor, for ``QuantLinear``/``QuantConv2d``: ``y = s · (clamp(rne(x
    / s), qmin, qmax))`` with a learned ``scale`` (zero point 0), ``signed`` (weights: ``[−(2^(b−1) − 1),
    2^(b−1) − 1]``, 2^b − 1 levels as the released code's) or unsigned (activations after a ReLU: ``[0, 2^b −
    1]``), LSQ's gradient scale. The scale starts, at the first call, from that tensor: ``2 · mean|x| /
    sqrt(qmax)`` (LSQ's initialisation); ``initialized`` records it (a host mirror avoids a sync per call)."""

    def __init__(self, bits: int, signed: bool):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits: must be 2 to 8, got {bits!r}")
        self.bits, self.signed = bits, signed
        self.quant_max = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        self.quant_min = -self.quant_max if signed else 0
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))
        self.register_buffer("initialized", torch.tensor(False))
        self._pending_init = True

    def forward(self, x: Tensor) -> Tensor:
        if self._pending_init:
            with torch.no_grad():
                self.scale.fill_(float(2 * x.detach().abs().mean() / self.quant_max ** 0.5) or 1.0)
                self.initialized.fill_(True)
            self._pending_init = False
        return fake_quantize_learnable_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min,
                                                         self.quant_max,
                                                         lsq_grad_factor(x.numel(), self.quant_max))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


class _QuantLayer:
    """What QuantLinear and QuantConv2d share: independent weight, input and output-gradient bits (32: full
    precision), the quantizers as submodules, and the forward ``grad_q(op(input_q(x), weight_q(w)))``."""

    def _attach(self, wbits: int, abits: int, gbits: int, signed_input: bool, grad_quantizer: dict | None):
        for name, bits in (("wbits", wbits), ("abits", abits)):
            if bits != 32 and (isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8):
                raise ValueError(f"{name}: must be 2 to 8, or 32 (full precision), got {bits!r}")
        self.wbits, self.abits, self.gbits = wbits, abits, gbits
        self.weight_quantizer = None if wbits == 32 else LSQQuantizer(wbits, signed=True)
        self.input_quantizer = None if abits == 32 else LSQQuantizer(abits, signed=signed_input)
        self.grad_quantizer = GradientQuantizer(bits=gbits, **(grad_quantizer or {}))

    def _quantized(self, x: Tensor):
        x = x if self.input_quantizer is None else self.input_quantizer(x)
        w = self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)
        return x, w

    def extra_repr(self) -> str:
        return super().extra_repr() + f", wbits={self.wbits}, abits={self.abits}, gbits={self.gbits}"


class QuantLinear(_QuantLayer, torch.nn.Linear):
    """``nn.Linear`` with its weight and input on LSQ (``LSQQuantizer``) and its output gradient on a
    ``GradientQuantizer`` (Kim et al. 2024's W/A/G training): the backward's dX and dW both come from the one
    quantized gradient. ``signed_input``: the input's grid (unsigned after a ReLU, as the released code);
    ``grad_quantizer``: keyword arguments of ``GradientQuantizer`` (interval, rounding, ...)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, wbits: int = 4, abits: int = 4,
                 gbits: int = 4, signed_input: bool = False, grad_quantizer: dict | None = None, **kwargs):
        super().__init__(in_features, out_features, bias, **kwargs)
        self._attach(wbits, abits, gbits, signed_input, grad_quantizer)

    def forward(self, x: Tensor) -> Tensor:
        x, w = self._quantized(x)
        return self.grad_quantizer(torch.nn.functional.linear(x, w, self.bias))


class QuantConv2d(_QuantLayer, torch.nn.Conv2d):
    """``nn.Conv2d`` with W/A/G quantization as ``QuantLinear``."""

    def __init__(self, *args, wbits: int = 4, abits: int = 4, gbits: int = 4, signed_input: bool = False,
                 grad_quantizer: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._attach(wbits, abits, gbits, signed_input, grad_quantizer)

    def forward(self, x: Tensor) -> Tensor:
        x, w = self._quantized(x)
        return self.grad_quantizer(self._conv_forward(x, w, self.bias))


def quantize_layers(model: torch.nn.Module, wbits: int = 4, abits: int = 4, gbits: int = 4, *,
                    keep_first_last: bool = True, signed_input: bool = False,
                    grad_quantizer: dict | None = None) -> torch.nn.Module:
    """Replaces ``model``'s ``Linear`` and ``Conv2d`` layers (in place; their weights and biases kept) by
    ``QuantLinear``/``QuantConv2d`` with these bits; ``keep_first_last`` keeps the first and the last of them in
    full precision, as the released code keeps the stem and the classifier. Returns ``model``."""
    layers = [(name, m) for name, m in model.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)]
    if keep_first_last:
        layers = layers[1:-1]
    for name, layer in layers:
        options = dict(wbits=wbits, abits=abits, gbits=gbits, signed_input=signed_input,
                       grad_quantizer=grad_quantizer, device=layer.weight.device, dtype=layer.weight.dtype)
        if isinstance(layer, torch.nn.Linear):
            new = QuantLinear(layer.in_features, layer.out_features, layer.bias is not None, **options)
        else:
            new = QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                              layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode, **options)
        new.load_state_dict(layer.state_dict(), strict=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model
