#!/usr/bin/env bash
# The whole test suite: torch-free build of every kernel source with warnings as errors (the CUDA kernels for
# sm_80 and sm_90a when nvcc is present), the host tests (ctest: the shared math header, the reduction layer,
# the CUDA emulator), then pytest.
# Without a GPU, pytest runs the Triton kernels under TRITON_INTERPRET=1; with one, compiled on the device,
# and the CUDA-only tests run too. Expects tools/setup.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)

cmake -S . -B cmake-build -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build cmake-build -j2
ctest --test-dir cmake-build --output-on-failure

if "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  "$PY" -m pytest -q -n 2 tests
else
  TRITON_INTERPRET=1 "$PY" -m pytest -q -n 2 tests
fi
