"""Fake-quantize a real model through ``qkernels.patch_torch()``: ``python -m qkernels.demo``.

Runs in seconds on a CPU, with no downloads:

1. Trains a small MLP (64-128-64-10, ReLU) with Adam on scikit-learn's ``load_digits()`` (1797 real 8x8
   handwritten digits shipped inside scikit-learn) and prints its float test accuracy.
2. Builds a QAT-style copy from stock torch.ao pieces: each ``nn.Linear`` gets a per-channel symmetric qint8
   ``FakeQuantize`` on its weight (``default_per_channel_weight_fake_quant``) and a per-tensor affine quint8
   one on its input (``default_fake_quant``); observers are calibrated on the training set, then frozen.
3. Evaluates the copy with stock torch and again inside ``qkernels.patched_torch()``, where torch.ao's
   ``FakeQuantize`` calls ``torch.fake_quantize_per_{channel,tensor}_affine`` and so runs on qkernels. It
   counts the calls that reached qkernels, names the backend, prints each layer's weight and activation
   quantization error, and checks that every fake-quantized tensor and the logits are bit-identical
   (``torch.equal``) with and without the patch: qkernels is an exact drop-in.

Exit status: 0 on success, 1 if qkernels did not reproduce stock torch, 2 if scikit-learn is missing.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import sys
import time
import warnings

import torch
from torch import nn
from torch.ao import quantization as tq

import qkernels
from qkernels import backends


class QATLinear(nn.Module):
    """``nn.Linear`` with fake-quantized input and weight; keeps (x, q(x), w, q(w)) of its last call."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.weight_fq = tq.default_per_channel_weight_fake_quant()  # qint8, symmetric, per output channel
        with warnings.catch_warnings():  # torch's own default_fake_quant still passes reduce_range=True
            warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
            self.act_fq = tq.default_fake_quant()  # quint8, affine, per tensor
        self.seen: tuple[torch.Tensor, ...] = ()

    def forward(self, x):
        xq, wq = self.act_fq(x), self.weight_fq(self.linear.weight)
        self.seen = (x, xq, self.linear.weight, wq)
        return nn.functional.linear(xq, wq, self.linear.bias)


@contextlib.contextmanager
def counting_qkernels_calls(calls: collections.Counter):
    """Counts, per function name, the calls of torch's fake-quant functions that reach qkernels' drop-ins (those
    that torch's attributes are while patched; torch.ao's modules look them up on every call)."""
    names = ("fake_quantize_per_tensor_affine", "fake_quantize_per_channel_affine")
    installed = {name: getattr(torch, name) for name in names}

    def counting(name, fn):
        def call(*args, **kwargs):
            calls[name] += fn is getattr(qkernels, name)
            return fn(*args, **kwargs)
        return call

    for name, fn in installed.items():
        setattr(torch, name, counting(name, fn))
    try:
        yield
    finally:
        for name, fn in installed.items():
            setattr(torch, name, fn)


def rel_err(q: torch.Tensor, ref: torch.Tensor) -> float:
    return ((q - ref).norm() / ref.norm()).item()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def main() -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest, and steadiest on a busy machine, on one thread
    try:
        return _run()
    finally:
        torch.set_num_threads(threads)


def _run() -> int:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("qkernels.demo needs scikit-learn for its dataset (load_digits ships inside it; nothing is "
              "downloaded):\n    pip install scikit-learn", file=sys.stderr)
        return 2
    start = time.perf_counter()
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train, test = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split([1437, len(x) - 1437])
    print(f"data: sklearn load_digits, {len(train)} train / {len(test)} test images (8x8 pixels, 10 classes)")

    # 1. Train the float model: 400 Adam steps on minibatches of 64.
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.randperm(len(train) * 20, generator=torch.Generator().manual_seed(1)) % len(train)
    for step in range(400):
        idx = train[order[step * 64:(step + 1) * 64]]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        float_logits = model(x[test])
    print(f"float model: 400 Adam steps, last loss {loss.item():.4f}, "
          f"test accuracy {accuracy(float_logits, y[test]):.4f}")

    # 2. QAT-style copy with stock torch.ao FakeQuantize modules; calibrate the observers, then freeze them.
    qmodel = copy.deepcopy(model)
    layers = {}
    for i, layer in enumerate(qmodel):
        if isinstance(layer, nn.Linear):
            qmodel[i] = layers[f"{i}.linear"] = QATLinear(layer)
    with torch.no_grad():
        qmodel(x[train])
    qmodel.apply(tq.disable_observer)

    # 3. Evaluate with stock torch, then with torch's fake-quant functions routed to qkernels.
    with torch.no_grad():
        stock_logits = qmodel(x[test])
    stock_seen = {name: m.seen for name, m in layers.items()}

    calls: collections.Counter[str] = collections.Counter()
    with qkernels.patched_torch(), torch.no_grad(), counting_qkernels_calls(calls):
        q_logits = qmodel(x[test])

    exact = torch.equal(q_logits, stock_logits)
    print(f"\n{'layer':<10} {'weight':<10} {'weight err':>10} {'act err':>9}  q(w), q(x) bit-exact vs stock torch")
    for name, m in layers.items():
        xf, xq, w, wq = m.seen
        same = torch.equal(wq, stock_seen[name][3]) and torch.equal(xq, stock_seen[name][1])
        exact &= same
        print(f"{name:<10} {str(tuple(w.shape)):<10} {rel_err(wq, w):>10.2e} {rel_err(xq, xf):>9.2e}  {same}")
    print("(relative L2 error ||q(v) - v|| / ||v||: weights per-channel qint8, layer inputs per-tensor quint8 "
          "on the test set)")

    counts = ", ".join(f"{k}: {v}" for k, v in calls.items())
    print(f"\nfake-quant calls that ran on qkernels while patched: {sum(calls.values())} ({counts or 'none'})")
    print(f"backend for a float32 CPU tensor: {backends.chosen(x[:1], -128, 127)} "
          f"(requested: {backends.requested()})")
    changed = (q_logits.argmax(1) != float_logits.argmax(1)).sum().item()
    print(f"test accuracy: float {accuracy(float_logits, y[test]):.4f}, fake-quantized "
          f"{accuracy(q_logits, y[test]):.4f} ({changed} of {len(test)} predictions changed)")
    print(f"patched == stock torch, logits and every fake-quantized tensor (torch.equal): {exact}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    if not exact or not calls:
        print("FAILED: " + ("qkernels did not reproduce stock torch bit for bit" if not exact
                            else "no fake-quant call reached qkernels"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
