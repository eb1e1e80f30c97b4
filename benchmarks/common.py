"""Shared plumbing of the two scripts that are not ``qkernels-bench`` ops: ``bench_host_time.py`` (host time per
eager call) and ``bench_regularizer.py`` (the regularizer over a whole model's weight list). Timing, copy
bandwidth, device names and the live backends come from ``qkernels.bench``; this adds the scripts' options,
output folders and files.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import torch

from qkernels.bench import runner, timing
from qkernels.bench.environment import device_name, metadata


def bench_ms(fn, device: torch.device) -> float:
    """Median milliseconds per call of fn (``qkernels.bench.timing.time_call``)."""
    return timing.time_call(fn, device)[0]


def measure_copy_gbps(x: torch.Tensor, device: torch.device) -> float:
    """Copy bandwidth at x's size and dtype (``qkernels.bench.timing.copy_gbps``)."""
    return timing.copy_gbps(x.to(device))


def kernel_backends(device: torch.device) -> list[str]:
    """The qkernels kernel backends worth timing on this device (``runner.default_providers``'s)."""
    return [p[len("qkernels-"):] for p in runner.default_providers(device) if p.startswith("qkernels-")]


def setup_run(device: torch.device, out: Path | None, threads: int | None):
    """(output folder, row metadata: ``qkernels.bench.environment.metadata``). GPU results go to
    benchmarks/results/<gpu>/ (committed), CPU runs to the git-ignored results/local/<cpu>/."""
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    results = Path(__file__).resolve().parent / "results" / ("local" if device.type == "cpu" else "")
    out = out or results / re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")
    out.mkdir(parents=True, exist_ok=True)
    meta = metadata(device)
    print(" | ".join(f"{k}: {v}" for k, v in meta.items()))
    return out, meta


def write_csv(path: Path, rows, fields):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def add_table_args(p: argparse.ArgumentParser, stem: str) -> None:
    """The options of a benchmark that prints one table: --device, --backend, --dtype, --threads, --out
    (DIR/<stem>.txt, as tools/gpu_session.sh passes it)."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto", choices=("auto", "cpu", "cuda", "triton", "reference"))
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, help=f"also write the table to DIR/{stem}.txt")


def table_setup(p: argparse.ArgumentParser, args) -> tuple[torch.dtype, torch.device, str]:
    """After parsing add_table_args' options: (dtype, device, the table's first line: device, backend, dtype,
    threads, torch), the thread count set."""
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    return getattr(torch, args.dtype), device, (f"{device_name(device)}, backend {args.backend}, {args.dtype}, "
                                                f"{torch.get_num_threads()} threads, torch {torch.__version__}")


def write_table(lines: list[str], out: Path | None, stem: str) -> None:
    """The printed table, also to ``out/<stem>.txt`` when ``out`` is given."""
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.txt").write_text("\n".join(lines) + "\n")
