"""End-to-end QAT training-step benchmark: what one training step of a model costs with each way of quantizing it.

What is timed: one training step on a fixed synthetic batch (images ``[B, 3, 32, 32]`` from ``torch.randn`` and
labels in ``[0, classes)``, both from a ``torch.Generator`` seeded with ``seed``): ``zero_grad``, forward,
cross-entropy (plus the variant's extra loss), backward and ``torch.optim.SGD`` (momentum 0.9) over every parameter
of the model, in train mode: lr 0.01, and 0 for the quantizers' learnable scales
(``qkernels.train.quantizer_parameters``), which SGD still updates at the same cost (at 0.01 they turn negative
within two steps on a fixed random batch). The same batch is reused every step, so no data loading or host-to-device
copy is timed. ``qkernels.bench.timing.time_call`` times it (CUDA: ``triton.testing.do_bench`` or CUDA events; CPU:
``torch.utils.benchmark`` with the current thread count, which the rows record), after one untimed step that also
checks the loss is finite; ``quick`` times a few steps (a smoke run's timings). A model's variants are all set up
first, then timed in interleaved rounds (3 by default, 1 when quick; each round times every variant once; on a
shared CPU a change of load then falls on every variant alike), and a row's median is the median of the rounds'
medians, its p20 and p80 the 20th and 80th percentiles of the rounds' p20s and p80s. On the CPU a round of a step
slower than ``time_call``'s 0.3 s minimum run time is a single timed step. Setup (building, preparing, calibrating
the model) is never timed. Peak memory (CUDA only; None on the CPU) is ``timing.peak_memory_mb`` of one more step:
the peak allocated during the step above what was allocated before it, so activations, saved tensors and
temporaries, and not the weights, momenta and last step's gradients held between steps (of this variant, and of the
same model's other variants set up alongside it; the step frees the old gradients before it makes new ones).
``ratio_to_fp`` is a variant's median over the ``fp`` median of the same model in the same call (empty when ``fp``
was not among the variants).

Variants (each a fresh model from ``torch.manual_seed(seed)``, so every variant starts from the same weights):

- ``fp``: the float model (``qkernels.train.models.build``).
- ``torch.ao``: stock eager torch.ao QAT: ``model.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")``
  then ``torch.ao.quantization.prepare_qat(model, inplace=True)``: ``Conv2d``/``Linear`` become torch.ao's QAT
  modules with a per-channel fused observer + fake quantizer on the weight (INT8) and per-tensor ones on the
  outputs of the layers and BatchNorms (UINT8, reduce_range). No conv-BN fusion (the harness's models keep
  BatchNorm unfolded too, so every variant runs the same BatchNorms).
- ``qkernels``: the same with ``qkernels.qconfig.get_default_qat_qconfig("x86")``: the same modules, arguments
  and numbers, with ``qkernels.nn``'s fake-quant classes (``FusedMovingAvgObsFakeQuantize``) on qkernels' ops.
- ``qkernels+osc``: the training harness's W4A4 QAT (``--method qat``):
  ``qkernels.train.quantize_model(model, batch, 4, 4, weights=False)`` (LSQ on every layer's input but the
  first's, ``qkernels.nn.LearnableFakeQuantize``, scales from the batch by the MSE search; first and last layer
  at 8 bits) then ``qkernels.oscillation.attach(model, 4)`` (every weight on a tracked
  ``qkernels.nn.OscillationFakeQuantize``, first and last at 8 bits, untracked).
- ``qkernels+osc+dampen``: ``qkernels+osc`` with ``DAMPEN_WEIGHT`` times
  ``qkernels.oscillation.model_dampening_loss(model)`` added to the loss (the harness's ``qat+dampen``).
- ``qkernels+int4grad``: ``qkernels+osc`` with ``gbits=4``: a ``qkernels.nn.GradientQuantizer`` (INT4,
  stochastic rounding, adaptive clip ratio; first and last layer at 8 bits) on every layer's output gradient
  (the harness's ``lbt``).

Targets (from the issue; reported by ``targets``, never asserted): on the CPU, the qkernels QAT step at most
1.5x the fp step and faster than stock torch.ao QAT's (``qkernels`` against ``torch.ao``, the same config); on
a GPU, the W4A4 QAT step (``qkernels+osc``) at most 1.25x the fp step.

Rows are appended to a CSV (``FIELDS``; ``csv_path(out)`` is ``out/e2e.csv``, apart from the kernel benchmark's
``results.csv``) that keeps every run: it is never overwritten, and a file with other columns is refused.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import warnings

import torch
import torch.ao.quantization as tq
import torch.nn.functional as F

import qkernels
from qkernels.bench import environment, timing
from qkernels.bench import results as csv_results
from qkernels.train import models as train_models
from qkernels.train import quantize_model, quantizer_parameters

MODELS = ("resnet20", "mobilenetv2", "resnet18")
VARIANTS = ("fp", "torch.ao", "qkernels", "qkernels+osc", "qkernels+osc+dampen", "qkernels+int4grad")
META = ("date", "device", "device_name", "threads", "commit", "torch", "triton", "cuda")  # environment.metadata
FIELDS = META + ("model", "variant", "batch", "classes", "status", "error", "median_ms", "p20_ms", "p80_ms",
                 "peak_mb", "ratio_to_fp", "images_per_s")
CSV_NAME = "e2e.csv"
BITS = 4  # the W4A4 variants' weights and inputs (first and last layer at quantize_model's default 8)
DAMPEN_WEIGHT = 0.1  # λ of the dampening loss: the harness's final --dampen-weight-final
LR, MOMENTUM = 0.01, 0.9
DEFAULT_BATCH = {"cuda": 256, "cpu": 32}


def default_batch(device) -> int:
    """256 on CUDA (the CIFAR runs' batch); 32 on the CPU, because one ResNet-18 step at batch 256 takes many
    seconds on 2 cores, which would make a run of every model and variant take far too long."""
    return DEFAULT_BATCH["cuda" if torch.device(device).type == "cuda" else "cpu"]


def csv_path(out: str) -> str:
    return os.path.join(out, CSV_NAME)


def _names(value, known: tuple, flag: str) -> list:
    """``value`` (a sequence of names or a comma-separated string; None = all of ``known``) as a list without
    repeats, in the order given; ValueError naming ``flag`` otherwise."""
    if value is None:
        return list(known)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    try:
        names = list(value)
    except TypeError:
        raise ValueError(f"{flag}: expected names from {', '.join(known)}, got {value!r}") from None
    if not names:
        raise ValueError(f"{flag}: empty; choose from {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{flag}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def _device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: not a device: {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {device}")
    return device


def _batch(batch, device: torch.device) -> int:
    if batch is None:
        return default_batch(device)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--batch: expected a positive int, got {batch!r}")
    return batch


def _prepare(model: torch.nn.Module, variant: str, x: torch.Tensor) -> torch.nn.Module:
    """``model`` (float, train mode, on ``x``'s device) set up as ``variant`` (see the module docstring)."""
    if variant in ("torch.ao", "qkernels"):
        qconfig = (tq.get_default_qat_qconfig("x86") if variant == "torch.ao"
                   else qkernels.qconfig.get_default_qat_qconfig("x86"))
        model.qconfig = qconfig
        with warnings.catch_warnings():
            # torch 2.13 warns that torch.ao is deprecated and, per observer, about reduce_range: noise here
            warnings.simplefilter("ignore")
            tq.prepare_qat(model, inplace=True)  # places the fake quantizers on the model's device
        return model
    if variant.startswith("qkernels+"):
        gbits = BITS if variant == "qkernels+int4grad" else 32
        quantize_model(model, x, BITS, BITS, weights=False, gbits=gbits)
        qkernels.oscillation.attach(model, BITS)
    return model


def _make_step(model, variant: str, x, y):
    # The quantizers' scales (LSQ's, the oscillation quantizers') in a group at lr 0: SGD at LR steps an 8-bit
    # layer's scale below zero within two steps on this fixed random batch (LSQ's scale gradients, without
    # gradient scaling, sum over the whole tensor), and the next forward raises. SGD does the same work at any
    # lr (momentum buffer, add with alpha -lr), so the time is that of a step that trains them.
    scales = {id(p) for p in quantizer_parameters(model)}
    groups = [{"params": [p for p in model.parameters() if id(p) not in scales]},
              {"params": [p for p in model.parameters() if id(p) in scales], "lr": 0.0}]
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=LR, momentum=MOMENTUM)
    dampen = variant == "qkernels+osc+dampen"

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if dampen:  # after the forward, as the harness: the target sees this step's frozen state
            loss = loss + DAMPEN_WEIGHT * qkernels.oscillation.model_dampening_loss(model)
        loss.backward()
        optimizer.step()
        return loss
    return step


def _setup(name: str, variant: str, x, y, classes: int, seed: int):
    """The step function of model ``name`` as ``variant``, after one untimed step (first-call costs, and a check
    that the variant trains at all)."""
    torch.manual_seed(seed)  # the same initial weights for every variant
    model = train_models.build(name, x.size(1), x.size(2), classes).to(x.device).train()
    step = _make_step(_prepare(model, variant, x), variant, x, y)
    loss = step()
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"the first step's loss is {loss.item()}")
    return step


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def _free(device: torch.device):
    gc.collect()  # the last model's variants and optimizer states, before the next model allocates its own
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _pool(rounds: list) -> tuple:
    """(median, p20, p80) over rounds of ``time_call``'s (median, p20, p80): the median of the medians, the 20th
    percentile of the p20s and the 80th of the p80s, so a spread between rounds shows even where each round is a
    single step (whose p20 = median = p80), and p20 <= median <= p80 still holds."""
    medians, p20s, p80s = zip(*rounds)
    if len(rounds) == 1:
        return medians[0], p20s[0], p80s[0]
    return (statistics.median(medians), statistics.quantiles(p20s, n=5, method="inclusive")[0],
            statistics.quantiles(p80s, n=5, method="inclusive")[3])


