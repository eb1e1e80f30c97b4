"""The contract every backend of every op family keeps, on the samples each family declares (tests/samples_*.py,
found by that pattern; records: tests/contract.py), on every backend that runs here and on the CUDA kernels under
the CPU emulator (through the public ops: tests/contract_hooks.py):

* test_matches_reference: every output (masks, packed masks, updated observer state), and the gradients, bit for
  bit against the reference of the backend's flavour, in every dtype of the sample;
* test_opcheck: torch.library.opcheck (its default checks) on the registered ops' calls a sample lists;
* test_compile: torch.compile(fullgraph=True) against eager, forward and backward, bit for bit, for the few
  samples marked ``compile`` (a compile costs seconds here), on every backend but the reference;
* test_deterministic: two identical calls give the same bits, gradients and qparam gradient sums included;
* test_bad_input: a bad call raises the same RuntimeError, with a message naming the argument, with and without
  the C++ entry point.

Tolerances: the learnable qparam gradients are sums, formed in another order than the reference's: within twice
the error of a float32 torch.sum of the same per-element values (conftest.assert_sums_close). bfloat16 outputs the
kernels round from float32 (a sample's ``narrowed``) may differ by 1 ulp under the Triton interpreter, which
narrows by truncation (NumPy) where the GPU rounds to nearest even (README, "Numerics contract").
"""

import importlib
import pathlib
import re

import pytest
import torch

import contract_hooks
import qkernels
from conftest import DEVICES, assert_bitwise_equal, assert_sums_close, backends_for, flavour_of, interpreted
from contract import Sums, Target

# The Triton interpreter evaluates the kernels' inf - inf, 0 / 0 and the like with NumPy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

FAMILIES = [importlib.import_module(path.stem) for path in sorted(pathlib.Path(__file__).parent.glob("samples_*.py"))]
SAMPLES = [(module.FAMILY, sample) for module in FAMILIES for sample in module.SAMPLES]
BAD_INPUTS = [(module.FAMILY, bad) for module in FAMILIES for bad in module.BAD_INPUTS]

EMULATED = "cuda_emulated"


def _targets():
    targets = [Target(f"{backend}-{device}", device, flavour_of(backend, device), device,
                      interpreted(backend, device)) for device in DEVICES for backend in backends_for(device)]
    return targets + [Target(f"{EMULATED}-cpu", "cpu", "cuda", "cuda", False)]


TARGETS = _targets()


def _on(target: Target):
    if target.name.startswith(EMULATED):
        return contract_hooks.emulated_cuda()
    return qkernels.use_backend(target.name.split("-")[0])


def _cases(targets, samples, all_dtypes):
    """pytest.params of (target, sample, dtype): every dtype of the sample, or its first."""
    return [pytest.param(t, s, d, id=f"{t.name}-{f}:{s.name}-{str(d).split('.')[1]}") for t in targets
            for f, s in samples for d in (s.dtypes if all_dtypes else s.dtypes[:1])]


def _inputs(sample, target, dtype):
    inputs = sample.make(target.device, dtype)
    for name in sample.grads:
        inputs[name].requires_grad_()
    return inputs


def _run(sample, target, dtype, call=None):
    """The sample's outputs on the target, the gradients named ``d<input>`` added, all detached."""
    inputs = _inputs(sample, target, dtype)
    with _on(target):
        out = dict((call or sample.call)(inputs))
        if sample.grads:
            grads = torch.autograd.grad(out["y"], [inputs[n] for n in sample.grads], inputs["dy"])
            out.update({f"d{name}": g for name, g in zip(sample.grads, grads)})
    return {name: t.detach() for name, t in out.items()}


def _compare(got, want, sample, *, ulp=0, what=""):
    """got and want (same names) bit for bit; gradients by value (their strides are autograd's choice)."""
    assert got.keys() == want.keys(), (what, sorted(got), sorted(want))
    grads = {f"d{name}" for name in sample.grads}
    for name, w in want.items():
        a = got[name]
        if name in grads:
            a, w = a.contiguous(), w.contiguous()
        assert_bitwise_equal(a, w, ulp=ulp if name in sample.narrowed else 0, what=f"{what}{name}")


@pytest.mark.parametrize("target,sample,dtype", _cases(TARGETS, SAMPLES, True))
def test_matches_reference(target, sample, dtype):
    """Outputs and gradients against the reference of the target's flavours (sums: assert_sums_close)."""
    got = _run(sample, target, dtype)
    want = sample.expected(sample.make(target.device, dtype), target)
    sums = {name: w for name, w in want.items() if isinstance(w, Sums)}
    for name, w in sums.items():
        actual = got.pop(name)
        assert actual.dtype == w.dtype and actual.shape == w.reduce(w.elements).shape, (name, actual.dtype,
                                                                                         actual.shape)
        assert_sums_close(actual, w.elements, w.reduce, name)
    ulp = 1 if target.interpreted and dtype == torch.bfloat16 else 0
    _compare(got, {name: w for name, w in want.items() if name not in sums}, sample, ulp=ulp)


@pytest.mark.parametrize("target,sample,dtype", _cases(TARGETS, SAMPLES, False))
def test_deterministic(target, sample, dtype):
    """Two identical calls (the sample's first dtype), the same bits: outputs, state, gradients and qparam gradient
    sums."""
    _compare(_run(sample, target, dtype), _run(sample, target, dtype), sample, what="second call: ")


@pytest.mark.parametrize("target,sample,dtype", _cases(TARGETS, [(f, s) for f, s in SAMPLES if s.ops], False))
def test_opcheck(target, sample, dtype):
    """torch.library.opcheck's default checks (schema, autograd registration, fake kernel, AOT dispatch) of the
    registered ops' calls, their implementations running on the target."""
    inputs = _inputs(sample, target, dtype)
    with _on(target):
        for op, args in sample.ops(inputs):
            torch.library.opcheck(op, args)


@pytest.mark.parametrize("target,sample,dtype", _cases([t for t in TARGETS if not t.name.startswith("reference")],
                                                        [(f, s) for f, s in SAMPLES if s.compile], False))
def test_compile(target, sample, dtype):
    """torch.compile(fullgraph=True) (aot_eager on CPU tensors, Inductor on CUDA ones) against eager, forward and
    backward, bit for bit."""
    torch._dynamo.reset()
    compiled = torch.compile(sample.call, fullgraph=True, backend="aot_eager" if target.device == "cpu" else "inductor")
    _compare(_run(sample, target, dtype, compiled), _run(sample, target, dtype), sample, what="compiled: ")


@pytest.mark.parametrize("family,bad", [pytest.param(f, b, id=f + ":" + re.sub(r"\\(.)", r"\1", b.match))
                                        for f, b in BAD_INPUTS])
def test_bad_input(family, bad, monkeypatch):
    """The call raises a RuntimeError matching the family's regex, the same message with and without the C++
    entry point (which leaves bad calls to the Python checks)."""
    messages = []
    for entry in (True, False):
        if not entry:
            contract_hooks.disable_entry(monkeypatch)
        with pytest.raises(RuntimeError, match=bad.match) as raised:
            bad.call()
        messages.append(str(raised.value))
    assert messages[0] == messages[1]
