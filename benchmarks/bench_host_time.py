"""Host time of eager calls: microseconds per call on small tensors, qkernels against aten.

Below a few million elements a fake-quant call costs more CPU time (argument parsing, checks, allocation,
autograd bookkeeping, the launch) than device time, and fwd+bwd throughput is bound by it (benchmarks/NOTES.md).
This measures it directly: a loop of eager calls on 1,024-element tensors, ``--rounds`` rounds of ``--calls``
calls, providers interleaved round by round (so slow phases of a shared machine hit every provider alike), on
CUDA with one synchronize per round (a host-bound loop's time per call is the host time). Reported: the minimum
over rounds (the least disturbed) and the median, in microseconds per call.

Calls (aten's equivalents in brackets): ``fake_quant_per_tensor`` (Python-number qparams),
``fake_quant_per_tensor_tensor_qparams``, ``fake_quant_per_channel`` ([16, 64], axis 0, int32 zero point),
``learnable_per_tensor``, ``learnable_per_channel`` ([16, 64], axis 0), ``fused_observer_per_tensor`` and
``fused_observer_per_channel`` ([16, 64], axis 0, symmetric; observer and fake quant on); each ``fwd`` (no grad)
and ``fwdbwd`` (inputs requiring grad, ``backward(ones)``).

    python benchmarks/bench_host_time.py [--device cpu|cuda] [--rounds 9] [--calls 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

import qkernels

from common import kernel_backends, setup_run, write_csv

FIELDS = ("date", "device_name", "threads", "commit", "torch", "triton", "cuda", "call", "mode", "provider", "min_us",
          "median_us", "vs_aten_min")


def calls(device: torch.device):
    """name -> (inputs, fn(module, *inputs), how many leading inputs get gradients in fwdbwd); module is torch
    (aten) or qkernels."""
    def t(*a, **k):
        return torch.tensor(*a, device=device, **k)

    x = torch.randn(1024, device=device)
    on = t([1])
    state = [t([float("inf")]), t([float("-inf")]), t([1.0]), t([0], dtype=torch.int32)]
    channel_state = [torch.full((16,), float("inf"), device=device), torch.full((16,), float("-inf"), device=device),
                     torch.ones(16, device=device), torch.zeros(16, dtype=torch.int32, device=device)]
    learnable = {torch: torch._fake_quantize_learnable_per_tensor_affine,
                 qkernels: qkernels.fake_quantize_learnable_per_tensor_affine}
    learnable_channel = {torch: torch._fake_quantize_learnable_per_channel_affine,
                         qkernels: qkernels.fake_quantize_learnable_per_channel_affine}
    return {
        "fake_quant_per_tensor": ([x], lambda m, a: m.fake_quantize_per_tensor_affine(a, 0.05, 3, -128, 127), 1),
        "fake_quant_per_tensor_tensor_qparams": (
            [x, t([0.05]), t([3], dtype=torch.int32)],
            lambda m, a, s, z: m.fake_quantize_per_tensor_affine(a, s, z, -128, 127), 1),
        "fake_quant_per_channel": (
            [x.view(16, 64), torch.rand(16, device=device) + 0.01, torch.zeros(16, dtype=torch.int32, device=device)],
            lambda m, a, s, z: m.fake_quantize_per_channel_affine(a, s, z, 0, -128, 127), 1),
        "learnable_per_tensor": (
            [x, t([0.05]), t([3.0])], lambda m, a, s, z: learnable[m](a, s, z, -128, 127, 1.0), 3),
        "learnable_per_channel": (
            [x.view(16, 64), torch.rand(16, device=device) + 0.01, torch.zeros(16, device=device)],
            lambda m, a, s, z: learnable_channel[m](a, s, z, 0, -128, 127, 1.0), 3),
        "fused_observer_per_tensor": (
            [x], lambda m, a: m.fused_moving_avg_obs_fake_quant(a, on, on, *state, 0.01, -128, 127, 0, False, False),
            1),
        "fused_observer_per_channel": (  # (a weight's fake quant in torch.ao's default QAT qconfigs)
            [x.view(16, 64)],
            lambda m, a: m.fused_moving_avg_obs_fake_quant(a, on, on, *channel_state, 0.01, -128, 127, 0, True, True),
            1),
    }


def step(module, fn, inputs, grads: int, mode: str):
    """fwd: fn on the inputs; fwdbwd: fn on copies of them, the first ``grads`` requiring grad, then
    backward(ones)."""
    if mode == "fwd":
        return lambda: fn(module, *inputs)
    leaves = [t.detach().clone().requires_grad_(i < grads) for i, t in enumerate(inputs)]
    ones = torch.ones_like(leaves[0])
    return lambda: fn(module, *leaves).backward(ones)


def time_rounds(steps: dict, device: torch.device, rounds: int, n: int) -> dict:
    """provider -> microseconds per call of each round; steps: provider -> (qkernels backend or None, call)."""
    per_call = {provider: [] for provider in steps}
    for r in range(rounds + 1):  # round 0 warms up (caches, the backend choice, allocator pools)
        for provider, (backend, f) in steps.items():
            with qkernels.use_backend(backend) if backend else contextlib.nullcontext():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(n):
                    f()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            if r:
                per_call[provider].append((time.perf_counter() - start) / n * 1e6)
    return per_call


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=2000, help="calls per round")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on cpu")
    p.add_argument("--out", type=Path, help="default: as the other benchmarks (benchmarks/common.py)")
    args = p.parse_args()
    device = torch.device(args.device)
    out, meta = setup_run(device, args.out, args.threads)
    kernels = kernel_backends(device)
    providers = ["aten"] + kernels
    print(f"\n== host time per eager call on {meta['device_name']}, 1,024 elements   [us per call: min over "
          f"{args.rounds} rounds (median)]")
    print(f"{'call':38s} {'mode':6s} | " + " | ".join(f"{p:^17}" for p in providers))
    rows = []
    for name, (inputs, fn, grads) in calls(device).items():
        for mode in ("fwd", "fwdbwd"):
            steps = {p: (None if p == "aten" else p, step(torch if p == "aten" else qkernels, fn, inputs, grads, mode))
                     for p in providers}
            per_call = time_rounds(steps, device, args.rounds, args.calls)
            aten = min(per_call["aten"])
            for provider, v in per_call.items():
                rows.append(dict(meta, call=name, mode=mode, provider=provider, min_us=round(min(v), 2),
                                 median_us=round(statistics.median(v), 2), vs_aten_min=round(min(v) / aten, 3)))
            print(f"{name:38s} {mode:6s} | " + " | ".join(
                f"{min(v):6.1f} ({statistics.median(v):6.1f})" for v in per_call.values()))
    path = out / f"host_time_{device.type}.csv"
    write_csv(path, rows, FIELDS)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
