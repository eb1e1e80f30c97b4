"""``python -m qkernels.bench`` / ``qkernels-bench``: ``run`` (kernels against aten, eager and torch.compile),
``report`` (Markdown and plots from a run's CSV), ``compare`` (speedups between two CSVs), ``e2e`` (QAT training
steps) and ``list``. Bad arguments exit with status 2 and a message naming the flag, before any work."""

from __future__ import annotations

import argparse
import os
import re
import sys

import torch

from . import e2e
from . import report as reports
from . import results, runner, shapes
from .environment import device_name
from .ops import OPS
from .spec import FLOAT_DTYPES, MODES

EPILOG = "See README, 'Benchmarks'."
CPU_SIZES = tuple(1 << k for k in (16, 18, 20, 22, 24))


class UsageError(ValueError):
    """A bad argument; the message starts with the flag."""


def _comma_list(text: str) -> list:
    return [part.strip() for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="qkernels-bench", description="Microbenchmarks of qkernels' ops against "
                                  "aten, eager PyTorch and torch.compile.", epilog=EPILOG)
    commands = top.add_subparsers(dest="command", required=True, metavar="{run,report,compare,e2e,list}")
    run = commands.add_parser("run", help="check, then time, every provider of the chosen ops", epilog=EPILOG,
                              description="For each op, shape, dtype and mode: every provider's results are "
                              "checked against the reference (a mismatch is recorded, not timed), then timed; rows "
                              "are appended to DIR/results.csv and a report is written to DIR/report.md.")
    add = run.add_argument
    add("--ops", type=_comma_list, default=["all"], metavar="LIST", help="op names or families, comma-separated, or "
        "all (default); `qkernels-bench list` shows them")
    add("--modes", type=_comma_list, default=list(MODES), metavar="LIST", help="fwd, bwd, fwdbwd (default: all)")
    add("--dtypes", type=_comma_list, metavar="LIST", help="float32, bfloat16, float16 (default float32,bfloat16; "
        "--quick: float32)")
    add("--sizes", type=_comma_list, metavar="LIST", help="element counts of the size sweep, e.g. 2^16,2^20,1048576 "
        "(default 2^16 to 2^24 on the CPU, 2^16 to 2^28 on CUDA, capped by memory)")
    add("--shapes", type=_comma_list, metavar="LIST", help=f"real layer shapes instead of the sweep: "
        f"{','.join(shapes.REGISTRY)}")
    add("--providers", type=_comma_list, metavar="LIST", help=f"any of {','.join(runner.PROVIDERS)} (default: aten, "
        "eager, compile and the live qkernels kernel backends)")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N] (default: "
        "cuda when available)")
    add("--threads", type=int, help="CPU threads (torch.set_num_threads; recorded in every row)")
    add("--quick", action="store_true", help="a smoke run: one tiny size, float32, a few timed calls")
    add("--memory-gb", type=float, help="skip shapes whose tensors would exceed this (default: a quarter of "
        "the machine's memory, half of the GPU's)")
    add("--out", metavar="DIR", help="output directory (default bench-results/<device name>); results.csv there "
        "is appended to")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    rep = commands.add_parser("report", help="Markdown tables and plots from a results.csv", epilog=EPILOG)
    rep.add_argument("source", metavar="DIR_OR_CSV", help="a run's directory (its results.csv) or a CSV file")
    rep.add_argument("--out", metavar="DIR", help="where report.md and the plots go (default: the CSV's directory)")
    cmp = commands.add_parser("compare", help="speedups of B over A (commits, machines, devices)", epilog=EPILOG)
    cmp.add_argument("a", metavar="A.csv")
    cmp.add_argument("b", metavar="B.csv")
    cmp.add_argument("--out", metavar="FILE", help="also write the Markdown here")
    steps = commands.add_parser("e2e", help="QAT training steps: fp, torch.ao, qkernels and its variants",
                                epilog=EPILOG, description="One training step (forward, loss, backward, SGD) of "
                                "each model as each variant on synthetic data: the median step time, the ratio to "
                                "the fp step and (CUDA) the peak memory; rows appended to DIR/e2e.csv.")
    steps.add_argument("--models", default=",".join(e2e.MODELS), metavar="LIST",
                       help=f"comma-separated subset of {','.join(e2e.MODELS)} (default: all)")
    steps.add_argument("--variants", default=",".join(e2e.VARIANTS), metavar="LIST",
                       help=f"comma-separated subset of {','.join(e2e.VARIANTS)} (default: all)")
    steps.add_argument("--batch", type=int, help="images per step (default 256 on CUDA, 32 on the CPU)")
    steps.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N]")
    steps.add_argument("--threads", type=int, help="CPU threads (recorded in every row)")
    steps.add_argument("--quick", action="store_true", help="one round of a few steps (a smoke run)")
    steps.add_argument("--out", metavar="DIR", help="output directory (default bench-results/<device name>)")
    steps.add_argument("--no-progress", dest="progress", action="store_false", help="no line per row")
    commands.add_parser("list", help="the ops, their families and modes, and the providers live here")
    return top


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise UsageError(f"--device: {exc}") from exc
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: must be cpu or cuda[:N], got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: CUDA is not available here")
    return device


