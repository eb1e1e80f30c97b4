"""Shared benchmark plumbing: timing, device and git metadata, output folders, tables, plots, CSV.

Timing: on CUDA, triton.testing.do_bench's median (it clears L2 before each call), CUDA events without
triton; on the CPU, the median of time.perf_counter over >= 0.3 s after two warm-up calls.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import subprocess
import time
from pathlib import Path

import torch

try:
    import triton
    import triton.testing
except ImportError:
    triton = None

from qkernels import backends

KERNEL_BACKENDS = ("cuda", "triton", "cpu")
FIELDS = ("device_name", "torch_version", "triton_version", "git_sha", "op", "mode", "dtype", "numel", "provider",
          "median_ms", "gbps", "bytes_per_elem", "copy_gbps", "pct_of_copy", "speedup_vs_aten")


def parse_size(text: str) -> int:
    return 1 << int(text[2:]) if text.startswith("2^") else int(text)


def size_label(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else str(n)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        return re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M).group(1).strip()
    except (OSError, AttributeError):
        return "cpu"


def git_sha() -> str:
    """HEAD's short sha, "-dirty" when tracked files differ from it; "none" outside a git checkout."""
    git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
    try:
        sha = subprocess.run(git + ["rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "none"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _cuda_events_ms(fn, reps: int = 100) -> float:
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")  # evict L2 before each call, as do_bench
    for _ in range(10):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def bench_ms(fn, device: torch.device) -> float:
    """Median milliseconds per call of fn."""
    if device.type == "cuda":
        if triton is None:
            return _cuda_events_ms(fn)
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    times = []
    for i in range(1000):  # the first two calls warm up; then at least 5 calls and 0.3 s
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if i >= 6 and sum(times[2:]) >= 0.3:
            break
    return 1e3 * statistics.median(times[2:])


def parse_common_args(p: argparse.ArgumentParser, cpu_sizes=(20, 22), cuda_sizes=(20, 22, 24, 26, 28)):
    """Adds the options every benchmark takes, parses; returns (args, device, sizes)."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="+", type=parse_size, help="element counts (e.g. 1048576 or 2^20)")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16", "float16"), default=["float32", "bfloat16"])
    p.add_argument("--modes", nargs="+", choices=("fwd", "fwdbwd"), default=["fwd", "fwdbwd"])
    p.add_argument("--out", type=Path,
                   help="default: benchmarks/results/<gpu-name>/, or results/local/<cpu-name>/ on CPU")
    p.add_argument("--quick", action="store_true", help="2^20 elements only (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on cpu")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    default = cuda_sizes if device.type == "cuda" else cpu_sizes
    sizes = [1 << 20] if args.quick else args.sizes or [1 << k for k in default]
    return args, device, sizes


def add_table_args(p: argparse.ArgumentParser, stem: str) -> None:
    """The options of a benchmark that prints one table (bench_oscillation, bench_regularizer, bench_grad_quant):
    --device, --backend, --dtype, --threads, --out (DIR/<stem>.txt, as tools/gpu_session.sh passes it)."""
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


def measure_copy_gbps(x: torch.Tensor, device: torch.device) -> float:
    """Copy bandwidth for x's size and dtype (2 bytes moved per byte): ``y.copy_(x)`` on CUDA, ``x.clone()`` on
    the CPU (out of place: the ops allocate fresh outputs and pay the same page faults)."""
    y = torch.empty_like(x)
    ms = bench_ms((lambda: y.copy_(x)) if device.type == "cuda" else x.clone, device)
    return 2 * x.element_size() * x.numel() / ms / 1e6


def setup_run(device: torch.device, out: Path | None, threads: int | None):
    """(output folder, row metadata). GPU results go to benchmarks/results/<gpu>/ (committed), CPU runs to the
    git-ignored results/local/<cpu>/."""
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    name = device_name(device)
    results = Path(__file__).resolve().parent / "results" / ("local" if device.type == "cpu" else "")
    out = out or results / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        name += f" ({torch.get_num_threads()} thread{'' if torch.get_num_threads() == 1 else 's'})"
    meta = dict(device_name=name, torch_version=torch.__version__, git_sha=git_sha(),
                triton_version=getattr(triton, "__version__", "none"))
    print(" | ".join(f"{k}: {v}" for k, v in meta.items()))
    return out, meta


def start_run(args, device: torch.device):
    """(output folder, row metadata, kernel backends, providers: aten, compile unless --no-compile, kernels)."""
    out, meta = setup_run(device, args.out, args.threads)
    kernels = kernel_backends(device)
    if args.no_compile:
        print("skipping compile: --no-compile")
    return out, meta, kernels, ["aten"] + ([] if args.no_compile else ["compile"]) + kernels


def runner(f, x: torch.Tensor, mode: str):
    """fwd: ``f(x)`` without grad; fwdbwd: ``f`` on x requiring grad, then ``backward(dy)``."""
    if mode == "fwd":
        return lambda: f(x)
    xg, dy = x.detach().requires_grad_(), torch.randn_like(x)

    def step():
        xg.grad = None
        f(xg).backward(dy)

    return step


def kernel_backends(device: torch.device) -> list[str]:
    """The qkernels backends worth timing on this device (printing why the others are skipped)."""
    kernels = []
    for backend in KERNEL_BACKENDS:
        reason = backends.availability(backend, device.type)
        if reason is None and backend == "triton" and device.type == "cpu":
            reason = "the Triton interpreter (TRITON_INTERPRET=1) is not worth timing"
        if reason is None:
            kernels.append(backend)
        else:
            print(f"skipping qkernels backend {backend!r}: {reason}")
    return kernels


def warn_if_differs(kernels, ours, want, label: str):
    """Runs ``ours()`` on every kernel backend and warns (loudly, without stopping) where it is not bit-equal
    to aten's ``want``: a benchmark of wrong numbers is worthless."""
    import qkernels

    for backend in kernels:
        with qkernels.use_backend(backend):
            got = ours()
        if not torch.equal(got, want):
            print(f"!!!!! WARNING: qkernels {backend} {label} differs from aten in {int((got != want).sum())} "
                  "elements !!!!!")


def result_rows(meta, key: dict, timed: dict, bytes_per_elem: dict, numel: int, copy: float) -> list[dict]:
    """CSV rows for one (op, mode, dtype, numel): GB/s from each provider's bytes per element."""
    rows = []
    for provider, ms in timed.items():
        gbps = bytes_per_elem[provider] * numel / ms / 1e6
        rows.append(dict(meta, **key, numel=numel, provider=provider, median_ms=round(ms, 5), gbps=round(gbps, 2),
                         bytes_per_elem=bytes_per_elem[provider], copy_gbps=round(copy, 2),
                         pct_of_copy=round(100 * gbps / copy, 1), speedup_vs_aten=round(timed["aten"] / ms, 3)))
    return rows


def report(rows, meta, out: Path, stem: str, op: str, dtype_name: str, modes, providers, copy_by_size: dict,
           device_type: str):
    """Prints the table and writes the plot of each mode for one (op, dtype) of benchmark ``stem``; providers
    without rows (e.g. aten for a dtype it rejects) are left out."""
    for mode in modes:
        sel = [r for r in rows if (r["op"], r["mode"], r["dtype"]) == (op, mode, dtype_name)]
        shown = [p for p in providers if any(r["provider"] == p for r in sel)]
        title = f"{stem.replace('_', ' ')} {op} {mode} {dtype_name} on {meta['device_name']}"
        print_table(sel, title, shown)
        plot(sel, copy_by_size, shown, title, out / f"{stem}_{op}_{mode}_{dtype_name}_{device_type}.png")


def provider_function(provider: str, aten, ours, compile_target):
    """The function a provider times: aten's, qkernels' (on the backend ``use_provider`` sets), or torch.compile
    of ``compile_target`` (after a reset: fresh static graphs for every shape, no recompile limit)."""
    if provider == "compile":
        torch._dynamo.reset()
        return torch.compile(compile_target, dynamic=False)
    return aten if provider == "aten" else ours


def use_provider(provider: str, kernels):
    """The qkernels backend block a provider runs in: its own for a kernel backend, else auto."""
    import qkernels

    return qkernels.use_backend(provider if provider in kernels else "auto")


def sweep(args, device: torch.device, sizes, stem: str, make_case, time_mode, fields=FIELDS, after_dtype=None):
    """The loop every throughput benchmark runs: for each op, dtype and size a case, the copy bandwidth of its
    input, then each mode's timings as CSV rows; a table and plots per (op, dtype), and the CSV rewritten after
    each (op, dtype), so that a partial run keeps its data.

    ``make_case(op, numel, dtype, kernels)`` returns the case, a tuple whose first element is the input x;
    ``time_mode(case, op, mode, dtype, providers, kernels)`` returns (provider -> median ms, provider -> bytes per
    element, provider -> extra CSV fields); ``after_dtype(rows, op, dtype_name)`` may print more.
    """
    out, meta, kernels, providers = start_run(args, device)
    rows, copy_gbps, csv_path = [], {}, out / f"{stem}_{device.type}.csv"
    for op in args.ops:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for numel in sizes:
                case = make_case(op, numel, dtype, kernels)
                if (dtype, numel) not in copy_gbps:
                    copy_gbps[dtype, numel] = measure_copy_gbps(case[0], device)
                for mode in args.modes:
                    timed, bpe, extra = time_mode(case, op, mode, dtype, providers, kernels)
                    new = result_rows(meta, dict(op=op, mode=mode, dtype=dtype_name), timed, bpe, numel,
                                      copy_gbps[dtype, numel])
                    for row in new:
                        row.update(extra.get(row["provider"], {}))
                    rows += new
                del case
            report(rows, meta, out, stem, op, dtype_name, args.modes, providers,
                   {n: copy_gbps[dtype, n] for n in sizes}, device.type)
            if after_dtype is not None:
                after_dtype(rows, op, dtype_name)
            write_csv(csv_path, rows, fields)
    print(f"\nwrote {csv_path}")


def write_csv(path: Path, rows, fields=FIELDS):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def print_table(rows, title: str, providers):
    sizes = sorted({r["numel"] for r in rows})
    cell = {(r["numel"], r["provider"]): r for r in rows}
    print(f"\n== {title}   [GB/s  % of copy  speedup vs aten]")
    print(f"{'numel':>6} {'copy GB/s':>10} | " + " | ".join(f"{p:^21}" for p in providers))
    for n in sizes:
        row = [cell[n, p] for p in providers]
        print(f"{size_label(n):>6} {row[0]['copy_gbps']:>10.1f} | " + " | ".join(
            f"{r['gbps']:8.1f} {r['pct_of_copy']:4.0f}% {r['speedup_vs_aten']:5.2f}x" for r in row))


def plot(rows, copy_gbps, providers, title: str, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    sizes = sorted({r["numel"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in providers:
        ax.plot(sizes, [next(r["gbps"] for r in rows if r["numel"] == n and r["provider"] == p) for n in sizes],
                marker="o", label=p)
    ax.plot(sizes, [copy_gbps[n] for n in sizes], "k--", label="copy")
    ax.set(xlabel="elements", ylabel="GB/s", title=title)
    ax.set_xscale("log", base=2)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
