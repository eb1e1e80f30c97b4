"""What qkernels can run here: ``python -m qkernels.info`` (``--help`` says what it prints).

Prints versions, the CPU capability, the CUDA device, how the native extensions were built and whether they load,
the requested backend, which backends are live for CPU and for CUDA tensors (or why not) and which one ``auto``
picks. This is an explicit diagnostic, so unlike ``import qkernels`` it may initialize CUDA and import triton;
without a CUDA device it runs nothing on CUDA tensors.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

import torch

import qkernels
from qkernels import _library, backends

DEVICES = ("cpu", "cuda")
DEVICE_LABELS = {"cpu": "CPU tensors", "cuda": "CUDA tensors"}
EXTENSIONS = (("cpu", "_C"), ("cuda", "_C_cuda"))  # (backend, native extension it runs on)
NO_CUDA = "n/a (no CUDA device)"

DESCRIPTION = """\
Print what qkernels can run on this machine: the versions of qkernels, python, torch and triton; the CPU
capability and the CUDA device; how the native extensions (the cpu and cuda backends) were built and whether
they load; the backend requested (QKERNELS_BACKEND); a table of the backends (cuda, triton, cpu, reference) with,
for CPU tensors and for CUDA tensors, "live" or why not; and the backend that "auto" picks for a float32 tensor
on each device. Without a CUDA device nothing is run on CUDA tensors."""


def package_commit() -> str | None:
    """The git commit of the qkernels checkout in use, ``-dirty`` appended when tracked files differ from it;
    None when qkernels is not a git checkout."""
    git = ["git", "-C", os.path.dirname(os.path.abspath(qkernels.__file__))]
    try:
        sha = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")) or None


def _triton_version() -> str:
    try:
        import triton
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"not importable ({type(exc).__name__}: {exc})"
    return triton.__version__


def _auto_pick(device: str) -> str:
    try:
        with backends.use_backend("auto"):
            return backends.chosen(torch.zeros(4, device=device), -128, 127)
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"


def _plain(text: str) -> str:
    """``text`` with the extensions' module paths replaced by the backends they serve."""
    return text.replace("qkernels._C_cuda", "the cuda backend's extension").replace(
        "qkernels._C", "the cpu backend's extension")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned columns; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def report() -> str:
    lines = [
        f"qkernels     {qkernels.__version__}",
        f"python       {platform.python_version()} ({sys.executable})",
        f"torch        {torch.__version__} (cuda {torch.version.cuda})",
        f"triton       {_triton_version()}",
        f"cpu          capability {torch.backends.cpu.get_cpu_capability()}",
    ]
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "none (torch.cuda.is_available() is False)"
    lines.append(f"cuda device  {device}")

    info = _library.build_info()
    built = info.get("extensions", {})
    lines += ["", "native build " + (
        f"mode {info.get('build_mode', '?')}, git sha {info.get('git_sha') or 'unknown'}, torch at build "
        f"{info.get('torch', '?')}, cuda arch list {info.get('cuda_arch_list', 'n/a')}" if info
        else "no _build_info.json (native extensions were not built by setup.py)"), ""]
    rows = [("backend", "native extension built", "loaded")]
    for name, ext in EXTENSIONS:
        reason = _library.missing_reason(ext)
        rows.append((name, _plain(built.get(f"qkernels.{ext}", "unknown")), "yes" if reason is None
                     else "no: " + _plain(reason)))
    lines += _table(rows)

    try:
        req = backends.requested()
    except ValueError as exc:
        req = f"invalid ({exc})"
    lines += ["", f"requested    {req} (QKERNELS_BACKEND or qkernels.use_backend)", ""]
    labels = dict(DEVICE_LABELS, **({} if cuda else {"cuda": "CUDA tensors (none here: could it run them)"}))
    rows = [("backend", *(labels[d] for d in DEVICES))] + [
        (name, *(_plain(per_device[d] or "live") for d in DEVICES)) for name, per_device in backends.status().items()
    ]
    lines += _table(rows)

    lines += [""] + _table([
        ("device", "auto picks (float32)"),
        ("cpu", _auto_pick("cpu")),
        ("cuda", _auto_pick("cuda") if cuda else NO_CUDA),
    ])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qkernels.info", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    print(report())


if __name__ == "__main__":
    main()
