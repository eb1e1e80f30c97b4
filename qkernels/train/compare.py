"""Several methods × bit widths on one data set and model: ``compare(base, methods, bits, out)``.

The float model is trained once (``<out>/fp``); ``ptq`` quantizes it at each bit width (``<out>/ptq_w{N}a{N}``),
``qat`` (and ``qat+freeze``, ``qat+dampen``) fine-tunes it with LSQ at each bit width (``<out>/qat_w{N}a{N}``,
weights and inputs at N bits, for ``base.epochs`` epochs), as Nagel et al. start QAT from a trained float
model, and ``oscreg`` fine-tunes it in full precision with the regularizer at each target width
(``<out>/oscreg_w{N}``); ``lbt`` is ``qat`` with the gradients at ``base.gbits`` (``<out>/lbt_w{N}a{N}g{G}``).
``weights_only``: ptq and qat* keep their inputs in full precision too (``abits`` 32,
``<out>/qat_w{N}``), the protocol of Wenshøj et al.'s comparison.

Writes ``results.csv`` (one row per run: its test accuracy at its own precision, then its cross-bit accuracies
``eval_w{b}`` for each of ``base.eval_bits`` and ``eval_float``), ``results.md`` (the table; the cross-bit matrix,
target bits × evaluation bits, with ``fp→ptq``, the float model's weights quantized at each evaluation width; and
the command when given), ``accuracy_vs_bits.png`` and ``cross_bit.png`` (accuracy against evaluation bits, a
line per method and target).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time

from . import outputs
from .config import BITS, FULL_PRECISION, METHODS, ConfigError, RunConfig, validate
from .training import gradient_bits, preflight, run

__all__ = ["compare"]

RESULT_FIELDS = ("method", "wbits", "abits", "gbits", "test_accuracy", "seconds", "out")


def _plan(base: RunConfig, methods: list, bits: list, out: str, weights_only: bool) -> list:
    """The runs' configurations, fp first; each validated before any of them starts."""
    if not methods or any(m not in METHODS for m in methods):
        raise ConfigError("--methods", f"must be a comma-separated subset of {', '.join(METHODS)}, got {methods!r}")
    if not bits or any(b not in BITS for b in bits):
        raise ConfigError("--bits", f"must be bit widths from 2 to 8, got {bits!r}")
    fp_dir = os.path.join(out, "fp")
    plan = [dataclasses.replace(base, method="fp", out=fp_dir, init_from=None)]
    for method in (m for m in METHODS if m in methods and m != "fp"):
        for b in bits:
            abits = FULL_PRECISION if weights_only or method == "oscreg" else b
            label = outputs.precision(b, abits, base.gbits if method == "lbt" else FULL_PRECISION).lower()
            plan.append(dataclasses.replace(base, method=method, wbits=b, abits=abits, init_from=None,
                                            out=os.path.join(out, f"{method}_{label}")))
    for config in plan:
        validate(config)
    preflight(plan[0])
    for config in plan[1:]:
        config.init_from = fp_dir
    return plan


def compare(base: RunConfig, methods: list, bits: list, out: str, command: str | None = None,
            weights_only: bool = False) -> list:
    """Runs the plan (see the module docstring) and returns its rows (``RESULT_FIELDS``, then ``eval_w{b}`` for
    each of ``base.eval_bits`` and ``eval_float``)."""
    plan = _plan(base, methods, bits, out, weights_only)
    os.makedirs(out, exist_ok=True)
    rows = []
    for config in plan:
        fp = config.method == "fp"
        wbits, abits = (FULL_PRECISION, FULL_PRECISION) if fp else (config.wbits, config.abits)
        gbits = gradient_bits(config)
        print(f"\n== {config.method} {outputs.precision(wbits, abits, gbits)} ==", flush=True)
        began = time.perf_counter()
        metrics = run(config)
        rows.append({"method": config.method, "wbits": wbits, "abits": abits, "gbits": gbits,
                     "test_accuracy": metrics["test_accuracy"], "seconds": round(time.perf_counter() - began, 2),
                     "out": config.out,
                     **{f"eval_w{b}": metrics["cross_bit"][str(b)] for b in base.eval_bits},
                     "eval_float": metrics["float_weights_accuracy"]})
    _write(out, base, rows, command)
    return rows


