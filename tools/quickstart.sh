#!/usr/bin/env bash
# Quick start: set everything up, show what is live, then run a short QAT comparison on scikit-learn's digits
# (fp, ptq and qat at 2, 3 and 4 bits on the CNN) and print its table; ends with the next command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
PY=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
echo
echo "== what is live here (python -m qkernels.info)"
"$PY" -m qkernels.info
echo
echo "== a short comparison on digits: fp, ptq and qat at 2, 3 and 4 bits on the CNN (about 20 seconds on 2 cores)"
"$PY" -m qkernels.train compare --data digits --model cnn --methods fp,ptq,qat --bits 2,3,4 --out runs/quickstart
echo
echo "quick start done; results are in runs/quickstart"
echo "next, the whole test suite:  bash tools/test.sh"