def _ops(names: list) -> list:
    if names == ["all"]:
        return list(OPS.values())
    chosen = []
    for name in names:
        found = [op for op in OPS.values() if name in (op.name, op.family)]
        if not found:
            raise UsageError(f"--ops: unknown {name!r}; ops: {', '.join(OPS)}; families: "
                             f"{', '.join(dict.fromkeys(op.family for op in OPS.values()))}")
        chosen += [op for op in found if op not in chosen]
    return chosen


def _choices(flag: str, values: list, allowed) -> list:
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise UsageError(f"{flag}: must be a comma-separated subset of {', '.join(allowed)}, got {','.join(values)}")
    return values


def _memory_budget(args, device: torch.device) -> int:
    if args.memory_gb is not None:
        if not args.memory_gb > 0:
            raise UsageError(f"--memory-gb: must be positive, got {args.memory_gb}")
        return int(args.memory_gb * 2**30)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def plan(args) -> runner.Plan:
    """The run's plan from parsed ``run`` arguments, every argument checked (``UsageError`` names the flag)."""
    device = _device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads: must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.sizes and args.shapes:
        raise UsageError("--shapes: give --sizes or --shapes, not both")
    if args.shapes:
        try:
            chosen = shapes.registry(args.shapes)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    else:
        try:
            sizes = [shapes.parse_size(s) for s in args.sizes] if args.sizes else (
                shapes.QUICK[:1] if args.quick else CPU_SIZES if device.type == "cpu" else shapes.SWEEP)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        chosen = shapes.sweep(sizes)
    providers = args.providers or runner.default_providers(device)
    try:
        runner.check_providers(providers, device)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "bfloat16"])
    return runner.Plan(ops=_ops(args.ops), modes=_choices("--modes", args.modes, MODES),
                       dtypes=_choices("--dtypes", dtypes, FLOAT_DTYPES), shapes=chosen, providers=providers,
                       device=device, quick=args.quick, memory_budget=_memory_budget(args, device))


def default_out(device: torch.device) -> str:
    return os.path.join("bench-results", re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-"))


def _progress(total: int, enabled: bool):
    if not enabled:
        return None, None
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is optional
        return None, None
    bar = tqdm(total=total, desc="qkernels-bench", unit="row", dynamic_ncols=True, disable=None)
    return bar.update, bar


def _run(args) -> int:
    chosen = plan(args)
    out = args.out or default_out(chosen.device)
    csv_file = results.csv_path(out)
    try:
        results.check_appendable(csv_file)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    os.makedirs(out, exist_ok=True)
    update, bar = _progress(runner.units(chosen), args.progress)
    try:
        rows = runner.run(chosen, csv_file, progress=update, note=(bar.write if bar else print))
    finally:
        if bar is not None:
            bar.close()
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows)} rows ({len(bad)} not ok) appended to {csv_file}")
    for row in bad:
        print(f"  {row['op']} {row['mode']} {row['provider']} {row['shape']} {row['dtype']}: {row['status']}: "
              f"{row['check']}")
    reports.report(csv_file, out)
    print(f"report: {os.path.join(out, 'report.md')}")
    return 0


def _report(args) -> int:
    source = args.source
    csv_file = results.csv_path(source) if os.path.isdir(source) else source
    if not os.path.isfile(csv_file):
        raise UsageError(f"DIR_OR_CSV: {source!r} is neither a CSV nor a directory holding {results.CSV_NAME}")
    out = args.out or os.path.dirname(os.path.abspath(csv_file))
    try:
        reports.report(csv_file, out)
    except ValueError as exc:
        raise UsageError(f"DIR_OR_CSV: {exc}") from exc
    print(f"report: {os.path.join(out, 'report.md')}")
    return 0


def _compare(args) -> int:
    try:
        text = reports.compare(args.a, args.b)
    except ValueError as exc:
        raise UsageError(f"A.csv, B.csv: {exc}") from exc
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


def _e2e(args) -> int:
    device = _device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads: must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    csv_file = e2e.csv_path(args.out or default_out(device))
    try:  # every argument is checked before the first step
        rows = e2e.run(args.models, args.variants, device, args.batch, args.quick, csv_file,
                       progress=print if args.progress else None)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(e2e.table(rows), *e2e.targets(rows), f"rows appended to {csv_file}", sep="\n")
    return 0


def _list_ops(args) -> int:
    for op in OPS.values():
        print(f"{op.name:28} {op.family:22} {','.join(op.modes):16} {op.summary}")
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        print(f"providers live for {device}: {', '.join(runner.default_providers(torch.device(device)))}")
    return 0


def main(argv: list | None = None) -> int:
    args = parser().parse_args(argv)
    command = {"run": _run, "report": _report, "compare": _compare, "e2e": _e2e, "list": _list_ops}[args.command]
    try:
        return command(args)
    except UsageError as exc:
        print(f"qkernels-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