def _wide(rows: list) -> tuple:
    """(header, rows) of the table: one row per method, a column per precision trained at (float first)."""
    label = {id(r): outputs.precision(r["wbits"], r["abits"], r["gbits"]) for r in rows}
    header = ["method"] + list(dict.fromkeys(["float"] + [label[id(r)] for r in rows]))
    table = []
    for method in dict.fromkeys(row["method"] for row in rows):
        cells = {label[id(r)]: r["test_accuracy"] for r in rows if r["method"] == method}
        table.append([method] + [outputs.percent(cells.get(column)) for column in header[1:]])
    return header, table


CROSS_BIT_NOTE = ("Cross-bit test accuracy: each run's weights (the float weights of qat runs, their quantizers "
                  "removed; the quantized weights of ptq runs) rounded to nearest (half to even) on the max-abs "
                  "grid of each evaluation width, per tensor (`qkernels.ptq.quantized_weights`; first and last "
                  "layer at --first-last-bits {fl}), inputs as trained (in full precision for fp, oscreg and a "
                  "weights-only target W<b>). `fp→ptq`: the float model so quantized. `as trained`: the run's test "
                  "accuracy at its own precision (qat: its LSQ quantizers; oscreg: its weights at the target "
                  "width). `float`: its float weights unquantized.")


def _cross_bit(rows: list, eval_bits: list) -> tuple:
    """(header, rows) of the cross-bit matrix: a row per run (the fp run as ``fp→ptq``), a column per
    evaluation width."""
    header = ["method", "target", "as trained"] + [f"W{b}" for b in eval_bits] + ["float"]
    table = []
    for r in rows:
        fp = r["method"] == "fp"
        table.append(["fp→ptq" if fp else r["method"], "" if fp else outputs.precision(r["wbits"], r["abits"],
                                                                                          r["gbits"]),
                      outputs.percent(r["test_accuracy"])] + [
                      outputs.percent(r[f"eval_w{b}"]) for b in eval_bits] + [outputs.percent(r["eval_float"])])
    return header, table


def _write(out: str, base: RunConfig, rows: list, command: str | None):
    eval_fields = tuple(f"eval_w{b}" for b in base.eval_bits) + ("eval_float",)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS + eval_fields)
        writer.writeheader()
        writer.writerows(rows)
    header, table = _wide(rows)
    cross_header, cross_table = _cross_bit(rows, base.eval_bits)
    title = f"{base.data}, {base.model}: test accuracy ({base.epochs} epochs, seed {base.seed})"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(f"{title}\n\n{outputs.markdown_table(header, table)}\n")
        f.write(f"\n{CROSS_BIT_NOTE.format(fl=base.first_last_bits)}\n\n"
                f"{outputs.markdown_table(cross_header, cross_table)}\n")
        if command:
            f.write(f"\nCommand: `{command}`\n")
    series = {}
    for row in rows:
        if row["method"] != "fp":
            series.setdefault(row["method"], {})[row["wbits"]] = row["test_accuracy"]
    fp = next((row["test_accuracy"] for row in rows if row["method"] == "fp"), None)
    outputs.plot_accuracy_vs_bits(os.path.join(out, "accuracy_vs_bits.png"), series, title, reference=fp)
    lines = {}
    for r in rows:
        label = "fp→ptq" if r["method"] == "fp" else (
            f"{r['method']} {outputs.precision(r['wbits'], r['abits'], r['gbits'])}")
        lines[label] = [r[f"eval_w{b}"] for b in base.eval_bits] + [r["eval_float"]]
    outputs.plot_cross_bit(os.path.join(out, "cross_bit.png"), lines, [f"W{b}" for b in base.eval_bits] + ["float"],
                           f"{title}: cross-bit")
    total = sum(row["seconds"] for row in rows)
    print(f"\n{title}\n{outputs.table(header, table)}\n\ncross-bit (weights max-abs per tensor at each width)\n"
          f"{outputs.table(cross_header, cross_table)}\n{len(rows)} runs in {total:.0f} s; results in {out}/",
          flush=True)
