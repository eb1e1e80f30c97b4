"""What a run leaves under ``--out``: ``metrics.json``, ``history.csv``, ``checkpoint.pt`` and PNG plots; and
the tables printed at the end.

``checkpoint.pt`` is a dict: ``"model"`` (the state dict, quantizer parameters and buffers included),
``"optimizer"`` (and ``"quant_optimizer"``, ``"scheduler"``), ``"epoch"`` (epochs done), ``"rng"`` (torch's
CPU and CUDA generator states and Python's), ``"config"``, ``"history"`` and ``"gradients"`` (``lbt``'s logs).
It is rewritten after every epoch (atomically), so ``--resume`` continues from the last finished epoch.
"""

from __future__ import annotations

import csv
import json
import os

import torch

from ._deps import require
from .config import FULL_PRECISION

HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "test_accuracy", "lr", "seconds")
# and, for the qat* methods (qkernels.train.training), as they occur:
OSCILLATION_FIELDS = ("test_accuracy_pre_bn", "osc_fraction", "frozen_fraction", "flips_last_step", "dampen_loss",
                      "test_accuracy_fp", "regularizer")  # the last two: oscreg


def save_checkpoint(path: str, state: dict):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_metrics(out: str, metrics: dict):
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")


def write_history(out: str, history: list):
    with open(os.path.join(out, "history.csv"), "w", newline="") as f:
        present = {key for row in history for key in row}
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS + tuple(k for k in OSCILLATION_FIELDS if k in present))
        writer.writeheader()
        writer.writerows(history)


def _pyplot():
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")  # files only: no display needed
    return require("matplotlib.pyplot")


def plot_history(out: str, history: list, title: str):
    """``training.png``: training loss, and train/test accuracy, per epoch."""
    if not history:
        return
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
    acc_ax.plot(epochs, [row["train_accuracy"] for row in history], marker="o", label="train")
    acc_ax.plot(epochs, [row["test_accuracy"] for row in history], marker="o", label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    acc_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "training.png"), dpi=120)
    plt.close(fig)


def plot_oscillations(out: str, history: list, title: str):
    """``oscillations.png``: the oscillating and frozen fractions of the tracked weights per epoch, and the test
    accuracy before and after BatchNorm re-estimation (when the history has them)."""
    if not history or "osc_fraction" not in history[0]:
        return
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (osc_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    osc_ax.plot(epochs, [100 * row["osc_fraction"] for row in history], marker="o", label="oscillating")
    osc_ax.plot(epochs, [100 * row["frozen_fraction"] for row in history], marker="o", label="frozen")
    osc_ax.set(xlabel="epoch", ylabel="% of tracked weights", title="oscillations")
    osc_ax.legend()
    if "test_accuracy_pre_bn" in history[0]:
        acc_ax.plot(epochs, [row["test_accuracy_pre_bn"] for row in history], marker="o", label="before BN re-est.")
    acc_ax.plot(epochs, [row["test_accuracy"] for row in history], marker="o", label="test")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    acc_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "oscillations.png"), dpi=120)
    plt.close(fig)


GRADIENT_FIELDS = ("epoch", "layer", "bits", "clip_ratio", "error_all", "error_large", "error_all_minmax",
                   "error_large_minmax")


def write_gradients(out: str, layers: list, gradients: dict):
    """``lbt``: ``clip_ratio.csv`` (a row per step: ``step``, then each layer's γ after it) and ``gradients.csv``
    (a row per epoch and layer: ``GRADIENT_FIELDS``, the errors of the epoch's last step)."""
    with open(os.path.join(out, "clip_ratio.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step"] + layers)
        writer.writerows(gradients["clip_ratio"])
    with open(os.path.join(out, "gradients.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=GRADIENT_FIELDS)
        writer.writeheader()
        writer.writerows(gradients["errors"])


def plot_gradients(out: str, layers: list, gradients: dict, title: str):
    """``clip_ratio.png``: each layer's γ over the steps; ``gradient_error.png``: each layer's E(G_L) and E(G) at
    the last epoch, for the run's γ and for γ = 1 on the same gradient."""
    if not gradients["clip_ratio"]:
        return
    plt = _pyplot()
    steps = [row[0] for row in gradients["clip_ratio"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for column, layer in enumerate(layers, start=1):
        ax.plot(steps, [row[column] for row in gradients["clip_ratio"]], label=layer)
    ax.set(xlabel="step", ylabel="clip ratio γ (c = γ · max|G|)", title=f"{title}: gradient clip ratio")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "clip_ratio.png"), dpi=120)
    plt.close(fig)
    last = max(row["epoch"] for row in gradients["errors"])
    rows = [row for row in gradients["errors"] if row["epoch"] == last]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    positions = range(len(rows))
    for ax, (key, label) in zip(axes, (("error_large", "E(G_L), large gradients"), ("error_all", "E(G), all"))):
        ax.bar([p - 0.2 for p in positions], [row[key] for row in rows], width=0.4, label="this run's γ")
        ax.bar([p + 0.2 for p in positions], [row[key + "_minmax"] for row in rows], width=0.4, label="γ = 1")
        ax.set_xticks(list(positions), [row["layer"] for row in rows], rotation=45, ha="right", fontsize="small")
        ax.set(ylabel="mean |Ĝ − G| / max|G|", title=label)
        ax.legend(fontsize="small")
    fig.suptitle(f"{title}: gradient quantization error, epoch {last}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gradient_error.png"), dpi=120)
    plt.close(fig)


def plot_accuracy_vs_bits(path: str, series: dict, title: str, reference: float | None = None):
    """Accuracy against bit width, one line per entry of ``series`` (``{label: {bits: accuracy}}``), with an
    optional horizontal line for the float model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        bits = sorted(points)
        ax.plot(bits, [points[b] for b in bits], marker="o", label=label)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", label="fp")
    ax.set_xticks(sorted({b for points in series.values() for b in points}))  # whole bit widths only
    ax.set(xlabel="bit width", ylabel="test accuracy", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cross_bit(path: str, lines: dict, columns: list, title: str):
    """Accuracy against evaluation precision (``columns``, e.g. W2 ... W8, float, evenly spaced), one line per
    entry of ``lines`` (``{label: [accuracy per column]}``, the label "method target"), each method with its own
    marker so that the targets of one method read together."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {}
    for label, values in lines.items():
        marker = markers.setdefault(label.split()[0], "osD^v<>"[len(markers) % 7])
        ax.plot(range(len(columns)), values, marker=marker, label=label)
    ax.set_xticks(range(len(columns)), columns)
    ax.set(xlabel="evaluation precision (weights)", ylabel="test accuracy", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def precision(wbits: int, abits: int, gbits: int = FULL_PRECISION) -> str:
    """``"float"``, ``"W3"`` (weights only: inputs in full precision), ``"W3A3"`` or ``"W4A4G4"`` (gradients
    quantized too); 32 bits = full precision."""
    if wbits == FULL_PRECISION:
        return "float"
    return (f"W{wbits}" + ("" if abits == FULL_PRECISION else f"A{abits}")
            + ("" if gbits == FULL_PRECISION else f"G{gbits}"))


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def table(header: list, rows: list) -> str:
    """A plain text table, columns padded to their widest cell."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
