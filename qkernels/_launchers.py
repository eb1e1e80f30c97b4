"""The launcher contract of an op family: the private ops that run its kernels on preallocated outputs.

A family declares its contract once, in its public module (``qkernels/<family>.py``: ``LAUNCHERS =
LauncherContract(...)``), as torch schemas. Every backend implements it:

* native (cpu, cuda): the private ops ``qkernels::_<family>_<launcher>_<device>``, implemented in C++
  (``csrc/ops/<family>_{cpu,cuda}.cpp``, TORCH_LIBRARY_IMPL only); torch checks each C++ function's signature
  against the schema defined here when both are registered. ``LauncherContract.native(device)`` is the backend's
  adapter: the ops' C++ callables, nothing in between;
* reference: ``qkernels.reference.<family>.Launchers`` (the spec behind the same signatures);
* triton: the module ``qkernels.triton_kernels.<family>``.

Python adapters take the schema's parameters by the same names (tests/test_launchers.py checks), return what
it returns, and may ignore ``flavour`` where they implement one flavour only (Triton: aten's CUDA rules). Enum
arguments are ints of ``qkernels.enums``. A family may also have eager forwards with C++ autograd nodes (the
opt-in fast path, ARCHITECTURE.md): their schemas are the C++ glue's, and ``native(device)`` exposes each as
``<name>_eager``.
"""

from __future__ import annotations

import types

import torch

DEVICES = ("cpu", "cuda")


class LauncherContract:
    """The launchers of op family ``family``: ``{launcher: "(arguments) -> returns"}``, defined as private ops in
    library ``qkernels`` for both devices on construction. ``eager`` names the family's C++ eager forwards."""

    def __init__(self, family: str, launchers: dict[str, str], eager: tuple[str, ...] = ()):
        self.family = family
        self.launchers = dict(launchers)
        self.eager = tuple(eager)
        self._libraries: dict[str, torch.library.Library] = {}  # kept alive: dropping one removes its ops
        self._native: dict[tuple[str, str], types.SimpleNamespace] = {}
        self.define("qkernels")

    def op_name(self, launcher: str, device: str) -> str:
        return f"_{self.family}_{launcher}_{device}"

    def define(self, namespace: str) -> None:
        """Defines the launcher ops of both devices in library ``namespace`` (once per namespace; the CUDA
        emulator's library implements them in its own)."""
        if namespace in self._libraries:
            return
        library = torch.library.Library(namespace, "FRAGMENT")
        for launcher, signature in self.launchers.items():
            for device in DEVICES:
                library.define(self.op_name(launcher, device) + signature)
        self._libraries[namespace] = library

    def parameters(self, launcher: str) -> tuple[str, ...]:
        """The argument names of a launcher, in order."""
        schema = torch._C.parse_schema(self.op_name(launcher, "cpu") + self.launchers[launcher])
        return tuple(a.name for a in schema.arguments)

    def native(self, device: str, namespace: str = "qkernels") -> types.SimpleNamespace:
        """The adapter of the native backend of ``device`` (the ops of library ``namespace``, which must be
        loaded): each launcher as its op's C++ callable (an OpOverloadPacket resolves the overload on every call
        and an OpOverload adds a Python frame, 3 us in all, more than a small kernel's launch), and each eager
        forward as ``<name>_eager`` (library ``qkernels`` only)."""
        key = (device, namespace)
        if key not in self._native:
            self.define(namespace)
            library = getattr(torch.ops, namespace)

            def op(name):
                overload = getattr(library, name).default
                return getattr(overload, "_op", overload)

            ops = {launcher: op(self.op_name(launcher, device)) for launcher in self.launchers}
            if namespace == "qkernels":
                ops.update({f"{name}_eager": op(f"_{self.family}_{name}_eager_{device}") for name in self.eager})
            self._native[key] = types.SimpleNamespace(**ops)
        return self._native[key]
