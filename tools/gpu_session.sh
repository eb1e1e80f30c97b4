#!/usr/bin/env bash
# What a session with a lent GPU runs (the device tool's `run`), in calls that fit its 10-minute limit:
#
#   bash tools/gpu_session.sh test                 setup (builds the CUDA extension), then the README test command
#                                                  (CUDA backend, compiled Triton, the GPU-only tests)
#   bash tools/gpu_session.sh bench [ARGS]         qkernels-bench run --device cuda ARGS, e.g.
#                                                  `bench --ops fake_quant,grad_quant --sizes 2^20,2^24,2^28`
#   bash tools/gpu_session.sh e2e [ARGS]           qkernels-bench e2e --device cuda ARGS (QAT training steps)
#   bash tools/gpu_session.sh script NAME [ARGS]   benchmarks/NAME.py with ARGS, e.g. `script bench_host_time`
#
# Logs go to $OUT when it is set (the device machine sends back what is there), else to benchmarks/results/;
# benchmark results (CSV, report.md, PNG) to $OUT/results/ (to be copied into benchmarks/results/<gpu>/ and
# committed), else to benchmarks/results/<gpu>/.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${OUT:-benchmarks/results}
mkdir -p "$logs"
PY=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
gpu_dir() {
  [ -n "${OUT:-}" ] && { echo "$OUT/results"; return; }
  "$PY" -c 'import re, torch; print("benchmarks/results/" + re.sub(r"[^a-z0-9]+", "-",
      torch.cuda.get_device_name().lower()).strip("-"))'
}

case "${1:-}" in
  test)
    {
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
      bash tools/setup.sh && "$PY" -m qkernels.info && bash tools/test.sh
    } 2>&1 | tee "$logs/test.log"
    exit "${PIPESTATUS[0]}"
    ;;
  bench|e2e)
    command=$1
    shift
    [ "$command" = bench ] && command=run
    "$PY" -m qkernels.bench "$command" --device cuda --no-progress --out "$(gpu_dir)" "$@" 2>&1 \
      | tee "$logs/bench_$command.log"
    exit "${PIPESTATUS[0]}"
    ;;
  script)
    name=${2:?"script: which benchmark (e.g. bench_host_time)"}
    shift 2
    out_args=()
    [ -n "${OUT:-}" ] && out_args=(--out "$OUT/results")
    "$PY" "benchmarks/$name.py" "${out_args[@]}" "$@" 2>&1 | tee "$logs/$name.log"
    exit "${PIPESTATUS[0]}"
    ;;
  *)
    echo "usage: bash tools/gpu_session.sh test | bench [ARGS...] | e2e [ARGS...] | script NAME [ARGS...]" >&2
    exit 2
    ;;
esac
