"""What a benchmarked op is: ``Op``, the unit every family file under ``qkernels.bench.ops`` declares.

An op is timed per (mode, shape, dtype, device) on several providers, each a function of one inputs dict:

- ``qkernels``: the package's public call, timed once per live kernel backend (``qkernels.use_backend``);
- ``aten``: torch's own op, where torch has one (``aten_dtypes``: the dtypes it takes);
- ``eager``: the pure-PyTorch formulation a user would write (for the papers' methods, their official code's);
- ``compile``: ``torch.compile`` of ``eager``.

A provider returns a tensor or a tuple of tensors. Modes: ``fwd`` (no grad), ``fwdbwd`` (the inputs named in
``grads`` require grad; the call, then ``torch.autograd.grad`` of its first ``outputs_with_grad`` outputs with a
fixed random ``dy``) and ``bwd`` (that backward alone, on a graph built once and kept). Before any timing, each
provider's outputs (and, in the backward modes, its input gradients) are compared with the reference: the
``qkernels`` call on the ``reference`` backend, on fresh inputs from ``make`` (which is deterministic: stateful
inputs such as running statistics or a generator start equal for every provider). Each result is compared
exactly (``torch.equal``, NaN where NaN) unless the op states a ``Tolerance`` for that provider and result, with
its reason; a tolerance's check sees the inputs and, in the backward modes, ``inputs["dy"]`` (the tuple of
output gradients the backward was given). An op that updates inputs in place names them in ``state``: after the
call they are compared too (``"state 0"``, ...), so a provider that returns the right output but leaves the
running statistics wrong is a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

MODES = ("fwd", "bwd", "fwdbwd")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Tolerance:
    """How a provider's results may differ from the reference's, and why. ``check(want, got, inputs)`` returns
    None when ``got`` passes, else a short description of the difference. ``covers``: the results it applies to
    (``"output 0"``, ``"gradient 1"``, ...; None: all); the others are compared exactly."""

    reason: str
    check: Callable[[Tensor, Tensor, dict], Optional[str]]
    covers: Optional[tuple] = None

    def applies(self, where: str) -> bool:
        return self.covers is None or where in self.covers


def exact(want: Tensor, got: Tensor, inputs: dict | None = None) -> Optional[str]:
    """None when ``got`` equals ``want`` bit for bit (dtype, shape, values; NaN where ``want`` has NaN)."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{got.dtype} {tuple(got.shape)} where the reference is {want.dtype} {tuple(want.shape)}"
    same = (got == want) | (got.isnan() & want.isnan()) if want.is_floating_point() else got == want
    bad = int((~same).sum())
    return None if bad == 0 else f"{bad} of {want.numel()} elements differ"


def close(rtol: float, atol: float, reason: str, covers: Optional[tuple] = None) -> Tolerance:
    """``torch.isclose`` with these tolerances (NaN where NaN), for ``reason``, on the results ``covers``."""

    def check(want, got, inputs):
        if got.dtype != want.dtype or got.shape != want.shape:
            return exact(want, got)
        ok = torch.isclose(got.double(), want.double(), rtol=rtol, atol=atol, equal_nan=True)
        bad = int((~ok).sum())
        worst = float((got.double() - want.double()).abs().nan_to_num(0).max()) if bad else 0.0
        return None if bad == 0 else f"{bad} of {want.numel()} elements beyond rtol {rtol:g}, atol {atol:g} " \
                                     f"(max difference {worst:.3g})"

    return Tolerance(f"rtol {rtol:g}, atol {atol:g}: {reason}", check, covers)


@dataclass(frozen=True)
class Op:
    """One benchmarked op (see the module docstring).

    ``make(shape, dtype, device)``: the inputs dict for a shape of ``kinds`` (``"weight"``: a layer's weight, output
    channels first; ``"activation"``: a layer's input or output at a batch); deterministic. ``sweep_shape(numel)``: the
    shape a size sweep gives it (None: this size does not fit its layout). ``traffic(mode, numel, itemsize)``: the least
    bytes any implementation moves (GB/s are these over the time). ``state``: names of inputs the op updates in place
    (compared after the call; every provider must update the same tensors of its inputs dict). ``tolerances``: provider
    kind -> a ``Tolerance`` or a tuple of them (each for the results it ``covers``; the rest exact);
    ``outputs_with_grad``: how many leading outputs the backward modes differentiate; ``compiles``: False where
    ``eager`` cannot be compiled (then no ``compile``)."""

    name: str
    family: str
    summary: str
    make: Callable[[tuple, torch.dtype, torch.device], dict]
    sweep_shape: Callable[[int], Optional[tuple]]
    traffic: Callable[[str, int, int], int]
    qkernels: Callable[[dict], object]
    eager: Callable[[dict], object]
    aten: Optional[Callable[[dict], object]] = None
    aten_dtypes: tuple = ("float32",)
    kinds: tuple = ("weight", "activation")
    modes: tuple = MODES
    dtypes: tuple = FLOAT_DTYPES
    grads: tuple = ("x",)
    state: tuple = ()
    outputs_with_grad: int = 1
    tolerances: dict = field(default_factory=dict)
    compiles: bool = True

    def providers(self, dtype: str) -> dict:
        """``{provider kind: function}`` for ``dtype``: qkernels, eager, compile's source, and aten if it takes
        the dtype."""
        found = {"qkernels": self.qkernels, "eager": self.eager}
        if self.compiles:
            found["compile"] = self.eager
        if self.aten is not None and dtype in self.aten_dtypes:
            found["aten"] = self.aten
        return found

    def tolerance(self, provider: str, where: Optional[str] = None) -> Optional[Tolerance]:
        """The tolerance of ``provider`` (a kind: qkernels, aten, eager, compile) for the result ``where``
        (``"output 0"``, ``"gradient 1"``, ...; None: the first stated)."""
        stated = self.tolerances.get(provider, ())
        for tolerance in stated if isinstance(stated, tuple) else (stated,):
            if where is None or tolerance.applies(where):
                return tolerance
        return None

    def tolerance_reasons(self, provider: str) -> str:
        """``"exact"``, or the reasons of the tolerances stated for ``provider``."""
        stated = self.tolerances.get(provider, ())
        return "; ".join(t.reason for t in (stated if isinstance(stated, tuple) else (stated,))) or "exact"


def as_tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)
