"""Throughput of the fused moving-average observer + fake quantization against aten and torch.compile.

One training step of ``fused_moving_avg_obs_fake_quant`` with the observer and fake quant on: ``aten``
(``torch.fused_moving_avg_obs_fake_quant``, float32 only), ``compile`` (torch.compile of the qkernels
reference step, ``qkernels.reference.fused_observer``) and ``qkernels`` on each backend usable on the device
(the observer update: the C++ kernel on CPU tensors, the CUDA or Triton kernels on CUDA ones, PyTorch
ops on the reference backend). Ops:
``per_tensor`` (x 1-D), ``per_channel`` (x [256, n/256], ch_axis 0) and ``per_channel_inner`` (the same
shape with the channel innermost in storage, as an activation in channels-last layout: the kernels' row
mode). Modes: fwd (no grad) and fwdbwd (x requires grad, ``y.backward(dy)``).

Bytes per element (b = element size), the minimum: fwd reads x for the stats and for the fake quant and
writes y = 3b (a fused kernel could read x once: 2b); fwdbwd adds dy and dx = 5b. Copy bandwidth and timing
as in bench_fake_quant.py (benchmarks/common.py).

    python benchmarks/bench_fused_observer.py [--device cpu|cuda] [--quick] [--no-compile] [--out DIR]
"""

import argparse
import math

import torch

import qkernels
from qkernels.reference import fused_observer as ref

from common import (
    bench_ms,
    measure_copy_gbps,
    parse_common_args,
    report,
    result_rows,
    runner,
    start_run,
    write_csv,
)

QMIN, QMAX, CHANNELS, AVERAGING = 0, 255, 256, 0.01
OPS = ("per_tensor", "per_channel", "per_channel_inner")


def make_state(op: str, device: torch.device):
    """Fresh running stats and qparams, sized (per channel) as after the first step."""
    n = 1 if op == "per_tensor" else CHANNELS
    running = [torch.full((n,), math.inf, device=device), torch.full((n,), -math.inf, device=device)]
    if op == "per_tensor":
        running = [t.reshape(()) for t in running]
    return running + [torch.ones(n, device=device), torch.zeros(n, dtype=torch.int32, device=device)]


def make_case(op: str, numel: int, dtype: torch.dtype, device: torch.device):
    """(x, fn(impl) -> step function of x) for this op; impl is torch's op, qkernels' or the reference."""
    torch.manual_seed(0)
    if op == "per_tensor":
        x = torch.randn(numel, device=device)
    elif op == "per_channel":
        x = torch.randn(CHANNELS, numel // CHANNELS, device=device)
    else:  # [C, n/C] with strides (1, C); .to keeps them
        x = torch.randn(numel // CHANNELS, CHANNELS, device=device).t()
    x = x.to(dtype)
    on = torch.ones(1, dtype=torch.long, device=device)

    def bind(impl):
        state = make_state(op, device)
        return lambda t: impl(t, on, on, *state, AVERAGING, QMIN, QMAX, 0, op != "per_tensor", False)

    return x, bind


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    args, device, sizes = parse_common_args(p)
    if any(n % CHANNELS for n in sizes):
        p.error(f"sizes must be multiples of {CHANNELS}")
    out, meta, kernels, providers = start_run(args, device)
    rows, copy_gbps, csv_path = [], {}, out / f"fused_observer_{device.type}.csv"
    for op in args.ops:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            b = torch.empty((), dtype=dtype).element_size()
            for numel in sizes:
                x, bind = make_case(op, numel, dtype, device)
                if (dtype, numel) not in copy_gbps:
                    copy_gbps[dtype, numel] = measure_copy_gbps(x, device)
                for mode in args.modes:
                    timed = {}
                    for provider in providers:
                        aten_based = provider == "aten" or (provider == "compile" and mode == "fwdbwd")
                        if aten_based and dtype != torch.float32:
                            continue  # torch's op takes float32 only
                        if provider == "compile":
                            torch._dynamo.reset()
                            spec = ref.fused_moving_avg_obs_fake_quant if mode == "fwd" else (
                                torch.fused_moving_avg_obs_fake_quant)
                            f = torch.compile(bind(spec), dynamic=False)
                        else:
                            f = bind(torch.fused_moving_avg_obs_fake_quant if provider == "aten"
                                     else qkernels.fused_moving_avg_obs_fake_quant)
                        with qkernels.use_backend(provider if provider in kernels else "auto"):
                            timed[provider] = bench_ms(runner(f, x, mode), device)
                    if "aten" not in timed:  # speedups are against aten: time aten on the float32 input
                        f = bind(torch.fused_moving_avg_obs_fake_quant)
                        timed = {"aten": bench_ms(runner(f, x.float(), mode), device), **timed}
                    bpe = {provider: (3 if mode == "fwd" else 5) * b for provider in timed}
                    rows += result_rows(meta, dict(op=op, mode=mode, dtype=dtype_name), timed, bpe, numel,
                                        copy_gbps[dtype, numel])
                del x
            report(rows, meta, out, "fused_observer", op, dtype_name, args.modes, providers,
                   {n: copy_gbps[dtype, n] for n in sizes}, device.type)
            write_csv(csv_path, rows)
    print(f"\nwrote {csv_path}")


if __name__ == "__main__":
    main()
