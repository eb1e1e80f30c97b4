"""``run``: the sweep of ops × shapes × dtypes × modes × providers, each provider checked, then timed.

For one (op, shape, dtype) the inputs are made fresh for every provider (``Op.make`` is deterministic), the
reference's results computed once per mode, each provider's results compared with them (``spec.exact`` or the
op's stated tolerance), and only a provider that passes is timed (``timing.time_call``); its row records the
median, p20 and p80, GB/s from the op's minimal traffic, the share of the copy bandwidth measured in the same
run for that size and dtype, speedups against aten, eager and compile where those passed, and (fwdbwd) the peak
memory. Rows go to the CSV after each (op, shape, dtype), so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

import qkernels

from . import results, timing
from .environment import metadata
from .shapes import Shape, fits
from .spec import Op, as_tuple, exact

BASELINES = ("aten", "eager", "compile")
KERNEL_BACKENDS = ("cuda", "triton", "cpu")
PROVIDERS = BASELINES + tuple(f"qkernels-{b}" for b in KERNEL_BACKENDS + ("reference",))
EAGER_SEED = 1_000_003  # torch's global generator before every check


def default_providers(device: torch.device) -> list:
    """aten, eager, compile and every live qkernels kernel backend for ``device`` (on the CPU the Triton
    interpreter is left out: it is a test vehicle, not worth timing)."""
    found = list(BASELINES)
    for backend in KERNEL_BACKENDS:
        if qkernels.backends.availability(backend, device.type) is None and not (
                backend == "triton" and device.type == "cpu"):
            found.append(f"qkernels-{backend}")
    return found


def check_providers(names: list, device: torch.device):
    """Raises ``ValueError`` naming ``--providers`` for an unknown provider or a backend not live here."""
    for name in names:
        if name not in PROVIDERS:
            raise ValueError(f"--providers: unknown {name!r}; known: {', '.join(PROVIDERS)}")
        if name.startswith("qkernels-"):
            reason = qkernels.backends.availability(name[len("qkernels-"):], device.type)
            if reason:
                raise ValueError(f"--providers: {name} is not live for {device.type} tensors: {reason}")


@dataclass
class Plan:
    ops: list
    modes: list
    dtypes: list
    shapes: list
    providers: list
    device: torch.device
    quick: bool = False
    memory_budget: int = 4 << 30


def _kind(provider: str) -> str:
    return "qkernels" if provider.startswith("qkernels-") else provider


def _backend(provider: str):
    """The context a provider runs in: its qkernels backend; for compile, AOTAutograd without donated buffers
    (they forbid the retained graph the bwd mode times)."""
    if provider.startswith("qkernels-"):
        return qkernels.use_backend(provider[len("qkernels-"):])
    if provider == "compile":
        return torch._functorch.config.patch(donated_buffer=False)
    return contextlib.nullcontext()


def _dims(op: Op, shape: Shape):
    if shape.set == "sweep":
        return op.sweep_shape(shape.numel)
    return shape.dims if shape.kind in op.kinds else None


class _Case:
    """One (op, dims, dtype) on a device: fresh inputs, the calls of each mode, the reference's results."""

    def __init__(self, op: Op, dims: tuple, dtype: torch.dtype, device: torch.device):
        self.op, self.dims, self.dtype, self.device = op, dims, dtype, device
        self.dys = {}

    def inputs(self, mode: str) -> dict:
        inputs = self.op.make(self.dims, self.dtype, self.device)
        if mode != "fwd":
            for name in self.op.grads:
                inputs[name] = inputs[name].detach().requires_grad_()
        return inputs

    def _dy(self, outputs: tuple) -> tuple:
        key = tuple((o.shape, o.dtype) for o in outputs)
        if key not in self.dys:
            generator = torch.Generator(self.device).manual_seed(1)
            self.dys[key] = tuple(torch.randn(o.shape, generator=generator, device=self.device).to(o.dtype)
                                  for o in outputs)
        return self.dys[key]

    def results(self, fn, mode: str) -> tuple:
        """(outputs, input gradients, the ``state`` inputs after the call) of one call of ``fn`` in ``mode`` on
        fresh inputs, detached; torch's generator seeded first, so that an eager formulation drawing from it is
        checked reproducibly."""
        inputs = self.inputs(mode)
        # not a seed the ops' make use: the same mt19937 stream would correlate an eager's uniform draws with
        # its inputs (a stochastic rounding seeded as its normal inputs rounds them measurably less randomly)
        torch.manual_seed(EAGER_SEED)
        if mode == "fwd":
            with torch.no_grad():
                outputs, grads = as_tuple(fn(inputs)), ()
        else:
            outputs = as_tuple(fn(inputs))
            diff = outputs[:self.op.outputs_with_grad]
            grads = torch.autograd.grad(diff, [inputs[n] for n in self.op.grads], self._dy(diff), allow_unused=True)
        return (tuple(o.detach() for o in outputs), tuple(grads),
                tuple(inputs[name].detach().clone() for name in self.op.state))

    def check_inputs(self, mode: str, reference: tuple) -> dict:
        """What a tolerance's check sees: fresh inputs and, in the backward modes, ``"dy"``: the output gradients
        every provider's backward was given."""
        inputs = self.inputs("fwd")
        if mode != "fwd":
            inputs["dy"] = self._dy(reference[0][:self.op.outputs_with_grad])
        return inputs

    def timed(self, fn, mode: str):
        """The callable ``time_call`` times for ``mode``."""
        inputs = self.inputs(mode)
        if mode == "fwd":
            def call():
                with torch.no_grad():
                    fn(inputs)
            return call
        wrt = [inputs[n] for n in self.op.grads]
        if mode == "fwdbwd":
            def call():
                diff = as_tuple(fn(inputs))[:self.op.outputs_with_grad]
                torch.autograd.grad(diff, wrt, self._dy(diff), allow_unused=True)
            return call
        diff = as_tuple(fn(inputs))[:self.op.outputs_with_grad]
        dys = self._dy(diff)
        return lambda: torch.autograd.grad(diff, wrt, dys, retain_graph=True, allow_unused=True)


