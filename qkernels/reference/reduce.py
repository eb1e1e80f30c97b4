"""The deterministic reduction layer, Python side: the block planner (the twin of ``make_reduce_blocks`` in
csrc/include/qkernels/reduce.h), the reference partials of each combine kind for a layout, and the finish that
the reference and Triton paths use (the native glue's is csrc/ops/reduce_glue.h).

Layout. A reduction's input is walked in storage order as ``[B, O, C, I]``: the element
``((b * O + o) * C + c) * I + i`` belongs to quantizer ``b * C + c``. ``make_blocks(dims, target)`` splits each
quantizer's elements into ``P`` blocks from the dims and a target block size alone (never from a thread count,
grid or schedule):

* run mode (``I > 1`` or ``C == 1``): block ``p = ob * n_ib + ib`` of quantizer ``(b, c)`` covers rows
  ``o`` in ``[ob * rows, ob * rows + rows)`` and ``i`` in ``[ib * chunk, ib * chunk + chunk)``;
* row mode (``I == 1`` and ``C > 1``): block ``p`` of every quantizer covers rows ``[p * rows, p * rows + rows)``.

Each block's partial sits at ``[b, p, c]`` of a ``[B, P, C]`` array.

Combine kinds (``KINDS``), each block combined by the backends in an order they fix, then finished:

* ``"sum"``: float32 partials; finish: the ``P`` partials added in float64 and rounded once to the dtype asked;
* ``"minmax"``: (min, max) partials with NaN sticking (torch.aminmax); finish: exact;
* ``"absmax"``: max ``|v|`` with NaN sticking; finish: exact;
* ``"count"``: int64 number of true elements; finish: exact.

Min, max and counts do not depend on the order of combining; a sum's partial does, within the block, which is
why the layout and the finish order are fixed. How close a backend's sums must be to the exact ones (every
family's tests and benchmarks check them so): ``sum_bound``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["KINDS", "Blocks", "make_blocks", "block_of", "reference_partials", "finish_sum", "finish",
           "sum_bound"]

KINDS = ("sum", "minmax", "absmax", "count")


class Blocks(NamedTuple):
    """The block layout of a ``[B, O, C, I]`` reduction (module docstring)."""

    row_mode: bool
    rows: int  # O-rows per block
    chunk: int  # run mode: elements of I per block (row mode: 1)
    n_ib: int  # run mode: blocks along I (row mode: 1)
    P: int  # blocks (partials) per quantizer


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def make_blocks(dims, target: int, rows_multiple: int = 1) -> Blocks:
    """The block layout of dims = (B, O, C, I) for blocks of about ``target`` elements (row mode: at least 64
    rows, which bounds the partials by numel / 64). ``rows_multiple``: rows per block are rounded down to a
    multiple of it (at least one multiple), for a backend that walks rows in tiles of that many."""
    _, O, C, I = dims
    if I == 1 and C > 1:
        rows = max(64, _cdiv(target, C))
        rows = max(rows_multiple, rows // rows_multiple * rows_multiple)
        return Blocks(True, rows, 1, 1, _cdiv(O, rows))
    chunk = min(I, target)
    n_ib = _cdiv(I, chunk)
    rows = max(1, target // chunk)
    rows = max(rows_multiple, rows // rows_multiple * rows_multiple)
    return Blocks(False, rows, chunk, n_ib, _cdiv(O, rows) * n_ib)


def block_of(dims, blocks: Blocks, device=None) -> torch.Tensor:
    """int64 ``[B, O, C, I]``: the flat index ``(b * P + p) * C + c`` of the partial each element goes to."""
    B, O, C, I = dims
    o = torch.arange(O, device=device).view(1, O, 1, 1)
    p = (o // blocks.rows) * blocks.n_ib + torch.arange(I, device=device).view(1, 1, 1, I) // blocks.chunk
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    c = torch.arange(C, device=device).view(1, 1, C, 1)
    return ((b * blocks.P + p) * C + c).expand(B, O, C, I)


def reference_partials(values: torch.Tensor, blocks: Blocks, kind: str):
    """The partials ``[B, P, C]`` of ``values`` (a ``[B, O, C, I]`` tensor) under ``blocks``, each the exact
    combine of its block: sum, the float32 rounding of a float64 sum (the exact sum rounded once for values
    whose float64 adds are exact, e.g. float32 values of a few exponents; a backend's float32 partial equals it
    whenever its in-block float32 adds are exact too); minmax, a pair (lo, hi) float32 with NaN sticking;
    absmax, float32 with NaN sticking; count, int64 of ``values`` as booleans."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    B, _, C, _ = values.shape
    shape = (B, blocks.P, C)
    index = block_of(values.shape, blocks, values.device).reshape(-1)
    v = values.reshape(-1)
    n = B * blocks.P * C
    if kind == "sum":
        acc = torch.zeros(n, dtype=torch.float64, device=v.device).index_add_(0, index, v.double())
        return acc.float().view(shape)
    if kind == "count":
        return torch.zeros(n, dtype=torch.int64, device=v.device).index_add_(0, index, v.bool().long()).view(shape)
    v = v.float()
    nan = torch.zeros(n, dtype=torch.int64, device=v.device).index_add_(0, index, v.isnan().long()) > 0

    def extreme(t, how, start):
        out = torch.full((n,), start, dtype=torch.float32, device=v.device)
        out = out.scatter_reduce(0, index, torch.where(t.isnan(), start, t), how)
        return torch.where(nan, float("nan"), out).view(shape)

    if kind == "absmax":
        return extreme(v.abs(), "amax", 0.0)
    return extreme(v, "amin", float("inf")), extreme(v, "amax", -float("inf"))


