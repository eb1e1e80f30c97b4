"""INT4 stochastic gradient quantization (Kim et al. 2024): ``qkernels.quantize_gradient`` per tensor and per row
against the released code's formulation in eager PyTorch and ``torch.compile`` of it, on gradients shaped like
ResNet-18 and ViT-B/16 layer outputs.

Providers, each one quantization of a fresh-looking gradient (the same tensor every call; γ = 0.8):

* ``qkernels`` (``--backend``, default auto) and, with ``--packed``, ``quantize_gradient_packed``;
* ``eager``: the released ``grad_quant`` backward (note §1.2): ``gmax = max|G|`` (per row: ``amax`` over the
  row), ``c = γ gmax``, ``s = 2c / (2^b − 2)``, ``round(clamp((G + c) / s + U[−½, ½), 0, 2^b − 2)) · s − c``;
* ``compile``: ``torch.compile`` of it.

Minimal traffic: G read twice (the maxima, then the quantization) and the output written once: 3b bytes per
element (b = element size; packed: 2b + ½). GB/s = those bytes / time; ``copy`` is a copy of G's size (``clone``
on the CPU). Targets: CPU >= 3x eager, >= 1x compile; GPU >= 80 % of the minimal-traffic bandwidth.

    python benchmarks/bench_grad_quant.py [--device cpu|cuda] [--backend auto|cpu|cuda|triton|reference]
        [--batch 256] [--dtype float32|bfloat16|float16] [--threads N] [--no-compile] [--packed] [--out DIR]
"""

import argparse

import torch

import qkernels

from common import add_table_args, bench_ms, measure_copy_gbps, table_setup, write_table

GAMMA, BITS = 0.8, 4
# (name, the output's shape per sample): ResNet-18 (ImageNet) conv outputs, ViT-B/16 token activations and MLP
SHAPES = {
    "resnet18 layer1 64x56x56": (64, 56, 56),
    "resnet18 layer3 256x14x14": (256, 14, 14),
    "vit-b16 tokens 197x768": (197, 768),
    "vit-b16 mlp 197x3072": (197, 3072),
}


def released(g, per_row):
    """The released code's quantizer (note §1.2), on a float32 copy."""
    x = g.float()
    flat = x.reshape(x.shape[0], -1) if per_row else x.reshape(1, -1)
    c = GAMMA * flat.abs().amax(1, keepdim=True)
    top = 2 ** BITS - 2
    s = 2 * c / top
    v = torch.round(torch.clamp((flat + c) / s + (torch.rand_like(flat) - 0.5), 0, top))
    return (v * s - c).reshape(g.shape).to(g.dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_table_args(p, "bench_grad_quant")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--packed", action="store_true", help="also time quantize_gradient_packed")
    args = p.parse_args()
    if args.batch < 1:
        p.error("--batch: must be >= 1")
    dtype, device, header = table_setup(p, args)
    b = dtype.itemsize
    lines = [f"{header}, batch {args.batch}, INT4 stochastic",
             f"{'shape':28} {'per':>6} {'ours ms':>8} {'GB/s':>6} {'packed ms':>9} {'eager ms':>9} "
             f"{'compile ms':>10} {'copy GB/s':>9} {'eager/ours':>10} {'compile/ours':>12}"]
    print(*lines, sep="\n")
    compiled = None if args.no_compile else torch.compile(released, dynamic=False)
    for name, shape in SHAPES.items():
        g = torch.randn((args.batch,) + shape, device=device).to(dtype)
        copy = measure_copy_gbps(g, device)
        for granularity in ("tensor", "row"):
            per_row = granularity == "row"

            def ours(packed=False):
                with qkernels.use_backend(args.backend):
                    quantize = qkernels.quantize_gradient_packed if packed else qkernels.quantize_gradient
                    return quantize(g, BITS, GAMMA, "stochastic", granularity)

            ms = {"ours": bench_ms(ours, device), "eager": bench_ms(lambda: released(g, per_row), device)}
            ms["packed"] = bench_ms(lambda: ours(True), device) if args.packed else float("nan")
            ms["compile"] = bench_ms(lambda: compiled(g, per_row), device) if compiled else float("nan")
            gbps = 3 * b * g.numel() / ms["ours"] / 1e6
            lines.append(f"{name:28} {granularity:>6} {ms['ours']:8.2f} {gbps:6.1f} {ms['packed']:9.2f} "
                         f"{ms['eager']:9.2f} {ms['compile']:10.2f} {copy:9.1f} {ms['eager'] / ms['ours']:10.1f} "
                         f"{ms['compile'] / ms['ours']:12.2f}")
            print(lines[-1])
    write_table(lines, args.out, "bench_grad_quant")


if __name__ == "__main__":
    main()