def _model_rows(name: str, variants: list, x, y, classes: int, seed: int, quick: bool, rounds: int) -> dict:
    """``{variant: {median_ms, p20_ms, p80_ms, peak_mb}}`` or ``{variant: {error}}`` for model ``name``. Every
    variant is set up first, then timed in ``rounds`` rounds that each time every variant once, so that a change
    of the machine's load during the run (a shared CPU) falls on all variants alike rather than on one; the
    rounds' timings are pooled by ``_pool``."""
    device = x.device
    steps, results = {}, {}
    for variant in variants:
        try:
            steps[variant] = _setup(name, variant, x, y, classes, seed)
        except Exception as e:  # a variant that fails is a result to record, not the end of the run
            results[variant] = {"error": _error(e)}
    times = {variant: [] for variant in steps}
    for _ in range(rounds):
        for variant in list(steps):
            try:
                times[variant].append(timing.time_call(steps[variant], device, quick))
            except Exception as e:
                results[variant] = {"error": _error(e)}
                del steps[variant]
    for variant, step in steps.items():
        try:
            peak = timing.peak_memory_mb(step, device)
        except Exception as e:
            results[variant] = {"error": _error(e)}
            continue
        median, p20, p80 = _pool(times[variant])
        results[variant] = {"median_ms": median, "p20_ms": p20, "p80_ms": p80, "peak_mb": peak}
    del steps
    _free(device)
    return results


