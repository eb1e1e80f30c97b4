"""Fake-quantize a real model through ``qkernels.patch_torch()``: ``python -m qkernels.demo``.

What it shows, in under a minute on a laptop CPU, with no downloads:

1. A small MLP (64-128-64-10, ReLU) is trained with Adam on scikit-learn's ``load_digits()`` (1797 real 8x8
   handwritten digits that ship inside scikit-learn) and its float test accuracy is printed.
2. A QAT-style copy is built from stock torch.ao pieces: every ``nn.Linear`` gets a per-channel symmetric qint8
   ``FakeQuantize`` on its weight (``default_per_channel_weight_fake_quant``) and a per-tensor affine quint8
   ``FakeQuantize`` on its input (``default_fake_quant``). Observers are calibrated on the training set and
   then frozen.
3. The copy is evaluated twice: with stock torch, and inside ``qkernels.patched_torch()``, where torch.ao's
   ``FakeQuantize`` modules call ``torch.fake_quantize_per_{channel,tensor}_affine`` and so run on qkernels.
   The demo counts the calls that reached qkernels, names the backend that ran them, prints each layer's weight
   and activation quantization error, and checks that the logits are bit-identical (``torch.equal``) with and
   without the patch: qkernels is an exact drop-in.

Exit status: 0 on success, 1 if the patched outputs differ from stock torch, 2 if scikit-learn is missing.
"""

from __future__ import annotations

import collections
import copy
import sys
import time

import torch
from torch import nn
from torch.ao import quantization as tq

import qkernels
from qkernels import backends


class QATLinear(nn.Module):
    """``nn.Linear`` with fake-quantized input and weight; keeps the last input pair for error reporting."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.weight_fq = tq.default_per_channel_weight_fake_quant()  # qint8, symmetric, per output channel
        self.act_fq = tq.default_fake_quant()  # quint8, affine, per tensor
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x):
        xq = self.act_fq(x)
        self.seen = (x.detach(), xq.detach())
        return nn.functional.linear(xq, self.weight_fq(self.linear.weight), self.linear.bias)


def rel_err(q: torch.Tensor, ref: torch.Tensor) -> float:
    return ((q - ref).norm() / ref.norm()).item()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def main() -> int:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("qkernels.demo needs scikit-learn for its dataset (load_digits ships inside it, nothing is "
              "downloaded):\n    pip install scikit-learn", file=sys.stderr)
        return 2
    start = time.perf_counter()
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1437], perm[1437:]
    print(f"data: sklearn load_digits, {len(train)} train / {len(test)} test images of 8x8 pixels, 10 classes")

    # 1. Train the float model.
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = torch.randperm(len(train) * 20, generator=torch.Generator().manual_seed(1)) % len(train)
    for step in range(400):
        idx = train[batches[step * 64:(step + 1) * 64]]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        float_logits = model(x[test])
    print(f"float model: 400 Adam steps, final train loss {loss.item():.4f}, "
          f"test accuracy {accuracy(float_logits, y[test]):.4f}")

    # 2. QAT-style copy with stock torch.ao FakeQuantize modules; calibrate the observers, then freeze them.
    qmodel = copy.deepcopy(model)
    for i, layer in enumerate(qmodel):
        if isinstance(layer, nn.Linear):
            qmodel[i] = QATLinear(layer)
    with torch.no_grad():
        qmodel(x[train])
    qmodel.apply(tq.disable_observer)

    # 3. Evaluate with stock torch, then with torch's fake-quant functions routed to qkernels.
    with torch.no_grad():
        stock_logits = qmodel(x[test])
        stock_w = [m.weight_fq(m.linear.weight) for m in qmodel if isinstance(m, QATLinear)]

    calls: collections.Counter[str] = collections.Counter()
    original_select = backends.select

    def counting_select(t, quant_min, quant_max):
        module = original_select(t, quant_min, quant_max)
        calls[module.__name__] += 1
        return module

    backends.select = counting_select
    try:
        with qkernels.patched_torch(), torch.no_grad():
            q_logits = qmodel(x[test])
            rows = []
            for i, m in enumerate(qmodel):
                if isinstance(m, QATLinear):
                    wq = m.weight_fq(m.linear.weight)
                    rows.append((f"{i}.linear", tuple(m.linear.weight.shape), rel_err(wq, m.linear.weight),
                                 rel_err(m.seen[1], m.seen[0]), torch.equal(wq, stock_w[len(rows)])))
    finally:
        backends.select = original_select
    assert torch.fake_quantize_per_tensor_affine is not qkernels.fake_quantize_per_tensor_affine  # unpatched

    print(f"\n{'layer':<10} {'weight':<10} {'weight err':>10} {'act err':>9}  weight bit-exact vs torch")
    for name, shape, w_err, a_err, same in rows:
        print(f"{name:<10} {str(shape):<10} {w_err:>10.2e} {a_err:>9.2e}  {same}")
    print("(relative L2 error ||q(v) - v|| / ||v||; weights per-channel qint8, activations per-tensor quint8 "
          "over the test set)")

    print(f"\nqkernels calls while patched: {sum(calls.values())} ({', '.join(f'{k}: {v}' for k, v in calls.items())})")
    print(f"backend for a float32 CPU tensor: {backends.select(x[:1], -128, 127).__name__} "
          f"(requested: {backends.requested()})")
    print(f"test accuracy: float {accuracy(float_logits, y[test]):.4f}, "
          f"fake-quantized {accuracy(q_logits, y[test]):.4f}")
    exact = torch.equal(q_logits, stock_logits) and all(r[4] for r in rows)
    print(f"patched logits == stock torch logits (torch.equal): {exact}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    if not exact or not calls:
        print("FAILED: qkernels did not reproduce stock torch bit for bit" if not exact
              else "FAILED: no call reached qkernels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
