"""Where and on what a benchmark ran: the fields every row carries (see ``results.FIELDS``)."""

from __future__ import annotations

import datetime
import platform
import re
from pathlib import Path

import torch

from qkernels.info import package_commit


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``; the platform's processor elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        found = None
    return found.group(1).strip() if found else (platform.processor() or "cpu")


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return ""
    return triton.__version__


def metadata(device: torch.device) -> dict:
    """The run's fields: date (UTC), device, device name, threads, commit, torch, triton and CUDA versions."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else "",
        "commit": package_commit() or "",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda or "",
    }
