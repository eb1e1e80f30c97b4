"""The records an op family declares for the contract harness (tests/test_contract.py).

A family adds one module ``tests/samples_<family>.py`` (found by that pattern) with ``FAMILY`` (its name),
``SAMPLES`` (a list of ``Sample``) and ``BAD_INPUTS`` (a list of ``BadInput``). Samples and bad inputs use the
public API only (``qkernels.*``, ``torch.ops.qkernels.*``, ``qkernels.reference.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Target(NamedTuple):
    """A backend the harness runs the samples on, and the numerics it implements there."""

    name: str  # test id: a backend name, or "cuda-emulated" (the CUDA kernels under the CPU emulator)
    device: str
    flavour: str  # the rules its kernels implement (conftest.flavour_of; "cuda" for the emulated kernels)
    # The flavour the public ops ask the launchers for: the device's ("cuda" under the emulated adapter). Kernels
    # that take it as an argument follow it (the fused observer's update on Triton); the others implement
    # `flavour` whatever they are asked.
    launch_flavour: str
    interpreted: bool  # Triton under TRITON_INTERPRET=1 on CPU tensors


class Sums(NamedTuple):
    """An expected output that is a sum per quantizer, of ``dtype`` and the shape ``reduce`` gives: its values
    checked with conftest.assert_sums_close(actual, elements, reduce) (within twice the error of a float32
    torch.sum of the same per-element values)."""

    elements: torch.Tensor
    reduce: Callable[[torch.Tensor], torch.Tensor]
    dtype: torch.dtype


@dataclass(frozen=True)
class Sample:
    """One call of a family's public API (or registered op), checked on every backend.

    ``make(device, dtype)``: the inputs, a dict of tensors; the same values on every call (seeded), as fresh
    tensors (calls may update some in place). The harness sets ``requires_grad`` on the inputs named in ``grads``.
    ``call(inputs)``: a dict of named output tensors; traceable by ``torch.compile(fullgraph=True)`` where
    ``compile`` is set. With ``grads``, the harness also differentiates ``outputs["y"]`` with incoming gradient
    ``inputs["dy"]`` and adds output ``"d" + name`` for each name in ``grads``.
    ``expected(inputs, target)``: every output (gradients included) as the reference computes it for the
    target's flavours: a tensor (compared bit for bit; gradients by value, as their strides are autograd's
    choice) or ``Sums``. ``inputs`` are fresh ones from ``make``, without ``requires_grad``.
    ``ops(inputs)``: ``[(registered op, args)]`` for ``torch.library.opcheck``, inputs as in ``call`` (those in
    ``grads`` require grad); no NaN in
    the outputs (opcheck compares them with torch.testing.assert_close, where NaN differs from NaN).
    ``narrowed``: outputs rounded from float32 to the input's dtype, the only ones where bfloat16 may differ by
    1 ulp under the Triton interpreter (NumPy narrows by truncation where the GPU rounds to nearest even; README,
    "Numerics contract").
    """

    name: str
    make: Callable[[str, torch.dtype], dict]
    call: Callable[[dict], dict]
    expected: Callable[[dict, Target], dict]
    grads: tuple[str, ...] = ()
    ops: Callable[[dict], list] | None = None
    dtypes: tuple[torch.dtype, ...] = KERNEL_DTYPES
    compile: bool = False
    narrowed: tuple[str, ...] = ("y",)


class BadInput(NamedTuple):
    """A call that must raise RuntimeError with a message matching ``match`` (a regex naming the argument)."""

    match: str
    call: Callable[[], object]
