"""Microbenchmarks of every qkernels op against aten, eager PyTorch and torch.compile (``python -m
qkernels.bench``, ``qkernels-bench``; see README, "Benchmarks").

``qkernels.bench.ops.OPS``: the benchmarked ops (``spec.Op``), one module per family; ``runner.run(plan, csv)``
checks every provider against the reference, times those that pass and appends the rows to a CSV
(``results``).
"""
