"""Timing: the median, 20th and 80th percentiles of a call, the copy bandwidth, peak memory.

On CUDA, ``triton.testing.do_bench`` (warm-up, then repetitions, the L2 cache cleared before each call), or
CUDA events around each call after clearing L2 by writing a 256 MB buffer when Triton is absent. On the CPU,
``torch.utils.benchmark.Timer.blocked_autorange`` with the current thread count (which the rows record): blocks
of calls until ``min_run_time`` seconds, the quantiles over the blocks' per-call times.
"""

from __future__ import annotations

import statistics

import torch

try:
    import triton.testing as triton_testing
except ImportError:  # Triton is optional
    triton_testing = None

L2_FLUSH_BYTES = 256 << 20


def _quantiles(times_ms: list) -> tuple:
    """(median, p20, p80) of a list of milliseconds."""
    if len(times_ms) == 1:
        return times_ms[0], times_ms[0], times_ms[0]
    cuts = statistics.quantiles(times_ms, n=5, method="inclusive")
    return statistics.median(times_ms), cuts[0], cuts[3]


def _cuda_events(fn, reps: int) -> list:
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    for _ in range(max(3, reps // 10)):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def time_call(fn, device: torch.device, quick: bool = False) -> tuple:
    """(median, p20, p80) milliseconds per call of ``fn``; ``quick``: a few calls (a smoke run's timings)."""
    if device.type == "cuda":
        if triton_testing is not None:
            return tuple(triton_testing.do_bench(fn, warmup=5 if quick else 25, rep=10 if quick else 100,
                                                 quantiles=[0.5, 0.2, 0.8]))
        return _quantiles(_cuda_events(fn, 5 if quick else 100))
    from torch.utils.benchmark import Timer

    fn()  # warm-up: first-call costs (allocator growth, lazy initialisation) are not the op's
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=0.005 if quick else 0.3)
    return _quantiles([1e3 * t for t in measurement.times])


def copy_gbps(x: torch.Tensor, quick: bool = False) -> float:
    """The copy bandwidth at ``x``'s size and dtype (bytes read + written per second, GB/s): ``y.copy_(x)`` on
    CUDA, ``x.clone()`` on the CPU (out of place: the ops allocate fresh outputs and pay the same page faults)."""
    if x.device.type == "cuda":
        y = torch.empty_like(x)
        ms = time_call(lambda: y.copy_(x), x.device, quick)[0]
    else:
        ms = time_call(x.clone, x.device, quick)[0]
    return 2 * x.element_size() * x.numel() / ms / 1e6


def peak_memory_mb(fn, device: torch.device):
    """Peak memory allocated above what was allocated before one call of ``fn`` (MB); None on the CPU, whose
    allocator keeps no such statistics."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20
