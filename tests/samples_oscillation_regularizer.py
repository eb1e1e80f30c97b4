"""Contract samples of the oscillation regularizer family (qkernels.oscillation_regularizer: Wenshøj et al.'s
``sum_l mean(q(W_l)^2 - W_l^2)`` over a list of weights, and its gradients), checked by tests/test_contract.py
against qkernels.reference.oscillation_regularizer.

Two kinds of samples:

* exact: weights on a dyadic grid whose max is ``L · 2^-k`` (so ``s`` is a power of two), with ties at the max
  and zeros. Every ``q``, ``e`` and ``t`` is exact in float32, and so is every partial sum in any order (the sums
  need fewer than 24 bits): the value and the scale path's coefficient are the same on every backend, and the
  gradients, scale path included, are compared bit for bit;
* random: uniform weights of several magnitudes, one tensor spanning several reduction blocks, one all zero. The
  value is a sum (contract.Sums); the gradient without the scale path (``scale_grad=False``) is exact per element
  (with it, the tied elements' coefficient is a quotient of a sum, tested in tests/test_oscillation_regularizer.py
  within its tolerance).

Bad inputs are tested in tests/test_oscillation_regularizer.py (the family has no C++ entry point).
"""

import torch

import qkernels
from contract import Sample, Sums
from qkernels.reference import oscillation_regularizer as ref

FAMILY = "oscillation_regularizer"


def _dyadic(shape, bits, steps, seed, g):
    """k / 2^steps for integers k in [-K, K], K = L · 2^j with the largest j keeping K <= 2^steps (so that
    s = K / 2^steps / L is a power of two), one element at K and one at -K (ties at the max)."""
    levels = ref.levels(bits)
    top = levels
    while top * 2 <= 2 ** steps:
        top *= 2
    k = torch.randint(-top, top + 1, shape, generator=g)
    flat = k.view(-1)
    flat[seed % flat.numel()] = top
    flat[(seed * 7 + 3) % flat.numel()] = -top
    return k.double() / 2 ** steps


def _make_exact(shapes, bits, steps, seed):
    def make(device, dtype):
        g = torch.Generator().manual_seed(seed)
        inputs = {f"w{i}": _dyadic(shape, bits, steps, seed + i, g).to(dtype).to(device)
                  for i, shape in enumerate(shapes)}
        return dict(inputs, dy=torch.tensor(0.7, device=device))
    return make


def _make_random(shapes, seed):
    def make(device, dtype):
        g = torch.Generator().manual_seed(seed)
        inputs = {f"w{i}": (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).mul(10.0 ** (i - 1))
                  .to(dtype).to(device) for i, shape in enumerate(shapes)}
        inputs[f"w{len(shapes)}"] = torch.zeros(5, 3, dtype=dtype, device=device)
        return dict(inputs, dy=torch.tensor(-1.3, device=device))
    return make


def _weights(inputs):
    return [inputs[name] for name in sorted(n for n in inputs if n.startswith("w"))]


def _call(bits, scale_grad):
    def call(inputs):
        return dict(y=qkernels.oscillation_regularizer(_weights(inputs), bits, scale_grad))
    return call


def _expected(bits, scale_grad):
    def expected(inputs, target):
        out, means = {}, []
        for name in sorted(n for n in inputs if n.startswith("w")):
            w = inputs[name]
            m = ref.amax(w)
            sums, ties = ref.sums(w, m, bits)
            _, e, _, _ = ref.elements(w, m, bits)
            means.append(e.double() / w.numel())
            out[f"d{name}"] = ref.backward(w, inputs["dy"], m, sums, ties, bits, scale_grad)
        return dict(out, y=Sums(torch.cat(means), lambda v: v.sum(), torch.float32))
    return expected


def _ops(bits, scale_grad):
    def ops(inputs):
        # the ops have no autograd of their own (the public function's autograd.Function is it): plain tensors
        weights = [w.detach() for w in _weights(inputs)]
        _, amax, sums, ties = torch.ops.qkernels.oscillation_regularizer(weights, bits, scale_grad)
        return [(torch.ops.qkernels.oscillation_regularizer.default, (weights, bits, scale_grad)),
                (torch.ops.qkernels.oscillation_regularizer_backward.default,
                 (weights, inputs["dy"], amax, sums, ties, bits, scale_grad))]
    return ops


def _sample(name, shapes, bits, scale_grad, seed, steps=None, compile=False):
    """An exact sample (dyadic weights of 2^-steps) when ``steps`` is given, else a random one (``shapes`` and
    one all-zero tensor)."""
    make = _make_exact(shapes, bits, steps, seed) if steps else _make_random(shapes, seed)
    n = len(shapes) + (0 if steps else 1)
    return Sample(name, make, _call(bits, scale_grad), _expected(bits, scale_grad),
                  grads=tuple(f"w{i}" for i in range(n)), ops=_ops(bits, scale_grad), compile=compile,
                  narrowed=tuple(f"dw{i}" for i in range(n)))


SAMPLES = [
    _sample("exact_b2", [(3, 5), (40000,), (16, 8, 3, 3)], 2, True, 1, steps=4, compile=True),
    _sample("exact_b3", [(3, 5), (700,)], 3, True, 2, steps=5),
    _sample("exact_b4_detached", [(300,), (5, 7)], 4, False, 3, steps=6),
    _sample("random_b4", [(7, 11), (3, 20000), (64, 1)], 4, False, 4, compile=True),
    _sample("random_b8", [(7, 11), (3, 20000)], 8, False, 5),
]

BAD_INPUTS = []
