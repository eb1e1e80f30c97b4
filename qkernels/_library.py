"""Loads the native extensions (qkernels._C, qkernels._C_cuda) and records why one is missing.

Importing this never initializes CUDA and never imports triton.
"""

from __future__ import annotations

import importlib.util
import json
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_loaded: dict[str, str | None] = {}  # extension -> None if loaded, else the reason it is not


def build_info() -> dict:
    path = os.path.join(_HERE, "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return {}


def _load(name: str) -> str | None:
    spec = importlib.util.find_spec(f"qkernels.{name}")
    if spec is None or spec.origin is None:
        built = build_info().get("extensions", {}).get(f"qkernels.{name}")
        return f"qkernels.{name} is not built" + (f" ({built})" if built else "")
    try:
        torch.ops.load_library(spec.origin)
    except Exception as exc:  # a stale or ABI-mismatched build; keep the reason for `qkernels.info`
        return f"qkernels.{name} failed to load: {exc}"
    return None


def missing_reason(name: str) -> str | None:
    """None when extension `name` ("_C" or "_C_cuda") is loaded, else why it is not."""
    if name not in _loaded:
        _loaded[name] = _load(name)
    return _loaded[name]


def python_module(name: str):
    """Extension `name` as a Python module (qkernels._C: the eager entry points, csrc/ops/python_entry.cpp) once
    its ops are loaded, else None."""
    if missing_reason(name) is not None:
        return None
    try:
        return importlib.import_module(f"qkernels.{name}")
    except ImportError:  # a build from before the module had entry points
        return None
