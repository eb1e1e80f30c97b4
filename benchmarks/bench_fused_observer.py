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

from common import bench_ms, parse_common_args, provider_function, runner, sweep, use_provider

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


def time_mode(case, op, mode, dtype, providers, kernels):
    """Medians per provider; aten and the compiled aten op take float32 only: for other dtypes aten is timed on
    the float32 input (the speedups are against it) and the compiled aten op is left out."""
    x, bind = case
    timed = {}
    for provider in providers:
        aten_based = provider == "aten" or (provider == "compile" and mode == "fwdbwd")
        if aten_based and dtype != torch.float32:
            continue
        spec = ref.fused_moving_avg_obs_fake_quant if mode == "fwd" else torch.fused_moving_avg_obs_fake_quant
        f = provider_function(provider, bind(torch.fused_moving_avg_obs_fake_quant),
                              bind(qkernels.fused_moving_avg_obs_fake_quant), bind(spec))
        with use_provider(provider, kernels):
            timed[provider] = bench_ms(runner(f, x, mode), x.device)
    if "aten" not in timed:
        timed = {"aten": bench_ms(runner(bind(torch.fused_moving_avg_obs_fake_quant), x.float(), mode), x.device),
                 **timed}
    return timed, {p: (3 if mode == "fwd" else 5) * x.element_size() for p in timed}, {}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    args, device, sizes = parse_common_args(p)
    if any(n % CHANNELS for n in sizes):
        p.error(f"sizes must be multiples of {CHANNELS}")
    sweep(args, device, sizes, "fused_observer", lambda op, numel, dtype, kernels: make_case(op, numel, dtype, device),
          time_mode)


if __name__ == "__main__":
    main()
