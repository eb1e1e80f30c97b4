"""The benchmark CSV: one row per (op, mode, provider, shape, dtype) of a run, appended to a file that keeps
every run (never overwritten), so that runs of different commits, machines and devices sit side by side.

A row's ``status`` is ``ok`` (checked against the reference, then timed), ``mismatch`` (its results differ from
the reference's: ``check`` says how; not timed) or ``error`` (the provider raised: ``check`` holds the error;
not timed). ``check`` of an ``ok`` row names the comparison: ``exact`` or the tolerance and its reason.
"""

from __future__ import annotations

import csv
import os

KEY = ("op", "mode", "provider", "shape", "dtype")
FIELDS = ("date", "op", "family", "mode", "provider", "shape", "dims", "numel", "dtype", "device", "device_name",
          "threads", "commit", "torch", "triton", "cuda", "status", "check", "median_ms", "p20_ms", "p80_ms",
          "bytes", "gbps", "copy_gbps", "pct_of_copy", "speedup_vs_aten", "speedup_vs_eager", "speedup_vs_compile",
          "peak_mb")
NUMERIC = ("numel", "median_ms", "p20_ms", "p80_ms", "bytes", "gbps", "copy_gbps", "pct_of_copy",
           "speedup_vs_aten", "speedup_vs_eager", "speedup_vs_compile", "peak_mb")
CSV_NAME = "results.csv"


def csv_path(out: str) -> str:
    return os.path.join(out, CSV_NAME)


def check_appendable(path: str, fields: tuple = FIELDS):
    """Raises ``ValueError`` when ``path`` exists with other columns than ``fields`` (a file of another tool,
    version or benchmark)."""
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != fields:
            raise ValueError(f"--out: {path} holds other columns than this benchmark's CSV; give another --out")


def append(path: str, rows: list, fields: tuple = FIELDS):
    """Appends ``rows`` (dicts keyed by ``fields``; None written empty) to ``path``, writing the header first
    when it is new."""
    check_appendable(path, fields)
    new = not os.path.isfile(path) or not os.path.getsize(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in fields} for row in rows)


def read(path: str) -> list:
    """The rows of a benchmark CSV, numeric fields as floats (None where empty)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise ValueError(f"{path}: not a qkernels.bench CSV (its columns differ)")
        rows = list(reader)
    for row in rows:
        for key in NUMERIC:
            row[key] = float(row[key]) if row[key] not in ("", None) else None
    return rows


def latest(rows: list) -> dict:
    """``{KEY tuple: row}`` keeping the last row of each key (the file is in run order)."""
    return {tuple(row[k] for k in KEY): row for row in rows}
