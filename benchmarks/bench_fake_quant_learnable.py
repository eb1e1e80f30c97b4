"""Throughput of learnable (LSQ) fake quantization: qkernels backends against aten and torch.compile.

Ops and layouts: ``per_tensor`` (x 1-D), ``per_channel`` (x [256, n/256], axis 0) and ``per_group`` (x
[n/1024, 1024], groups of 128 along axis 1). Providers: ``aten`` (``torch._fake_quantize_learnable_*``; for
per_group, aten's per-channel op on the [n/128, 128] view, which is the same quantization); ``compile``
(fwd: torch.compile of the qkernels reference forward; fwdbwd: torch.compile of the aten function, since the
reference forward has no LSQ gradient); the qkernels backends usable on the device.
fwd runs without grad; fwdbwd makes x, scale and zero_point require grad and runs ``y.backward(dy)``.

Bytes per element (b = element size), the minimum any implementation moves: fwd read x + write y = 2b;
fwdbwd adds read x, dy + write dx = 3b, total 5b (the qparams are negligible). Copy bandwidth and timing as in
bench_fake_quant.py (benchmarks/common.py). On CUDA, ``peak_mb`` is the peak memory allocated above the inputs
during one fwd+bwd step (target: qkernels <= aten).

    python benchmarks/bench_fake_quant_learnable.py [--device cpu|cuda] [--quick] [--no-compile] [--out DIR]
"""

import argparse

import torch

import qkernels
from qkernels.reference import fake_quant_learnable as lref

from common import FIELDS, bench_ms, parse_common_args, provider_function, sweep, use_provider, warn_if_differs

QMIN, QMAX, CHANNELS, ROW, GROUP = -128, 127, 256, 1024, 128
OPS = ("per_tensor", "per_channel", "per_group")


def make_case(op: str, numel: int, dtype: torch.dtype, device: torch.device):
    """(x, scale, zero_point, aten f(x, s, z), qkernels f(x, s, z), reference forward f(x, s, z))."""
    torch.manual_seed(0)
    if op == "per_tensor":
        x = torch.randn(numel, device=device).to(dtype)
        s, z = torch.tensor([0.02], device=device), torch.tensor([2.4], device=device)
        return x, s, z, (
            lambda t, s, z: torch._fake_quantize_learnable_per_tensor_affine(t, s, z, QMIN, QMAX, 1.0),
            lambda t, s, z: qkernels.fake_quantize_learnable_per_tensor_affine(t, s, z, QMIN, QMAX, 1.0),
            lambda t, s, z: lref.learnable_forward(t, s, z, QMIN, QMAX))
    if op == "per_channel":
        x = torch.randn(CHANNELS, numel // CHANNELS, device=device).to(dtype)
        s = torch.rand(CHANNELS, device=device) * 0.02 + 0.01
        z = torch.randint(-16, 17, (CHANNELS,), device=device).float()
        return x, s, z, (
            lambda t, s, z: torch._fake_quantize_learnable_per_channel_affine(t, s, z, 0, QMIN, QMAX, 1.0),
            lambda t, s, z: qkernels.fake_quantize_learnable_per_channel_affine(t, s, z, 0, QMIN, QMAX, 1.0),
            lambda t, s, z: lref.learnable_forward(t, s, z, QMIN, QMAX, axis=0))
    rows = numel // ROW
    x = torch.randn(rows, ROW, device=device).to(dtype)
    s = torch.rand(rows, ROW // GROUP, device=device) * 0.02 + 0.01
    z = torch.randint(-16, 17, (rows, ROW // GROUP), device=device).float()
    return x, s, z, (
        lambda t, s, z: torch._fake_quantize_learnable_per_channel_affine(
            t.reshape(-1, GROUP), s.reshape(-1), z.reshape(-1), 0, QMIN, QMAX, 1.0).view(t.shape),
        lambda t, s, z: qkernels.fake_quantize_learnable_per_group_affine(t, s, z, 1, GROUP, QMIN, QMAX, 1.0),
        lambda t, s, z: lref.learnable_forward(t, s, z, QMIN, QMAX, axis=1, group_size=GROUP))


def runner(f, x, s, z, mode: str):
    if mode == "fwd":
        return lambda: f(x, s, z)
    xg, sg, zg = (t.detach().clone().requires_grad_() for t in (x, s, z))
    dy = torch.randn_like(x)

    def step():
        xg.grad = sg.grad = zg.grad = None
        f(xg, sg, zg).backward(dy)

    return step


def peak_mb(step, device: torch.device):
    """Peak CUDA memory allocated above what is live before one step (None on the CPU)."""
    if device.type != "cuda":
        return None
    step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 2)


def time_mode(case, op, mode, dtype, providers, kernels):
    """Medians per provider; fwdbwd on CUDA also the peak memory of one step (extra CSV field peak_mb)."""
    x, s, z, (aten, ours, spec) = case
    timed, extra = {}, {}
    for provider in providers:
        f = provider_function(provider, aten, ours, spec if mode == "fwd" else aten)
        with use_provider(provider, kernels):
            step = runner(f, x, s, z, mode)
            timed[provider] = bench_ms(step, x.device)
            extra[provider] = {"peak_mb": peak_mb(step, x.device) if mode == "fwdbwd" else None}
        del step
    return timed, {p: (2 if mode == "fwd" else 5) * x.element_size() for p in timed}, extra


def print_peaks(rows, op, dtype_name):
    if any(r["peak_mb"] is not None for r in rows):
        print("peak MB: " + ", ".join(f"{r['provider']}@{r['numel']}={r['peak_mb']}" for r in rows
                                      if (r["op"], r["mode"], r["dtype"]) == (op, "fwdbwd", dtype_name)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    args, device, sizes = parse_common_args(p)
    if any(n % (CHANNELS * ROW) for n in sizes):
        p.error(f"sizes must be multiples of {CHANNELS * ROW}")

    def checked_case(op, numel, dtype, kernels):
        x, s, z, (aten, ours, spec) = case = make_case(op, numel, dtype, device)
        warn_if_differs(kernels, lambda: ours(x, s, z), aten(x, s, z), f"{op} {dtype} n={numel}")
        return case

    sweep(args, device, sizes, "fake_quant_learnable", checked_case, time_mode, FIELDS + ("peak_mb",), print_peaks)


if __name__ == "__main__":
    main()