def compare_results(op: Op, provider: str, want: tuple, got: tuple, inputs_for_check: dict):
    """None when ``got`` (outputs, gradients, state) passes against ``want``, else what differs."""
    for part, wants, gots in (("output", want[0], got[0]), ("gradient", want[1], got[1]),
                              ("state", want[2], got[2])):
        if len(wants) != len(gots):
            return f"{len(gots)} {part}s where the reference has {len(wants)}"
        for index, (w, g) in enumerate(zip(wants, gots)):
            where = f"{part} {index}"
            if (w is None) != (g is None):
                return f"{where}: {'missing' if g is None else 'unexpected'}"
            if w is not None:
                tolerance = op.tolerance(_kind(provider), where)
                check = tolerance.check if tolerance else exact
                problem = check(w, g, inputs_for_check)
                if problem:
                    return f"{where}: {problem}"
    return None


def check_label(op: Op, provider: str) -> str:
    return op.tolerance_reasons(_kind(provider))


def _provider_fn(op: Op, provider: str, dtype_name: str, compiled: dict):
    kinds = op.providers(dtype_name)
    kind = _kind(provider)
    if kind not in kinds:
        return None
    if kind == "compile":
        if "fn" not in compiled:
            torch._dynamo.reset()  # fresh graphs for each case: no recompile limit across the sweep
            compiled["fn"] = torch.compile(op.eager, dynamic=False)
        return compiled["fn"]
    return kinds[kind]


def checked_call(op: Op, provider: str, mode: str, dims: tuple, dtype: torch.dtype, device: torch.device):
    """The call a row times, for timing by other tools (pytest-benchmark): ``provider`` on fresh inputs of
    ``dims`` in ``mode``, after its results were checked against the reference. Raises ``ValueError`` when the
    op has no such provider for ``dtype`` and ``AssertionError`` on a mismatch."""
    dtype_name = str(dtype).replace("torch.", "")
    fn = _provider_fn(op, provider, dtype_name, {})
    if fn is None or mode not in op.modes:
        raise ValueError(f"{op.name}: no {provider} provider in {mode} for {dtype_name}")
    case = _Case(op, dims, dtype, device)
    with qkernels.use_backend("reference"):
        reference = case.results(op.qkernels, mode)
    with _backend(provider):
        problem = compare_results(op, provider, reference, case.results(fn, mode),
                                  case.check_inputs(mode, reference))
        if problem:
            raise AssertionError(f"{op.name} {mode} {provider}: {problem}")
        call = case.timed(fn, mode)

    def run():
        with _backend(provider):
            call()

    return run


