"""What qkernels can run here: ``python -m qkernels.info``.

Prints versions, the CPU capability, the CUDA device, how the native extensions were built, the requested
backend, which backends are live on each device type (or why not) and which one ``auto`` picks. This is an
explicit diagnostic, so unlike ``import qkernels`` it may initialize CUDA and import triton.
"""

from __future__ import annotations

import platform
import sys

import torch

import qkernels
from qkernels import _library, backends

DEVICES = ("cpu", "cuda")


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
    lines += ["", "build        " + (
        f"mode {info.get('build_mode', '?')}, git sha {info.get('git_sha') or 'unknown'}, torch at build "
        f"{info.get('torch', '?')}, cuda arch list {info.get('cuda_arch_list', 'n/a')}" if info
        else "no _build_info.json (native extensions were not built by setup.py)")]
    for name in ("_C", "_C_cuda"):
        state = built.get(f"qkernels.{name}", "unknown")
        lines.append(f"  qkernels.{name:<8} build: {state}; load: {_library.missing_reason(name) or 'loaded'}")

    try:
        req = backends.requested()
    except ValueError as exc:
        req = f"invalid ({exc})"
    rows = [("backend", *DEVICES)] + [
        (name, *((reason or "live") for reason in (per_device[d] for d in DEVICES)))
        for name, per_device in backends.status().items()
    ]
    width = max(len(r[1]) for r in rows) + 2
    lines += ["", f"requested    {req}", ""]
    lines += [f"{r[0]:<10} {r[1]:<{width}}{r[2]}" for r in rows]
    lines.append("")
    lines.append(f"auto picks   cpu float32 -> {_auto_pick('cpu')}")
    lines.append(f"             cuda float32 -> {_auto_pick('cuda') if cuda else 'n/a (no CUDA device)'}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
