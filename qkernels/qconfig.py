"""QConfig helpers: torch.ao's QAT qconfigs with qkernels' fake-quant modules (``qkernels.nn``).

``torch.ao.quantization.prepare_qat`` (eager) and ``prepare_qat_fx`` then build models whose fake-quant
modules run on qkernels and compile with ``fullgraph=True``, with the same arguments, state-dict keys and
numbers as torch.ao's defaults:

    model.qconfig = qkernels.qconfig.get_default_qat_qconfig("x86")
    torch.ao.quantization.prepare_qat(model, inplace=True)

    prepared = prepare_qat_fx(model, qkernels.qconfig.get_default_qat_qconfig_mapping("x86"), example_inputs)

``to_qkernels(x)`` converts any torch.ao ``QConfig``, ``QConfigMapping`` or fake-quant constructor
(``FakeQuantize.with_args(...)`` and the like) to the qkernels classes, keeping every argument.

Eager-mode ``prepare_qat`` calls the activation fake-quant modules from forward hooks that live in
``torch.ao`` (which Dynamo does not trace); ``compilable(model)`` swaps them for identical hooks defined here,
so that ``torch.compile(model, fullgraph=True)`` works. FX-prepared models need nothing.
"""

from __future__ import annotations

import copy

import torch
import torch.ao.quantization as tq
from torch.ao.quantization import fake_quantize as _ao_fq
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
from torch.ao.quantization.observer import _PartialWrapper
from torch.ao.quantization.qconfig import QConfig
from torch.ao.quantization.qconfig_mapping import QConfigMapping
from torch.ao.quantization.quantize import _observer_forward_hook, _observer_forward_pre_hook

from . import nn

__all__ = ["to_qkernels", "get_default_qat_qconfig", "get_default_qat_qconfig_mapping", "compilable"]

_CLASSES = {
    _ao_fq.FakeQuantize: nn.FakeQuantize,
    _ao_fq.FusedMovingAvgObsFakeQuantize: nn.FusedMovingAvgObsFakeQuantize,
    _LearnableFakeQuantize: nn.LearnableFakeQuantize,
}


def _convert_constructor(ctor):
    """A torch.ao fake-quant constructor (``with_args`` wrapper) as the qkernels class's; others unchanged."""
    if isinstance(ctor, _PartialWrapper) and ctor.p.func in _CLASSES:
        converted = _CLASSES[ctor.p.func].with_args(*ctor.p.args, **ctor.p.keywords)
        converted.callable_args = dict(ctor.callable_args)
        return converted
    return ctor


def to_qkernels(x):
    """``QConfig`` / ``QConfigMapping`` / fake-quant constructor with qkernels' modules (a new object)."""
    if isinstance(x, QConfig):
        return QConfig(activation=_convert_constructor(x.activation), weight=_convert_constructor(x.weight))
    if isinstance(x, QConfigMapping):
        mapping = copy.deepcopy(x)
        mapping.global_qconfig = to_qkernels(mapping.global_qconfig) if mapping.global_qconfig else None
        for table in (mapping.object_type_qconfigs, mapping.module_name_regex_qconfigs,
                      mapping.module_name_qconfigs, mapping.module_name_object_type_order_qconfigs):
            for key, qconfig in table.items():
                table[key] = to_qkernels(qconfig) if qconfig is not None else None
        return mapping
    if x is None:
        return None
    return _convert_constructor(x)


def get_default_qat_qconfig(backend: str = "x86", version: int = 1) -> QConfig:
    """``torch.ao.quantization.get_default_qat_qconfig`` with qkernels' modules."""
    return to_qkernels(tq.get_default_qat_qconfig(backend, version))


def get_default_qat_qconfig_mapping(backend: str = "x86") -> QConfigMapping:
    """``torch.ao.quantization.get_default_qat_qconfig_mapping`` with qkernels' modules (for prepare_qat_fx)."""
    return to_qkernels(tq.get_default_qat_qconfig_mapping(backend))


def _activation_post_process_hook(module, input, output):
    return module.activation_post_process(output)


def _activation_post_process_pre_hook(module, input):
    return module.activation_post_process(input[0])


_HOOKS = {
    _observer_forward_hook: _activation_post_process_hook,
    _observer_forward_pre_hook: _activation_post_process_pre_hook,
}


def compilable(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces, in place, the forward (pre-)hooks eager ``prepare_qat`` registered from torch.ao with the same
    hooks defined outside torch.ao, which Dynamo traces; returns the model."""
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key, hook in list(hooks.items()):
                if hook in _HOOKS:
                    hooks[key] = _HOOKS[hook]
    return model