def _measure(case: _Case, op: Op, provider: str, mode: str, fn, reference: tuple, quick: bool) -> dict:
    """The row fields of one provider in one mode: status and check, then the timings when it passed."""
    try:
        with _backend(provider):
            got = case.results(fn, mode)
            problem = compare_results(op, provider, reference, got, case.check_inputs(mode, reference))
            if problem:
                return {"status": "mismatch", "check": problem}
            ms = timing.time_call(case.timed(fn, mode), case.device, quick)
            peak = timing.peak_memory_mb(case.timed(fn, "fwdbwd"), case.device) if mode == "fwdbwd" else None
    except Exception as exc:  # a provider that fails is a row, not the end of the sweep
        return {"status": "error", "check": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {"status": "ok", "check": check_label(op, provider), "median_ms": ms[0], "p20_ms": ms[1],
            "p80_ms": ms[2], "peak_mb": peak}


def _finish(rows: list, traffic: int, copy: float):
    """GB/s, % of copy and the speedups of one mode's rows."""
    by_provider = {row["provider"]: row for row in rows if row["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        row["bytes"] = traffic
        row["gbps"] = traffic / row["median_ms"] / 1e6
        row["copy_gbps"] = copy
        row["pct_of_copy"] = 100 * row["gbps"] / copy
        for baseline in BASELINES:
            if baseline in by_provider:
                row[f"speedup_vs_{baseline}"] = by_provider[baseline]["median_ms"] / row["median_ms"]


def units(plan: Plan) -> int:
    """How many (op, shape, dtype, mode, provider) rows the plan may produce (the progress bar's total)."""
    return sum(len(set(plan.modes) & set(op.modes)) * len(set(plan.dtypes) & set(op.dtypes)) * len(plan.shapes)
               * len(plan.providers) for op in plan.ops)


def run(plan: Plan, csv_file: str, progress=None, note=print) -> list:
    """Runs ``plan``, appending its rows to ``csv_file``; returns them. ``progress(n)`` is called as rows are
    made (a progress bar's update), ``note(text)`` for shapes skipped and similar."""
    results.check_appendable(csv_file)
    meta = metadata(plan.device)
    made, copies = [], {}
    for op in plan.ops:
        for shape in plan.shapes:
            for dtype_name in (d for d in plan.dtypes if d in op.dtypes):
                modes = [m for m in plan.modes if m in op.modes]
                count = len(modes) * len(plan.providers)
                dtype = getattr(torch, dtype_name)
                dims = _dims(op, shape)
                if dims is None or not fits(shape.numel, dtype.itemsize, plan.memory_budget):
                    if dims is not None:
                        note(f"skipping {op.name} {shape.label} {dtype_name}: over the memory budget")
                    progress and progress(count)
                    continue
                rows = _case_rows(plan, op, shape, dims, dtype, dtype_name, modes, meta, copies, progress)
                results.append(csv_file, rows)
                made += rows
    return made


def _case_rows(plan, op, shape, dims, dtype, dtype_name, modes, meta, copies, progress) -> list:
    case = _Case(op, dims, dtype, plan.device)
    numel = torch.Size(dims).numel()
    if (dtype_name, numel) not in copies:
        copies[dtype_name, numel] = timing.copy_gbps(torch.randn(numel, device=plan.device).to(dtype), plan.quick)
    compiled, rows = {}, []
    for mode in modes:
        with qkernels.use_backend("reference"):
            reference = case.results(op.qkernels, mode)
        mode_rows = []
        for provider in plan.providers:
            fn = _provider_fn(op, provider, dtype_name, compiled)
            if fn is not None:
                row = dict(dict.fromkeys(results.FIELDS), **meta)
                row.update(op=op.name, family=op.family, mode=mode, provider=provider, shape=shape.label,
                           dims="x".join(map(str, dims)), numel=numel, dtype=dtype_name)
                row.update(_measure(case, op, provider, mode, fn, reference, plan.quick))
                mode_rows.append(row)
            progress and progress(1)
        _finish(mode_rows, op.traffic(mode, numel, dtype.itemsize), copies[dtype_name, numel])
        rows += mode_rows
    return rows
