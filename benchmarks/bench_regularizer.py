"""The fused oscillation regularizer (Wenshøj et al. 2025), value and gradient over a whole model's weights, against
the official formulation in eager PyTorch and torch.compile of it.

Weight sets: every ``weight`` parameter (convolutions, linears and norm layers, as the official code) of a CIFAR
ResNet-18 (11.2M elements in 41 tensors) and of the harness's CIFAR ResNet-20 (0.27M in 41 tensors).
Providers, each one ``value.backward()`` from fresh gradients:

* ``fused``: ``qkernels.oscillation.regularizer`` (one fused call for the list) on the chosen backend;
* ``eager``: the official loop per tensor: ``s = max|W| / L`` (through torch.max), ``q = s · round(W / s)`` with a
  straight-through round, ``sum_l mean(q^2 - W^2)``, autograd's backward;
* ``compile``: ``torch.compile`` of that function (forward and backward).

Minimal traffic: the fused op reads the weights three times (the maxima, the sums, the backward) and writes the
gradient once: 4b bytes per element (b = element size). GB/s = those bytes / time; ``copy`` is the bandwidth of
a copy of the set's size (``clone`` on the CPU). ``step`` (``--step-batch N``): one training step of the model
itself (forward, cross-entropy, backward on random 32x32 images), and the fused term's cost as a share of it.
Targets: CPU >= 5x eager and >= 1.5x compile; GPU the fused term <= 5 % of a ResNet-18 step.

    python benchmarks/bench_regularizer.py [--device cpu|cuda] [--backend auto|cpu|cuda|triton|reference]
        [--dtype float32|bfloat16|float16] [--threads N] [--sets resnet18 resnet20] [--bits 4] [--no-compile]
        [--step-batch 128] [--out DIR]
"""

import argparse

import torch
from torch import nn

import qkernels
from qkernels.reference.oscillation_regularizer import official
from qkernels.train.models import build

from common import add_table_args, bench_ms, measure_copy_gbps, table_setup, write_table


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def resnet18(num_classes=10):
    """ResNet-18 with the CIFAR stem (3x3 convolution, no max-pool), as the paper's CIFAR-10 runs; no
    torchvision here."""
    layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


ROUNDS = 3
MODELS = {"resnet18": resnet18, "resnet20": lambda: build("resnet20", 3, 32, 10)}


def weights_of(model):
    """Every module's ``weight`` parameter (the official code's choice, norm layers included)."""
    return [m.weight for m in model.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)]


def _train_step_ms(model, batch, device, dtype):
    """Milliseconds of one FP training step of ``model`` (forward, cross-entropy, backward) on random images."""
    x = torch.randn(batch, 3, 32, 32, device=device, dtype=dtype)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
    return bench_ms(step, device)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_table_args(p, "bench_regularizer")
    p.add_argument("--sets", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    p.add_argument("--bits", type=int, default=4, choices=range(2, 9), metavar="2..8")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--step-batch", type=int, default=0, metavar="N",
                   help="also time a training step of the model at batch N (0: no)")
    args = p.parse_args()
    if args.step_batch < 0:
        p.error("--step-batch: must be >= 0")
    dtype, device, header = table_setup(p, args)
    lines = [f"{header}, {args.bits} bits",
             f"{'set':10} {'elements':>10} {'fused ms':>9} {'GB/s':>6} {'eager ms':>9} {'compile ms':>10} "
             f"{'copy GB/s':>9} {'eager/fused':>11} {'compile/fused':>13} {'step ms':>8} {'fused/step':>10}"]
    print(*lines, sep="\n")
    compiled = None if args.no_compile else torch.compile(official)
    for name in args.sets:
        torch.manual_seed(0)
        model = MODELS[name]().to(device, dtype)
        weights = weights_of(model)

        def step(f):
            def run():
                for w in weights:
                    w.grad = None
                with qkernels.use_backend(args.backend):  # the fused backward runs on it too
                    f().backward()
            return run

        providers = {"fused": lambda: qkernels.oscillation.regularizer(weights, args.bits),
                     "eager": lambda: official(weights, args.bits)}
        if compiled is not None:
            providers["compile"] = lambda: compiled(weights, args.bits)
        # Rounds over the providers, each provider's best median: the first to run after the model's allocation
        # pays the allocator's warm-up (page faults of fresh gradient buffers) that the later ones do not.
        ms = {}
        for _ in range(ROUNDS):
            for k, f in providers.items():
                ms[k] = min(ms.get(k, float("inf")), bench_ms(step(f), device))
        step_ms = _train_step_ms(model, args.step_batch, device, dtype) if args.step_batch else float("nan")
        n = sum(w.numel() for w in weights)
        gbps = 4 * dtype.itemsize * n / ms["fused"] / 1e6
        copy = measure_copy_gbps(torch.empty(n, dtype=dtype, device=device), device)
        compile_ms = ms.get("compile", float("nan"))
        lines.append(f"{name:10} {n:10d} {ms['fused']:9.3f} {gbps:6.1f} {ms['eager']:9.3f} {compile_ms:10.3f} "
                     f"{copy:9.1f} {ms['eager'] / ms['fused']:11.1f} {compile_ms / ms['fused']:13.2f} "
                     f"{step_ms:8.2f} {ms['fused'] / step_ms:10.1%}")
        print(lines[-1])
    write_table(lines, args.out, "bench_regularizer")


if __name__ == "__main__":
    main()
