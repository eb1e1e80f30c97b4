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

import qkernels
from qkernels import backends
from qkernels.reference import fake_quant as ref

QMIN, QMAX, SCALE, ZERO_POINT, CHANNELS = -128, 127, 0.02, 3, 256
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


def runner(f, x: torch.Tensor, mode: str):
    if mode == "fwd":
        return lambda: f(x)
    xg, dy = x.detach().requires_grad_(), torch.randn_like(x)

    def step():
        xg.grad = None
        f(xg).backward(dy)

    return step


def bytes_per_elem(provider: str, mode: str, b: int) -> int:
    if mode == "fwdbwd":
        return 4 * b + 2
    return 2 * b + 1 if provider == "aten" else 2 * b


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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="+", type=parse_size, help="element counts (e.g. 1048576 or 2^20)")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16", "float16"), default=["float32", "bfloat16"])
    p.add_argument("--ops", nargs="+", choices=("per_tensor", "per_channel"), default=["per_tensor", "per_channel"])
    p.add_argument("--modes", nargs="+", choices=("fwd", "fwdbwd"), default=["fwd", "fwdbwd"])
    p.add_argument("--out", type=Path, help="default: benchmarks/results/<gpu-name>/, or results/local/<cpu-name>/ on CPU")
    p.add_argument("--quick", action="store_true", help="2^20 elements only (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on cpu")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    sizes = [1 << 20] if args.quick else args.sizes or [1 << k for k in ((20, 22, 24, 26, 28) if
                                                                           device.type == "cuda" else (20, 22))]
    if "per_channel" in args.ops and any(n % CHANNELS for n in sizes):
        p.error(f"per_channel needs sizes divisible by {CHANNELS}")
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)

    name = device_name(device)
    # GPU results are committed under benchmarks/results/<gpu>/; CPU runs go to the git-ignored results/local/.
    results = Path(__file__).resolve().parent / "results" / ("local" if device.type == "cpu" else "")
    out = args.out or results / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        name += f" ({torch.get_num_threads()} thread{'' if torch.get_num_threads() == 1 else 's'})"
    meta = dict(device_name=name, torch_version=torch.__version__, git_sha=git_sha(),
                triton_version=getattr(triton, "__version__", "none"))
    print(" | ".join(f"{k}: {v}" for k, v in meta.items()))

    kernels = []
    for backend in KERNEL_BACKENDS:
        reason = backends.availability(backend, device.type)
        if reason is None and backend == "triton" and device.type == "cpu":
            reason = "the Triton interpreter (TRITON_INTERPRET=1) is not worth timing"
        if reason is None:
            kernels.append(backend)
        else:
            print(f"skipping qkernels backend {backend!r}: {reason}")
    if args.no_compile:
        print("skipping compile: --no-compile")
    providers = ["aten"] + ([] if args.no_compile else ["compile"]) + kernels

    rows, copy_gbps, csv_path = [], {}, out / f"fake_quant_{device.type}.csv"
    for op in args.ops:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            b = torch.empty((), dtype=dtype).element_size()
            for numel in sizes:
                x, (aten, ours, spec) = make_case(op, numel, dtype, device)
                if (dtype, numel) not in copy_gbps:
                    y = torch.empty_like(x)
                    ms = bench_ms((lambda: y.copy_(x)) if device.type == "cuda" else x.clone, device)
                    copy_gbps[dtype, numel] = 2 * b * numel / ms / 1e6
                    del y
                want = aten(x)
                for backend in kernels:
                    with qkernels.use_backend(backend):
                        got = ours(x)
                    if not torch.equal(got, want):
                        print(f"!!!!! WARNING: qkernels {backend} {op} {dtype_name} n={numel} differs from aten "
                              f"in {int((got != want).sum())} elements !!!!!")
                del want
                for mode in args.modes:
                    timed = {}
                    for provider in providers:
                        if provider == "compile":
                            torch._dynamo.reset()  # fresh static graphs for every shape, no recompile limit
                            f = torch.compile(spec if mode == "fwd" else aten, dynamic=False)
                        else:
                            f = aten if provider == "aten" else ours
                        with qkernels.use_backend(provider if provider in kernels else "auto"):
                            timed[provider] = bench_ms(runner(f, x, mode), device)
                    for provider, ms in timed.items():
                        bpe = bytes_per_elem(provider, mode, b)
                        gbps = bpe * numel / ms / 1e6
                        rows.append(dict(meta, op=op, mode=mode, dtype=dtype_name, numel=numel, provider=provider,
                                         median_ms=round(ms, 5), gbps=round(gbps, 2), bytes_per_elem=bpe,
                                         copy_gbps=round(copy_gbps[dtype, numel], 2),
                                         pct_of_copy=round(100 * gbps / copy_gbps[dtype, numel], 1),
                                         speedup_vs_aten=round(timed["aten"] / ms, 3)))
                del x
            for mode in args.modes:
                title = f"{op} {mode} {dtype_name} on {name}"
                sel = [r for r in rows if (r["op"], r["mode"], r["dtype"]) == (op, mode, dtype_name)]
                print_table(sel, title, providers)
                plot(sel, {n: copy_gbps[dtype, n] for n in sizes}, providers, title,
                     out / f"fake_quant_{op}_{mode}_{dtype_name}_{device.type}.png")
            with open(csv_path, "w", newline="") as fh:  # rewritten after each (op, dtype): partial runs keep data
                writer = csv.DictWriter(fh, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows(rows)
    print(f"\nwrote {csv_path}")


if __name__ == "__main__":
    main()