def run(models=None, variants=None, device="cpu", batch: int | None = None, quick: bool = False,
        csv_file: str | None = None, progress=None, *, classes: int = 10, seed: int = 0,
        rounds: int | None = None) -> list:
    """Times one training step of each of ``models`` (names from ``MODELS``; None = all) as each of
    ``variants`` (from ``VARIANTS``; None = all) on ``device`` at ``batch`` images (None: ``default_batch``),
    ``classes`` classes (10 or 100); see the module docstring for what is timed. Each model's variants are timed
    in ``rounds`` interleaved rounds (None: 1 when ``quick``, else 3). Returns the rows (dicts keyed by
    ``FIELDS``) and appends them to ``csv_file`` when given (checked before anything runs). A variant that
    raises gives a row with ``status`` ``error`` and the error, and the run goes on. ``progress``: called with a
    one-line summary (str) after each row. Bad arguments raise ``ValueError`` naming the CLI flag (``--models``,
    ``--variants``, ``--device``, ``--batch``, ``--classes``, ``--rounds``)."""
    models = _names(models, MODELS, "--models")
    variants = _names(variants, VARIANTS, "--variants")
    device = _device(device)
    batch = _batch(batch, device)
    if classes not in (10, 100) or isinstance(classes, bool):
        raise ValueError(f"--classes: expected 10 or 100, got {classes!r}")
    if rounds is None:
        rounds = 1 if quick else 3
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"--rounds: expected a positive int, got {rounds!r}")
    if csv_file is not None:
        csv_results.check_appendable(csv_file, FIELDS)  # before minutes of timing, not after
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, classes, (batch,), generator=generator).to(device)
    meta = environment.metadata(device)
    rows = []
    for name in models:
        results = _model_rows(name, variants, x, y, classes, seed, quick, rounds)
        fp = results.get("fp", {}).get("median_ms")
        for variant in variants:
            row = {**meta, "model": name, "variant": variant, "batch": batch, "classes": classes}
            result = results[variant]
            if "error" in result:
                row.update(status="error", error=result["error"])
            else:
                row.update(result, status="ok", error="", images_per_s=1e3 * batch / result["median_ms"],
                           ratio_to_fp=None if fp is None else result["median_ms"] / fp)
            rows.append(row)
            if progress is not None:
                progress(_summary(row))
    if csv_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(csv_file)), exist_ok=True)
        csv_results.append(csv_file, rows, FIELDS)
    return rows


