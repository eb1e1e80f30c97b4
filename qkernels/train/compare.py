"""Several methods × bit widths on one data set and model: ``compare(base, methods, bits, out)``.

The float model is trained once (``<out>/fp``); ``ptq`` quantizes it at each bit width (``<out>/ptq_w{N}a{N}``)
and ``qat`` fine-tunes it with LSQ at each bit width (``<out>/qat_w{N}a{N}``, weights and inputs at N bits, for
``base.epochs`` epochs), as Nagel et al. start QAT from a trained float model. Writes ``results.csv`` (one
row per run), ``results.md`` (the table, and the command when given) and ``accuracy_vs_bits.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time

from . import outputs
from .config import BITS, METHODS, ConfigError, RunConfig, validate
from .training import preflight, run

__all__ = ["compare"]

RESULT_FIELDS = ("method", "wbits", "abits", "test_accuracy", "seconds", "out")


def _plan(base: RunConfig, methods: list, bits: list, out: str) -> list:
    """The runs' configurations, fp first; each validated before any of them starts."""
    if not methods or any(m not in METHODS for m in methods):
        raise ConfigError("--methods", f"must be a comma-separated subset of {', '.join(METHODS)}, got {methods!r}")
    if not bits or any(b not in BITS for b in bits):
        raise ConfigError("--bits", f"must be bit widths from 2 to 8, got {bits!r}")
    fp_dir = os.path.join(out, "fp")
    plan = [dataclasses.replace(base, method="fp", out=fp_dir, init_from=None)]
    for method in (m for m in METHODS if m in methods and m != "fp"):
        for b in bits:
            plan.append(dataclasses.replace(base, method=method, wbits=b, abits=b, init_from=None,
                                            out=os.path.join(out, f"{method}_w{b}a{b}")))
    for config in plan:
        validate(config)
    preflight(plan[0])
    for config in plan[1:]:
        config.init_from = fp_dir
    return plan


def compare(base: RunConfig, methods: list, bits: list, out: str, command: str | None = None) -> list:
    """Runs the plan (see the module docstring) and returns its rows (``RESULT_FIELDS``)."""
    plan = _plan(base, methods, bits, out)
    os.makedirs(out, exist_ok=True)
    rows = []
    for config in plan:
        label = config.method if config.method == "fp" else f"{config.method} W{config.wbits}A{config.abits}"
        print(f"\n== {label} ==", flush=True)
        began = time.perf_counter()
        metrics = run(config)
        rows.append({"method": config.method, "wbits": config.wbits if config.method != "fp" else 32,
                     "abits": config.abits if config.method != "fp" else 32,
                     "test_accuracy": metrics["test_accuracy"], "seconds": round(time.perf_counter() - began, 2),
                     "out": config.out})
    _write(out, base, rows, bits, command)
    return rows


def _wide(rows: list, bits: list) -> tuple:
    """(header, rows) of the table: one row per method, a column for float and one per bit width."""
    header = ["method", "float"] + [f"W{b}A{b}" for b in bits]
    table = []
    for method in dict.fromkeys(row["method"] for row in rows):
        cells = {("float" if r["wbits"] == 32 else f"W{r['wbits']}A{r['abits']}"): r["test_accuracy"]
                 for r in rows if r["method"] == method}
        table.append([method] + [outputs.percent(cells.get(column)) for column in header[1:]])
    return header, table


def _write(out: str, base: RunConfig, rows: list, bits: list, command: str | None):
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    header, table = _wide(rows, bits)
    title = f"{base.data}, {base.model}: test accuracy ({base.epochs} epochs, seed {base.seed})"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(f"{title}\n\n{outputs.markdown_table(header, table)}\n")
        if command:
            f.write(f"\nCommand: `{command}`\n")
    series = {}
    for row in rows:
        if row["method"] != "fp":
            series.setdefault(row["method"], {})[row["wbits"]] = row["test_accuracy"]
    fp = next((row["test_accuracy"] for row in rows if row["method"] == "fp"), None)
    outputs.plot_accuracy_vs_bits(os.path.join(out, "accuracy_vs_bits.png"), series, title, reference=fp)
    total = sum(row["seconds"] for row in rows)
    print(f"\n{title}\n{outputs.table(header, table)}\n{len(rows)} runs in {total:.0f} s; results in {out}/",
          flush=True)
