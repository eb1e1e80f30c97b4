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
from .fake_quant_learnable import (
    fake_quantize_learnable_per_channel_affine,
    fake_quantize_learnable_per_tensor_affine,
    lsq_grad_factor,
)

# (and EmptyRunningStatsError, made on first access: module __getattr__ below)
__all__ = ["FakeQuantize", "FusedMovingAvgObsFakeQuantize", "LearnableFakeQuantize"]

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