def _summary(row: dict) -> str:
    head = f"{row['model']} {row['variant']} batch {row['batch']}"
    if row["status"] != "ok":
        return f"{head}: error: {row['error']}"
    ratio = "" if row.get("ratio_to_fp") is None else f" ({row['ratio_to_fp']:.2f}x fp)"
    return f"{head}: {row['median_ms']:.1f} ms{ratio}"


def _cell(value, fmt: str) -> str:
    return "" if value is None or value == "" else format(float(value), fmt)


def table(rows: list) -> str:
    """A Markdown table of ``rows`` (``run``'s or a CSV's): model, variant, step ms (median), ratio to fp,
    peak MB (empty on the CPU); an error row shows its error in the step column."""
    lines = ["| model | variant | step ms | ratio to fp | peak MB |", "|---|---|---:|---:|---:|"]
    for row in rows:
        if row.get("status") != "ok":
            lines.append(f"| {row['model']} | {row['variant']} | error: {row.get('error', '')} | | |")
            continue
        lines.append(f"| {row['model']} | {row['variant']} | {_cell(row['median_ms'], '.1f')} | "
                     f"{_cell(row.get('ratio_to_fp'), '.2f')} | {_cell(row.get('peak_mb'), '.0f')} |")
    return "\n".join(lines)


def targets(rows: list) -> list:
    """One line per model and target of the issue, met or not (reporting only; see the module docstring):
    CPU rows: ``qkernels`` at most 1.5x fp and faster than ``torch.ao``; CUDA rows: ``qkernels+osc`` at most
    1.25x fp. A target whose variants are missing or failed is skipped."""
    found = {}
    for row in rows:
        if row.get("status") == "ok":
            found[(row["device"], row["model"], row["variant"])] = row
    lines = []
    for device, model in dict.fromkeys((d, m) for d, m, _ in found):
        get = {v: found.get((device, model, v)) for v in VARIANTS}
        if device == "cpu" and get["qkernels"] and get["fp"]:
            ratio = float(get["qkernels"]["median_ms"]) / float(get["fp"]["median_ms"])
            lines.append(f"{model} (cpu): qkernels {ratio:.2f}x fp, target <= 1.5x: "
                         f"{'met' if ratio <= 1.5 else 'not met'}")
        if device == "cpu" and get["qkernels"] and get["torch.ao"]:
            speedup = float(get["torch.ao"]["median_ms"]) / float(get["qkernels"]["median_ms"])
            lines.append(f"{model} (cpu): qkernels {speedup:.2f}x faster than torch.ao, target > 1: "
                         f"{'met' if speedup > 1 else 'not met'}")
        if device == "cuda" and get["qkernels+osc"] and get["fp"]:
            ratio = float(get["qkernels+osc"]["median_ms"]) / float(get["fp"]["median_ms"])
            lines.append(f"{model} (cuda): qkernels+osc (W4A4) {ratio:.2f}x fp, target <= 1.25x: "
                         f"{'met' if ratio <= 1.25 else 'not met'}")
    return lines