def finish_sum(partials: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The finish of Sum partials: added over ``dim`` in float64 and rounded once to ``dtype``."""
    return partials.sum(dim, dtype=torch.float64).to(dtype)


def finish(partials, dim: int, kind: str):
    """The exact finish of the other kinds over ``dim``: minmax (a (lo, hi) pair) and absmax with NaN sticking,
    count as an int64 sum."""
    if kind == "count":
        return partials.sum(dim)
    if kind == "absmax":
        return _nan_extreme(partials, dim, torch.amax)
    lo, hi = partials
    return _nan_extreme(lo, dim, torch.amin), _nan_extreme(hi, dim, torch.amax)


def _nan_extreme(t: torch.Tensor, dim: int, how) -> torch.Tensor:
    return torch.where(t.isnan().any(dim), float("nan"), how(torch.where(t.isnan(), 0.0, t), dim))


def sum_bound(elements: torch.Tensor, reduce) -> tuple:
    """(the exact sums, their bound): the contract for a backend's float32 sums of ``elements``, formed per
    quantizer by ``reduce(v)`` from per-element values ``v``: within twice the error of torch's own float32 sum of
    the same values, or one float32 ulp of the exact result.

    The error of a floating-point sum scales with the magnitude of its terms (the sum of their absolute values),
    not with its result: a sum with cancellation can be off by many ulps of its result in any order, and which
    order happens to be luckier varies from sum to sum. So torch's error is measured relative to each sum's
    magnitude, taken as the worst over these sums and at least the float32 unit roundoff 2^-24; each sum may be
    off by twice that relative error of its own magnitude, or by one float32 ulp of the exact result (any float32
    result may be half an ulp off). Both float64, on the CPU; non-finite exact sums are for the caller."""
    exact = reduce(elements.double()).cpu()
    magnitude = reduce(elements.double().abs()).cpu()
    err_torch = (reduce(elements.float()).double().cpu() - exact).abs()
    counted = torch.isfinite(exact) & (magnitude > 0)
    rel = max(float((err_torch[counted] / magnitude[counted]).max()) if counted.any() else 0.0, 2.0 ** -24)
    one_ulp = (torch.nextafter(exact.float().abs(), torch.tensor(float("inf"))) - exact.float().abs()).double()
    return exact, 2 * torch.maximum(rel * magnitude, one_ulp)
