#!/usr/bin/env bash
# What a session with a lent GPU runs (the device tool's `run`), in calls that fit its 10-minute limit:
#
#   bash tools/gpu_session.sh test                 setup (builds the CUDA extension), then the README test command
#                                                  (CUDA backend, compiled Triton, the GPU-only tests)
#   bash tools/gpu_session.sh bench NAME [ARGS]    benchmarks/NAME.py with ARGS, e.g. `bench bench_host_time`
#                                                  or `bench bench_fake_quant --sizes 2^20 2^24`
#
# Logs go to $OUT when it is set (the device machine sends back what is there), else to benchmarks/results/;
# benchmark results to $OUT/results/ (to be copied into benchmarks/results/<gpu>/ and committed), else to the
# benchmarks' default, benchmarks/results/<gpu>/.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${OUT:-benchmarks/results}
mkdir -p "$logs"
PY=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)

case "${1:-}" in
  test)
    {
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
      bash tools/setup.sh && "$PY" -m qkernels.info && bash tools/test.sh
    } 2>&1 | tee "$logs/test.log"
    exit "${PIPESTATUS[0]}"
    ;;
  bench)
    name=${2:?"bench: which benchmark (e.g. bench_host_time)"}
    shift 2
    out_args=()
    [ -n "${OUT:-}" ] && out_args=(--out "$OUT/results")
    "$PY" "benchmarks/$name.py" "${out_args[@]}" "$@" 2>&1 | tee "$logs/$name.log"
    exit "${PIPESTATUS[0]}"
    ;;
  *)
    echo "usage: bash tools/gpu_session.sh test | bench NAME [ARGS...]" >&2
    exit 2
    ;;
esac
