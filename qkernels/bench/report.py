"""``report``: Markdown tables and PNG plots from a benchmark CSV; ``compare``: speedups between two CSVs.

A CSV keeps every run appended; both read the last row of each (op, mode, provider, shape, dtype) per machine
(device name and thread count), so a re-run replaces its earlier numbers in the report without losing them.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict

from . import results

TARGET_NOTE = ("Targets (issue 23): CPU: every qkernels provider >= 1x compile and >= 1x eager on every row, "
               "fake-quant forward >= 20x aten at 2^20 elements; GPU: elementwise kernels >= 90 % of the copy "
               "bandwidth at >= 16M elements, every provider >= 1x compile and aten on every row.")


def _machines(rows: list) -> dict:
    """``{(device name, threads): {key: last row}}``."""
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["device_name"], row["threads"]].append(row)
    return {machine: results.latest(found) for machine, found in grouped.items()}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return row["status"]
    return f"{_fmt(row['median_ms'])} ms, {_fmt(row['gbps'])} GB/s ({row['pct_of_copy']:.0f}%)"


def _speedups(row: dict | None) -> str:
    if row is None or row["status"] != "ok":
        return ""
    parts = [f"{_fmt(row[f'speedup_vs_{b}'])}x {b}" for b in ("aten", "eager", "compile")
             if row.get(f"speedup_vs_{b}") is not None]
    return ", ".join(parts)


def _numel_order(rows) -> list:
    shapes = {}
    for row in rows:
        shapes.setdefault(row["shape"], row["numel"])
    return sorted(shapes, key=lambda s: (shapes[s], s))


def _table(header: list, body: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in body]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_label(device_name: str, threads: str) -> str:
    return device_name + (f", {threads} threads" if threads else "")


def report(csv_file: str, out: str, plots: bool = True) -> str:
    """Writes ``out/report.md`` (and, with matplotlib, a PNG per op, mode and dtype of the size sweep) from
    ``csv_file``; returns the Markdown. Each table: a row per shape, a column per provider (median time, GB/s
    from the op's minimal traffic, % of the copy bandwidth), then the qkernels providers' speedups."""
    rows = results.read(csv_file)
    if not rows:
        raise ValueError(f"{csv_file}: holds no rows")
    os.makedirs(out, exist_ok=True)
    lines = [f"# qkernels.bench report: {csv_file}", "", TARGET_NOTE, ""]
    for (device_name, threads), latest in _machines(rows).items():
        sample = next(iter(latest.values()))
        lines += [f"## {machine_label(device_name, threads)}", "",
                  f"torch {sample['torch']}, triton {sample['triton'] or 'none'}, CUDA {sample['cuda'] or 'none'}, "
                  f"commit {sample['commit'] or 'unknown'}, last run {max(r['date'] for r in latest.values())}", ""]
        cases = defaultdict(list)
        for row in latest.values():
            cases[row["op"], row["mode"], row["dtype"]].append(row)
        for (op, mode, dtype), found in cases.items():
            providers = list(dict.fromkeys(r["provider"] for r in found))
            cell = {(r["shape"], r["provider"]): r for r in found}
            ours = [p for p in providers if p.startswith("qkernels-")]
            header = ["shape", "copy GB/s"] + providers + [f"{p} speedup" for p in ours]
            body = []
            for shape in _numel_order(found):
                copy = next((r["copy_gbps"] for r in found if r["shape"] == shape and r["copy_gbps"]), None)
                body.append([shape, _fmt(copy)] + [_cell(cell.get((shape, p))) for p in providers]
                            + [_speedups(cell.get((shape, p))) for p in ours])
            lines += [f"### {op} {mode} {dtype}", ""] + _table(header, body) + [""]
            problems = [r for r in found if r["status"] != "ok"]
            lines += [f"- {r['provider']} {r['shape']}: {r['status']}: {r['check']}" for r in problems]
            lines += [""] if problems else []
        if plots:
            for op, dtype in dict.fromkeys((op, dtype) for op, _, dtype in cases):
                by_mode = {mode: cases[o, mode, d] for o, mode, d in cases if (o, d) == (op, dtype)}
                _plot(by_mode, f"{op} {dtype}, {machine_label(device_name, threads)}",
                      os.path.join(out, f"{_slug(device_name)}_{_slug(threads or 'gpu')}_{op}_{dtype}.png"))
    text = "\n".join(lines).rstrip() + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return text


def _plot(by_mode: dict, title: str, path: str):
    """GB/s against elements, a panel per mode, a line per provider and the copy bandwidth dashed; the size
    sweep's rows only (registry shapes are tables only). Nothing without matplotlib or two sizes."""
    sweep = {mode: [r for r in rows if r["status"] == "ok" and re.fullmatch(r"2\^\d+|\d+", r["shape"])]
             for mode, rows in by_mode.items()}
    sweep = {mode: rows for mode, rows in sweep.items() if len({r["numel"] for r in rows}) >= 2}
    if not sweep:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(sweep), figsize=(5 * len(sweep), 4), squeeze=False)
    for ax, (mode, rows) in zip(axes[0], sweep.items()):
        for provider in dict.fromkeys(r["provider"] for r in rows):
            points = sorted((r["numel"], r["gbps"]) for r in rows if r["provider"] == provider)
            ax.plot(*zip(*points), marker="o", label=provider)
        ax.plot(*zip(*sorted({(r["numel"], r["copy_gbps"]) for r in rows})), "k--", label="copy")
        ax.set(xlabel="elements", ylabel="GB/s (minimal traffic)", title=mode)
        ax.set_xscale("log", base=2)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(a_file: str, b_file: str) -> str:
    """A Markdown table of the rows two CSVs share (the last of each key in each; each file taken as one
    machine's): median times and B's speedup over A (A's time / B's), with the geometric mean per provider."""
    a, b = results.latest(results.read(a_file)), results.latest(results.read(b_file))
    shared = [k for k in a if k in b and a[k]["status"] == "ok" and b[k]["status"] == "ok"]
    if not shared:
        raise ValueError(f"{a_file} and {b_file} share no checked rows (op, mode, provider, shape, dtype)")
    lines = [f"# {b_file} against {a_file}", ""]
    for name, found in (("A", a), ("B", b)):
        sample = next(iter(found.values()))
        lines.append(f"- {name}: {machine_label(sample['device_name'], sample['threads'])}, torch {sample['torch']}, "
                     f"commit {sample['commit'] or 'unknown'}")
    body, by_provider = [], defaultdict(list)
    for key in shared:
        speedup = a[key]["median_ms"] / b[key]["median_ms"]
        by_provider[key[2]].append(speedup)
        body.append(list(key) + [_fmt(a[key]["median_ms"]), _fmt(b[key]["median_ms"]), f"{speedup:.2f}x"])
    lines += ["", "B's speedup over A (geometric mean over the shared rows):", ""]
    lines += _table(["provider", "rows", "speedup"], [[p, len(v), f"{math.exp(sum(map(math.log, v)) / len(v)):.2f}x"]
                                                      for p, v in by_provider.items()])
    lines += [""] + _table(list(results.KEY) + ["A ms", "B ms", "B speedup"], body)
    only = len(a) + len(b) - 2 * len(shared)
    if only:
        lines += ["", f"{only} rows are in one file only or not ok in one of them (not compared)."]
    return "\n".join(lines) + "\n"
