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

from common import (
    FIELDS,
    bench_ms,
    measure_copy_gbps,
    parse_common_args,
    report,
    result_rows,
    start_run,
    warn_if_differs,
    write_csv,
)

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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    args, device, sizes = parse_common_args(p)
    if any(n % (CHANNELS * ROW) for n in sizes):
        p.error(f"sizes must be multiples of {CHANNELS * ROW}")
    out, meta, kernels, providers = start_run(args, device)

    rows, copy_gbps, csv_path = [], {}, out / f"fake_quant_learnable_{device.type}.csv"
    for op in args.ops:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            b = torch.empty((), dtype=dtype).element_size()
            for numel in sizes:
                x, s, z, (aten, ours, spec) = make_case(op, numel, dtype, device)
                if (dtype, numel) not in copy_gbps:
                    copy_gbps[dtype, numel] = measure_copy_gbps(x, device)
                warn_if_differs(kernels, lambda: ours(x, s, z), aten(x, s, z), f"{op} {dtype_name} n={numel}")
                for mode in args.modes:
                    timed, peaks = {}, {}
                    for provider in providers:
                        if provider == "compile":
                            torch._dynamo.reset()  # fresh static graphs for every shape, no recompile limit
                            f = torch.compile(spec if mode == "fwd" else aten, dynamic=False)
                        else:
                            f = aten if provider == "aten" else ours
                        with qkernels.use_backend(provider if provider in kernels else "auto"):
                            step = runner(f, x, s, z, mode)
                            timed[provider] = bench_ms(step, device)
                            if mode == "fwdbwd":
                                peaks[provider] = peak_mb(step, device)
                        del step
                    bpe = {provider: (2 if mode == "fwd" else 5) * b for provider in timed}
                    new = result_rows(meta, dict(op=op, mode=mode, dtype=dtype_name), timed, bpe, numel,
                                      copy_gbps[dtype, numel])
                    for row in new:
                        row["peak_mb"] = peaks.get(row["provider"])
                    rows += new
                del x
            report(rows, meta, out, "fake_quant_learnable", op, dtype_name, args.modes, providers,
                   {n: copy_gbps[dtype, n] for n in sizes}, device.type)
            if "fwdbwd" in args.modes and device.type == "cuda":
                print("peak MB: " + ", ".join(f"{r['provider']}@{r['numel']}={r['peak_mb']}" for r in rows
                                              if (r["op"], r["mode"], r["dtype"]) == (op, "fwdbwd", dtype_name)))
            write_csv(csv_path, rows, FIELDS + ("peak_mb",))  # rewritten after each (op, dtype)
    print(f"\nwrote {csv_path}")


if __name__ == "__main__":
    main()
