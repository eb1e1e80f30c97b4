"""pytest-benchmark: qkernels' CPU kernels against aten's CPU ops, for every benchmarked op that aten has, in
each of its modes, at 2^20 float32 elements (per channel: [256, 4096]). Each case is checked against the
reference before it is timed (``qkernels.bench.runner.checked_call``). Not part of the test suite (pytest's
``testpaths`` is ``tests``); run it, save the numbers and compare later runs with them:

    pytest benchmarks/ --benchmark-autosave            # JSON under .benchmarks/
    pytest benchmarks/ --benchmark-compare             # against the last saved run

Results are grouped per op and mode, so each table puts aten and qkernels-cpu side by side.
"""

import pytest
import torch

pytest.importorskip("pytest_benchmark", reason="pip install pytest-benchmark")

import qkernels  # noqa: E402
from qkernels.bench.ops import OPS  # noqa: E402
from qkernels.bench.runner import checked_call  # noqa: E402

NUMEL = 1 << 20
CASES = [(op.name, mode, provider) for op in OPS.values() if "aten" in op.providers("float32")
         for mode in op.modes for provider in ("aten", "qkernels-cpu")]


@pytest.mark.skipif(qkernels.backends.availability("cpu", "cpu") is not None, reason="the cpu backend is not built")
@pytest.mark.parametrize("name,mode,provider", CASES, ids=["-".join(c) for c in CASES])
def test_cpu_kernel_against_aten(benchmark, name, mode, provider):
    op = OPS[name]
    call = checked_call(op, provider, mode, op.sweep_shape(NUMEL), torch.float32, torch.device("cpu"))
    benchmark.group = f"{name} {mode}"
    benchmark.extra_info.update(threads=torch.get_num_threads(), numel=NUMEL)
    benchmark(call)
