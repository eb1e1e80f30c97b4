#!/usr/bin/env bash
# Quick start: set everything up, then show what is live and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
PY=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
"$PY" -m qkernels.info
"$PY" -m qkernels.demo
