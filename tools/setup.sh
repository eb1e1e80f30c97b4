#!/usr/bin/env bash
# Sets up a development environment and builds qkernels in place (editable).
# - If python3 already has torch >= 2.6 (e.g. a GPU box with torch preinstalled and no network), use it.
# - Otherwise create .venv with the CPU build of torch 2.13.0, triton and the test tools.
# The native build is strict here (a failed extension fails the setup); pip install alone degrades instead.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "qkernels setup: $*"; }

has_torch() {
  "$1" -c 'import sys, torch
v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(v < (2, 6))' 2>/dev/null
}

if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
  say "using the existing .venv"
elif has_torch python3; then
  PY=python3
  say "using python3, which has torch >= 2.6"
else
  say "creating .venv"
  python3 -m venv .venv
  PY=.venv/bin/python
fi

if ! has_torch "$PY"; then
  # Exactly 2.13.0: any looser spec may pull a multi-GB CUDA build.
  say "installing torch 2.13.0 (CPU build)"
  "$PY" -m pip install -q torch==2.13.0
fi
missing=$("$PY" - <<'PYEOF'
import importlib.util
need = {"triton": "triton", "pytest": "pytest", "xdist": "pytest-xdist", "hypothesis": "hypothesis",
        "numpy": "numpy", "sklearn": "scikit-learn", "tqdm": "tqdm", "matplotlib": "matplotlib",
        "pytest_benchmark": "pytest-benchmark",
        "ninja": "ninja", "setuptools": "setuptools"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
if [ -n "$missing" ]; then
  say "installing: $missing"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $missing
fi

say "building the native extensions (about 2-3 minutes)"
QKERNELS_STRICT_BUILD=${QKERNELS_STRICT_BUILD:-1} "$PY" -m pip install -q --no-build-isolation --no-deps -e .
say "done, set up with $PY"
