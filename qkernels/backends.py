"""The one dispatch point: which backend runs an op on a given input.

Backends: ``cuda`` (csrc CUDA kernels, CUDA tensors), ``triton`` (CUDA tensors; CPU tensors only under
``TRITON_INTERPRET=1`` and only when asked for by name), ``cpu`` (csrc C++ kernels, CPU tensors) and
``reference`` (pure PyTorch, any device and dtype).

Choice: ``QKERNELS_BACKEND=auto|cuda|triton|cpu|reference`` or ``with qkernels.use_backend(name):`` (the
context manager wins). ``auto`` takes the first usable backend in ``AUTO_ORDER`` for the input's device and
falls back silently; a backend asked for by name that cannot run the call raises, saying why.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os

import torch

from . import _library

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The native and Triton kernels compare against the bounds in float32 (see csrc/include/qkernels).
MAX_KERNEL_QUANT_BOUND = 1 << 22

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("qkernels_backend", default=None)
override = _override.get  # the name given to the innermost use_backend(), or None


def environment_reader(name: str):
    """A function returning os.environ's value of ``name`` (None when unset) at the cost of a dict lookup where
    possible. ``os.environ.get`` raises and catches a KeyError for an unset variable: a microsecond, several in
    the middle of an eager call, which is more than the kernel launch. CPython's ``os.environ`` keeps the encoded
    variables in its ``_data`` dict, which every write through ``os.environ`` (and so ``monkeypatch.setenv``)
    updates (``os.environ.get`` when there is no such dict, or os.environ was replaced by another mapping)."""
    environ = os.environ
    data, encode, decode = (getattr(environ, a, None) for a in ("_data", "encodekey", "decodevalue"))
    if not (isinstance(data, dict) and callable(encode) and callable(decode)):
        return lambda: os.environ.get(name)
    key = encode(name)

    def read():
        if os.environ is not environ:  # replaced (e.g. by a test's monkeypatch): read the new mapping
            return os.environ.get(name)
        value = data.get(key)
        return None if value is None else decode(value)

    return read


_backend_variable = environment_reader("QKERNELS_BACKEND")


def requested() -> str:
    return _requested(_override.get() or _backend_variable())


def _requested(raw: str | None) -> str:
    name = (raw or "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"QKERNELS_BACKEND must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops in this block on backend ``name`` (one of ``BACKENDS``)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_missing_reason() -> str | None:
    try:
        import triton
    except ImportError as exc:
        return f"triton is not importable ({exc})"
    version = tuple(int(p) for p in triton.__version__.split(".")[:2])
    return None if version >= (3, 2) else f"triton {triton.__version__} < 3.2"


_availability: dict[tuple[str, str], str | None] = {}


def availability(name: str, device_type: str) -> str | None:
    """None if backend ``name`` can run on ``device_type`` at all, else the reason (fixed per process)."""
    key = (name, device_type)
    if key not in _availability:
        _availability[key] = _availability_uncached(name, device_type)
    return _availability[key]


def _availability_uncached(name: str, device_type: str) -> str | None:
    if name == "reference":
        return None
    if name == "cpu":
        if device_type != "cpu":
            return f"the cpu backend runs CPU tensors, not {device_type}"
        return _library.missing_reason("_C")
    if name == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs CUDA tensors, not {device_type}"
        return _library.missing_reason("_C_cuda")
    if name == "triton":
        reason = _triton_missing_reason()
        if reason:
            return reason
        if device_type == "cuda" or (device_type == "cpu" and _triton_interpret()):
            return None
        return f"triton runs {device_type} tensors only under TRITON_INTERPRET=1" if device_type == "cpu" else (
            f"triton does not run {device_type} tensors"
        )
    raise ValueError(f"unknown backend {name!r}")


def kernel_support(x: torch.Tensor, quant_min: int, quant_max: int) -> str | None:
    """None if the kernel backends handle this call, else why only the reference does."""
    if x.dtype not in KERNEL_DTYPES:
        return f"kernels take float32/float16/bfloat16 inputs, not {x.dtype}"
    if max(abs(quant_min), abs(quant_max)) > MAX_KERNEL_QUANT_BOUND:
        return f"kernels take |quant_min|, |quant_max| <= 2^22, got [{quant_min}, {quant_max}]"
    return None


def _launchers(name: str, family: str):
    """The adapter of backend ``name`` for op family ``family``: the object whose attributes are the family's
    launchers (its launcher contract, qkernels/_launchers.py), found by the family's name."""
    if name == "reference":
        return importlib.import_module(f"qkernels.reference.{family}").Launchers
    if name == "triton":
        return importlib.import_module(f"qkernels.triton_kernels.{family}")
    return importlib.import_module(f"qkernels.{family}").LAUNCHERS.native(name)  # cpu or cuda: the device


_selected: dict = {}


def select(x: torch.Tensor, quant_min: int, quant_max: int, family: str = "fake_quant"):
    """The launchers of op family ``family`` that run this call (rules: the module docstring)."""
    raw = _override.get() or _backend_variable()
    # Everything the choice depends on, read as cheaply as possible: this runs on every eager call, and costs
    # more than the whole kernel launch once it is a few microseconds. A choice that raises is not cached, so it
    # raises every time.
    bound = MAX_KERNEL_QUANT_BOUND
    key = (raw, family, x.device, x.dtype, -bound <= quant_min <= bound and -bound <= quant_max <= bound)
    launchers = _selected.get(key)
    if launchers is None:
        launchers = _selected[key] = _launchers(_select(_requested(raw), x, quant_min, quant_max), family)
    return launchers


def chosen(x: torch.Tensor, quant_min: int, quant_max: int) -> str:
    """The name of the backend that runs a call on ``x`` with this range (raises as ``select`` does)."""
    return _select(requested(), x, quant_min, quant_max)


def _select(name: str, x: torch.Tensor, quant_min: int, quant_max: int) -> str:
    device_type = x.device.type
    if name != "auto":
        reason = availability(name, device_type)
        if reason is None and name != "reference":
            reason = kernel_support(x, quant_min, quant_max)
        if reason is not None:
            raise RuntimeError(f"qkernels backend {name!r} was requested but cannot run this call: {reason}")
        return name
    for candidate in AUTO_ORDER.get(device_type, ("reference",)):
        if availability(candidate, device_type) is None and (
            candidate == "reference" or kernel_support(x, quant_min, quant_max) is None
        ):
            return candidate
    return "reference"


def status() -> dict[str, dict[str, str | None]]:
    """For each backend and device type: None if usable, else why not (printed by `python -m qkernels.info`)."""
    return {
        name: {dev: availability(name, dev) for dev in ("cpu", "cuda")} for name in BACKENDS if name != "auto"
    }
