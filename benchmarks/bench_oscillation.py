"""The fused oscillation-tracked fake-quant step (forward + backward, tracking and freezing on) against the
official-style PyTorch tracker and against plain learnable fake quantization, on realistic weight shapes.

Providers, each one training step of one weight (per-channel along axis 0, int4 grid [-8, 7]; w and the scale
require grad; ``backward(dy)``):

* ``fused``: ``qkernels.oscillation_fake_quantize`` on the chosen backend (default cpu), tracking on, freezing on
  (threshold 0.02, EMA integer);
* ``tracker``: plain torch as the official code does it: the integer ``clamp(round(w * 1/s) + z)`` with a
  straight-through round, ``qkernels.reference.oscillation_fake_quant.OfficialTracker`` on it (lazy float32 state,
  frozen substitution), the output ``s * (x - z)`` and autograd's backward;
* ``learnable``: ``qkernels.fake_quantize_learnable_per_channel_affine`` (no tracking) on the same backend.

Bytes per element (b = the weight's element size), the least each moves: learnable 5b (fwd read w, write y; bwd
read w, dy, write dw); fused 5b + 28 (x_int and mask written and read back: 4; the 12-byte state read and written:
24). GB/s = those bytes / time; ``copy`` is ``w.clone()``'s (out-of-place, as the ops' fresh outputs). Ratios:
``tracker / fused`` (target >= 10) and ``fused / learnable`` (target <= 1.3).

    python benchmarks/bench_oscillation.py [--device cpu|cuda] [--backend auto|cpu|cuda|triton|reference]
                                           [--dtype float32|bfloat16|float16] [--threads N] [--out DIR]
"""

import argparse

import torch

import qkernels
from qkernels.reference.oscillation_fake_quant import OfficialTracker

from common import add_table_args, bench_ms, measure_copy_gbps, table_setup, write_table

QMIN, QMAX, MOMENTUM, THRESHOLD = -8, 7, 0.01, 0.02
SHAPES = {
    "resnet18 conv 64x64x3x3": (64, 64, 3, 3),
    "resnet18 conv 512x512x3x3": (512, 512, 3, 3),
    "mbv2 depthwise 960x1x3x3": (960, 1, 3, 3),
    "mbv2 pointwise 320x960x1x1": (320, 960, 1, 1),
    "linear 4096x4096": (4096, 4096),
}


def make_steps(shape, dtype, backend, device):
    """{provider: one fwd+bwd step}; the weight moves a little between steps so that integers change."""
    torch.manual_seed(0)
    w = (torch.randn(shape, device=device) * 0.05).to(dtype).requires_grad_()
    scale = (torch.rand(shape[0], device=device) * 0.01 + 0.01).requires_grad_()
    zero_point = torch.zeros(shape[0], device=device)
    dy = torch.randn(shape, device=device).to(dtype)
    state = qkernels.new_oscillation_state(w)
    threshold, tracking = torch.tensor(THRESHOLD, device=device), torch.tensor(True, device=device)
    view = (-1,) + (1,) * (len(shape) - 1)
    tracker = OfficialTracker(MOMENTUM, THRESHOLD, use_ema_x_int=True)

    def fused():
        with qkernels.use_backend(backend):
            qkernels.oscillation_fake_quantize(w, scale, zero_point, 0, QMIN, QMAX, state, momentum=MOMENTUM,
                                               freeze_threshold=threshold, tracking=tracking).backward(dy)

    def official():
        s, z = scale.view(view), zero_point.view(view)
        v = w.float() * torch.reciprocal(s)
        x_int = (v + (torch.round(v) - v).detach() + z).clamp(QMIN, QMAX)
        x = tracker(x_int.detach())
        x = x_int + (x - x_int).detach()  # the frozen integers, straight through
        ((x - z) * s).to(dtype).backward(dy)

    def learnable():
        with qkernels.use_backend(backend):
            qkernels.fake_quantize_learnable_per_channel_affine(w, scale, zero_point, 0, QMIN, QMAX,
                                                                1.0).backward(dy)

    def step(f):
        def run():
            w.grad = scale.grad = None
            f()
        return run

    return w, {"fused": step(fused), "tracker": step(official), "learnable": step(learnable)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_table_args(p, "bench_oscillation")
    args = p.parse_args()
    dtype, device, header = table_setup(p, args)
    b = dtype.itemsize
    lines = [header,
             f"{'shape':28} {'fused ms':>9} {'GB/s':>6} {'tracker ms':>10} {'learn ms':>9} {'GB/s':>6} "
             f"{'copy GB/s':>9} {'tracker/fused':>13} {'fused/learn':>11}"]
    print(*lines, sep="\n")
    for name, shape in SHAPES.items():
        w, steps = make_steps(shape, dtype, args.backend, device)
        ms = {k: bench_ms(f, device) for k, f in steps.items()}
        n = w.numel()
        fused_gbps = (5 * b + 28) * n / ms["fused"] / 1e6
        learn_gbps = 5 * b * n / ms["learnable"] / 1e6
        copy = measure_copy_gbps(w.detach(), device)
        lines.append(f"{name:28} {ms['fused']:9.3f} {fused_gbps:6.1f} {ms['tracker']:10.3f} "
                     f"{ms['learnable']:9.3f} {learn_gbps:6.1f} {copy:9.1f} {ms['tracker'] / ms['fused']:13.1f} "
                     f"{ms['fused'] / ms['learnable']:11.2f}")
        print(lines[-1])
    write_table(lines, args.out, "bench_oscillation")


if __name__ == "__main__":
    main()
