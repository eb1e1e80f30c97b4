"""The benchmarked ops: every module here declares ``OPS``, a list of ``qkernels.bench.spec.Op`` (one module per
op family); ``OPS`` below collects them by name, in the order of ``FAMILY_ORDER`` (others after it, by name)."""

from __future__ import annotations

import importlib
import pkgutil

FAMILY_ORDER = ("fake_quant", "fake_quant_learnable", "fused_observer", "oscillation", "dampening", "regularizer",
                "grad_quant")


def _modules() -> list:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    ordered = [n for n in FAMILY_ORDER if n in names] + sorted(n for n in names if n not in FAMILY_ORDER)
    return [importlib.import_module(f"{__name__}.{name}") for name in ordered]


OPS = {op.name: op for module in _modules() for op in module.OPS}
