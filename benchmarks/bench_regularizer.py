"""The fused oscillation regularizer (Wenshøj et al. 2025), value and gradient over a whole model's weights, against
the official formulation in eager PyTorch and torch.compile of it.

Weight sets: every ``weight`` parameter (convolutions, linears and norm layers, as the official code) of an
ImageNet ResNet-18 (11.7M elements in 41 tensors) and of the harness's CIFAR ResNet-20 (0.27M in 41 tensors).
Providers, each one ``value.backward()`` from fresh gradients:

* ``fused``: ``qkernels.oscillation.regularizer`` (one fused call for the list) on the chosen backend;
* ``eager``: the official loop per tensor: ``s = max|W| / L`` (through torch.max), ``q = s · round(W / s)`` with a
  straight-through round, ``sum_l mean(q^2 - W^2)``, autograd's backward;
* ``compile``: ``torch.compile`` of that function (forward and backward).

Minimal traffic: the fused op reads the weights three times (the maxima, the sums, the backward) and writes the
gradient once: 4b bytes per element (b = element size). GB/s = those bytes / time; ``copy`` is the bandwidth of
``clone`` of a tensor of the set's size. Targets (CPU): >= 5x eager, >= 1.5x compile.

    python benchmarks/bench_regularizer.py [--backend cpu] [--dtype float32|bfloat16|float16] [--threads N]
                                           [--sets resnet18 resnet20] [--bits 4] [--no-compile]
"""

import argparse

import torch
from torch import nn

import qkernels
from qkernels.train.models import build

from common import bench_ms, measure_copy_gbps


def _resnet18_shapes():
    """The weight shapes of torchvision's ResNet-18 (no torchvision here): convs, BN weights, the classifier."""
    shapes = [(64, 3, 7, 7), (64,)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            first = block == 0
            shapes += [(cout, cin if first else cout, 3, 3), (cout,), (cout, cout, 3, 3), (cout,)]
            if first and (stride != 1 or cin != cout):
                shapes += [(cout, cin, 1, 1), (cout,)]
        cin = cout
    return shapes + [(1000, 512)]


def weight_sets(dtype):
    torch.manual_seed(0)
    resnet20 = build("resnet20", 3, 32, 10)
    sets = {
        "resnet18": [torch.randn(shape) * 0.05 for shape in _resnet18_shapes()],
        "resnet20": [m.weight.detach().clone() for m in resnet20.modules()
                     if isinstance(getattr(m, "weight", None), nn.Parameter)],
    }
    return {name: [w.to(dtype).requires_grad_() for w in ws] for name, ws in sets.items()}


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def official(weights, bits):
    """The official ``OsciQuantLoss`` term (λ = 1)."""
    levels = 2 ** (bits - 1) - 1
    total = 0.0
    for w in weights:
        s = w.abs().max() / levels
        q = _RoundSTE.apply(w / s) * s
        total = total + (q * q - w * w).mean()
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cpu", choices=("cpu", "reference"),
                   help="the tensors are CPU tensors: the CPU backends only")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--threads", type=int)
    p.add_argument("--sets", nargs="+", choices=("resnet18", "resnet20"), default=["resnet18", "resnet20"])
    p.add_argument("--bits", type=int, default=4, choices=range(2, 9), metavar="2..8")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device("cpu")
    print(f"backend {args.backend}, {args.dtype}, {args.bits} bits, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"{'set':10} {'elements':>10} {'fused ms':>9} {'GB/s':>6} {'eager ms':>9} {'compile ms':>10} "
          f"{'copy GB/s':>9} {'eager/fused':>11} {'compile/fused':>13}")
    compiled = None if args.no_compile else torch.compile(official)
    for name in args.sets:
        weights = weight_sets(dtype)[name]

        def step(f):
            def run():
                for w in weights:
                    w.grad = None
                with qkernels.use_backend(args.backend):  # the fused backward runs on it too
                    f().backward()
            return run

        def fused():
            return qkernels.oscillation.regularizer(weights, args.bits)

        providers = {"fused": fused, "eager": lambda: official(weights, args.bits)}
        if compiled is not None:
            providers["compile"] = lambda: compiled(weights, args.bits)
        ms = {k: bench_ms(step(f), device) for k, f in providers.items()}
        n = sum(w.numel() for w in weights)
        gbps = 4 * dtype.itemsize * n / ms["fused"] / 1e6
        copy = measure_copy_gbps(torch.empty(n, dtype=dtype), device)
        compile_ms = ms.get("compile", float("nan"))
        print(f"{name:10} {n:10d} {ms['fused']:9.3f} {gbps:6.1f} {ms['eager']:9.3f} {compile_ms:10.3f} "
              f"{copy:9.1f} {ms['eager'] / ms['fused']:11.1f} {compile_ms / ms['fused']:13.2f}")


if __name__ == "__main__":
    main()
