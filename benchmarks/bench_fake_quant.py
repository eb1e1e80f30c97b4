"""Throughput of the fake-quant ops: qkernels backends against aten and torch.compile, as a share of copy bandwidth.

Per op (per_tensor, per_channel), mode (fwd, fwdbwd), dtype and element count, the providers are:
``aten`` (``torch.fake_quantize_per_*_affine``, with aten's autograd in fwdbwd); ``compile`` (fwd: torch.compile
of the qkernels reference forward ``fake_quant_*(...)[0]``, whose unused mask Inductor drops; fwdbwd: torch.compile
of the aten op, since round gives the reference zero gradient; Inductor may keep aten's kernel as a fallback
there, as torch 2.11 on CUDA did); and the qkernels backends usable on the device (cuda, triton, cpu).
fwd calls the op on x without grad; fwdbwd sets ``x.grad = None``, calls it on x with requires_grad and runs
``y.backward(dy)``. Per-tensor inputs are 1-D, per-channel ones (256, n/256) with channels on axis 0. Before
timing, qkernels outputs are compared with aten's (torch.equal, every dtype); a mismatch prints a warning.

Bytes per element (b = element size), GB/s = bytes / median time:
  fwd:    read x + write y = 2b, +1 for the bool mask where written: aten 2b+1 (always writes it); qkernels
          (no mask when x does not require grad) and compile (mask dropped) 2b;
  fwdbwd: one minimum for all: fwd 2b+1, bwd read dy + mask, write dx = 2b+1; total 4b+2.
Copy bandwidth (2b) is measured at every size and dtype in the same run: ``y.copy_(x)`` on CUDA, ``x.clone()``
on CPU (out-of-place: the ops allocate fresh outputs and pay the same page faults); pct_of_copy = GB/s / copy
GB/s * 100. CUDA timing: triton.testing.do_bench median (it clears L2 before each call, so small sizes are not
served from cache), CUDA events without triton; CPU: median of time.perf_counter over >= 0.3 s after warm-up.
Calls run back to back: where a provider's host cost (Python dispatch, autograd) exceeds its device work, the
host cost is what is timed.

    python benchmarks/bench_fake_quant.py [--device cpu|cuda] [--quick] [--no-compile] [--out DIR]
"""

import argparse

import torch

import qkernels
from qkernels.reference import fake_quant as ref

from common import bench_ms, parse_common_args, provider_function, runner, sweep, use_provider, warn_if_differs

QMIN, QMAX, SCALE, ZERO_POINT, CHANNELS = -128, 127, 0.02, 3, 256


def make_case(op: str, numel: int, dtype: torch.dtype, device: torch.device):
    """Input x and the (aten, qkernels, reference-forward) functions of x for this op."""
    torch.manual_seed(0)
    if op == "per_tensor":
        x = torch.randn(numel, device=device).to(dtype)
        return x, (lambda t: torch.fake_quantize_per_tensor_affine(t, SCALE, ZERO_POINT, QMIN, QMAX),
                   lambda t: qkernels.fake_quantize_per_tensor_affine(t, SCALE, ZERO_POINT, QMIN, QMAX),
                   lambda t: ref.fake_quant_per_tensor(t, SCALE, ZERO_POINT, QMIN, QMAX)[0])
    x = torch.randn(CHANNELS, numel // CHANNELS, device=device).to(dtype)
    s = torch.rand(CHANNELS, device=device) * 0.02 + 0.01
    z = torch.randint(-16, 17, (CHANNELS,), device=device, dtype=torch.int32)
    return x, (lambda t: torch.fake_quantize_per_channel_affine(t, s, z, 0, QMIN, QMAX),
               lambda t: qkernels.fake_quantize_per_channel_affine(t, s, z, 0, QMIN, QMAX),
               lambda t: ref.fake_quant_per_channel(t, s, z, 0, QMIN, QMAX)[0])


def bytes_per_elem(provider: str, mode: str, b: int) -> int:
    if mode == "fwdbwd":
        return 4 * b + 2
    return 2 * b + 1 if provider == "aten" else 2 * b


def time_mode(case, op, mode, dtype, providers, kernels):
    x, (aten, ours, spec) = case
    timed = {}
    for provider in providers:
        f = provider_function(provider, aten, ours, spec if mode == "fwd" else aten)
        with use_provider(provider, kernels):
            timed[provider] = bench_ms(runner(f, x, mode), x.device)
    return timed, {p: bytes_per_elem(p, mode, x.element_size()) for p in timed}, {}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", choices=("per_tensor", "per_channel"), default=["per_tensor", "per_channel"])
    args, device, sizes = parse_common_args(p)
    if "per_channel" in args.ops and any(n % CHANNELS for n in sizes):
        p.error(f"per_channel needs sizes divisible by {CHANNELS}")

    def checked_case(op, numel, dtype, kernels):
        x, (aten, ours, spec) = case = make_case(op, numel, dtype, device)
        warn_if_differs(kernels, lambda: ours(x), aten(x), f"{op} {dtype} n={numel}")
        return case

    sweep(args, device, sizes, "fake_quant", checked_case, time_mode)


if __name__ == "__main__":
    main()
