"""One training run: ``run(config)`` and ``resume(directory)``.

The methods:

- ``fp``: trains the float model.
- ``ptq``: trains the float model (or takes ``init_from``'s), then ``ptq_model`` at ``wbits``/``abits``;
  ``metrics["ptq"]`` also holds the PTQ accuracy at each ``eval_bits`` (weights and inputs at that width).
- ``qat``: ``quantize_model`` (LSQ on ``qkernels.nn.LearnableFakeQuantize``, scales from one calibration
  batch) on the layers' inputs and ``qkernels.oscillation.attach`` (``qkernels.nn.OscillationFakeQuantize``,
  LSQ with Nagel et al.'s oscillation tracking; layers of at most 4 bits tracked) on their weights, optionally
  from ``init_from``'s float weights, then trains weights and scales together.
- ``qat+freeze``: ``qat`` with oscillating weights frozen (the threshold on a ``CosineSchedule``, 0 before
  ``freeze_start_frac`` of the steps).
- ``qat+dampen``: ``qat`` with λ · ``model_dampening_loss`` added to the loss (λ on a ``CosineSchedule``).
- ``lbt`` (Kim et al. 2024): ``qat`` with each layer's output gradient quantized (``quantize_model``'s
  ``gbits``: ``qkernels.nn.GradientQuantizer``, INT``gbits`` stochastic rounding per tensor, the clip ratio γ
  ``interval`` adaptive or fixed at ``clip_ratio``). It logs every layer's γ after every step
  (``gradients["clip_ratio"]``: ``clip_ratio.csv``, ``clip_ratio.png``) and, on the last step of each epoch,
  the quantization errors of that step's gradient (``qkernels.grad_quant.quantization_errors``: E(G) and
  E(G_L), the top 0.1 % of |G|) for the run's γ and, on the same gradient, for γ = 1 (min-max)
  (``gradients["errors"]``: ``gradients.csv``, ``gradient_error.png``; under DDP, rank 0's share).
- ``oscreg`` (Wenshøj et al. 2025): full-precision training (no fake quantization, inputs never quantized) with
  ``lam`` · ``qkernels.oscillation.regularizer`` added to the loss, on the weights QAT would quantize: every
  ``Conv2d``/``Linear`` at ``wbits``, the first and last at ``first_last_bits`` (none at 32; norm layers' weights
  not, unlike the official code, so that all methods quantize the same tensors: ``max_abs_layer_bits``); then
  the weights are quantized after training (``qkernels.ptq.quantized_weights``). Its ``test_accuracy`` is that
  of the weights at ``wbits`` (per epoch too: the paper's selection metric), ``test_accuracy_fp`` that of the
  float weights, and ``regularizer`` the epoch's mean of the term (without ``lam``).

The ``qat*`` methods re-estimate the BatchNorm statistics (``qkernels.bn_reestimate``, 50 training batches)
before every evaluation (``bn_reestimate``), and record the accuracy before (``test_accuracy_pre_bn``) and after
(``test_accuracy``), and per epoch the fraction of tracked weights oscillating (``osc_fraction``: EMA above
``osc_threshold``), frozen (``frozen_fraction``) and the oscillations of the last step (``flips_last_step``).

Every run ends with the cross-bit evaluation (``cross_bit``): the weights of its final model (the float
weights for the qat* methods, their weight quantizers removed) under ``qkernels.ptq.quantized_weights`` at each
of ``eval_bits`` (max-abs per tensor, round half to even; first and last layer at ``first_last_bits``), inputs
as trained (full precision for fp and oscreg, and with ``abits`` 32); ``float_weights_accuracy``: the trained
float weights unquantized, inputs as trained (ptq: the float model). Training is deterministic for a seed: the
model is built after ``torch.manual_seed(seed)``, each epoch's order and augmentation come from a generator
seeded by (seed, epoch), and the last incomplete batch of an epoch is dropped (so every step takes a full
global batch, on any number of processes). The learning rate follows a cosine schedule over all steps; the
quantizer scales (with ``quant_lr``) have their own Adam with a constant rate, as Nagel et al.'s code does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time

import torch
import torch.nn.functional as F

import qkernels
from qkernels.info import package_commit

from . import outputs
from ._deps import require
from .config import FULL_PRECISION, QAT_METHODS, ConfigError, RunConfig, flag, validate
from .data import augment_batch, load
from .distributed import Group, join
from .models import build
from .quantize import (
    float_weights_copy,
    gradient_quantizers,
    max_abs_layer_bits,
    ptq_model,
    quantize_model,
    quantizer_parameters,
)

__all__ = ["run", "resume", "accuracy"]

CHECKPOINT = "checkpoint.pt"
EVAL_BATCH = 512
BN_BATCHES = 50


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (eval mode, no grad; its mode is restored) on ``x`` [N, ...], ``y`` [N]."""
    was_training = model.training
    model.eval()
    correct = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            logits = model(x[start:start + EVAL_BATCH].to(device))
            correct += int((logits.argmax(1).cpu() == y[start:start + EVAL_BATCH]).sum())
    model.train(was_training)
    return correct / len(x)


def precision(config: RunConfig) -> str:
    """What a run trained quantized (``outputs.precision``): oscreg's weights only (quantized after training)."""
    if config.method == "fp":
        return outputs.precision(FULL_PRECISION, FULL_PRECISION)
    return outputs.precision(config.wbits, FULL_PRECISION if config.method == "oscreg" else config.abits,
                             gradient_bits(config))


def gradient_bits(config: RunConfig) -> int:
    """The bits of the gradients a run quantizes (``lbt``: ``gbits``), 32 for every other method."""
    return config.gbits if config.method == "lbt" else FULL_PRECISION


def default_out(config: RunConfig) -> str:
    bits = "" if config.method == "fp" else "_" + precision(config).lower()
    return os.path.join("runs", f"{config.data}_{config.model}_{config.method}{bits}")


def _check_device(config: RunConfig):
    try:
        device = torch.device(config.device)
    except RuntimeError as exc:
        raise ConfigError(flag("device"), str(exc)) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(flag("device"), "CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(flag("device"), f"must be cpu or cuda[:N], got {config.device!r}")
    if config.backend is not None:
        if config.backend not in qkernels.backends.BACKENDS:
            raise ConfigError(flag("backend"), f"must be one of {', '.join(qkernels.backends.BACKENDS)}, "
                                               f"got {config.backend!r}")
        reason = None if config.backend == "auto" else qkernels.backends.availability(config.backend, device.type)
        if reason:
            raise ConfigError(flag("backend"), f"{config.backend} is not live for {device.type}: {reason}")


def _float_weights(config: RunConfig) -> dict | None:
    """The float state dict of ``init_from``'s run, checked to fit this run's data and model."""
    if config.init_from is None:
        return None
    saved = outputs.load_checkpoint(os.path.join(config.init_from, CHECKPOINT))
    source = saved.get("config", {})
    if source.get("method") in QAT_METHODS:
        raise ConfigError(flag("init_from"), f"{config.init_from!r} is a {source['method']} run; give a fp or "
                                             "ptq run (float weights)")
    for key in ("data", "model"):
        if source.get(key) != getattr(config, key):
            raise ConfigError(flag("init_from"), f"{config.init_from!r} trained {key} {source.get(key)!r}, "
                                                 f"this run uses {getattr(config, key)!r}")
    return saved["model"]


def preflight(config: RunConfig) -> dict | None:
    """Every check before work: ``validate``, the device and backend, ``init_from``'s checkpoint. Returns the
    float weights to start from (or None). Raises ``ConfigError`` naming the flag."""
    validate(config)
    _check_device(config)
    if config.progress:
        require("tqdm")
    require("matplotlib")
    return _float_weights(config)


def run(config: RunConfig, *, on_epoch_end=None) -> dict:
    """Trains and evaluates ``config``; writes its outputs under ``config.out`` (``default_out`` when None) on
    rank 0 and returns the metrics. ``on_epoch_end(epoch, model)`` is called after each epoch's checkpoint."""
    config = dataclasses.replace(config)
    start = preflight(config)
    if config.out is None:
        config.out = default_out(config)
    return _execute(config, start, None, on_epoch_end)


def resume(directory: str, *, on_epoch_end=None, progress: bool | None = None) -> dict:
    """Continues the run saved in ``directory`` (its ``checkpoint.pt``) to the end of its configuration: the
    same result as the uninterrupted run, bit for bit."""
    path = os.path.join(directory, CHECKPOINT)
    if not os.path.isfile(path):
        raise ConfigError("--resume", f"{directory!r} holds no {CHECKPOINT}")
    state = outputs.load_checkpoint(path)
    config = RunConfig(**state["config"])
    config.out = directory
    if progress is not None:
        config.progress = progress
    start = preflight(config)
    return _execute(config, start, state, on_epoch_end)


def _execute(config: RunConfig, start: dict | None, state: dict | None, on_epoch_end) -> dict:
    group, device = join(config.device)
    backend = qkernels.use_backend(config.backend) if config.backend else contextlib.nullcontext()
    try:
        with backend:
            return _Run(config, group, device, start, state, on_epoch_end).execute()
    finally:
        group.close()


class _Run:
    def __init__(self, config: RunConfig, group: Group, device: torch.device, start: dict | None,
                 state: dict | None, on_epoch_end):
        self.config, self.group, self.device, self.on_epoch_end = config, group, device, on_epoch_end
        if config.batch_size % group.world:
            raise ConfigError(flag("batch_size"), f"the global batch {config.batch_size} must split evenly "
                                                  f"across {group.world} processes")
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.data = load(config.data, config.data_dir)
        self.steps = len(self.data.train_x) // config.batch_size
        if self.steps == 0:
            raise ConfigError(flag("batch_size"), f"larger than the {len(self.data.train_x)} training images")
        self.model = build(config.model, self.data.in_channels, self.data.image_size, self.data.num_classes)
        if start is not None:
            self.model.load_state_dict(start)
        self.model.to(device)
        self.calibration = self._calibration()
        self.quantizers = {}
        if config.method in QAT_METHODS:
            quantize_model(self.model, self.calibration[0], config.wbits, config.abits,
                           first_last_bits=config.first_last_bits, per_channel=config.per_channel,
                           scale_init=config.scale_init, grad_scaling=config.grad_scaling, weights=False,
                           gbits=gradient_bits(config),
                           grad_quantizer=dict(interval=config.interval, clip_ratio=config.clip_ratio,
                                               init=config.grad_init))
            self.quantizers = qkernels.oscillation.attach(
                self.model, config.wbits, first_last_bits=config.first_last_bits, per_channel=config.per_channel,
                scale_init=config.scale_init, momentum=config.osc_momentum, grad_scaling=config.grad_scaling)
        self.epochs = 0 if config.method == "ptq" and config.init_from else config.epochs
        total = max(1, self.epochs * self.steps)
        self.freeze = self.dampen = None
        if config.method == "qat+freeze":
            self.freeze = qkernels.oscillation.CosineSchedule(total, config.freeze_start_frac, config.freeze_threshold,
                                                              config.freeze_threshold_final, before=0.0)
        if config.method == "qat+dampen":
            self.dampen = qkernels.oscillation.CosineSchedule(total, config.dampen_start_frac, config.dampen_weight,
                                                              config.dampen_weight_final)
        # oscreg: {bits: the weights regularized at that width}, by the rule the evaluation quantizes with
        self.regularized = {}
        if config.method == "oscreg":
            layer_bits = max_abs_layer_bits(self.model, config.wbits, config.first_last_bits)
            for name, weight in qkernels.oscillation.weight_parameters(self.model, include_norms=False).items():
                if layer_bits[name] != FULL_PRECISION:
                    self.regularized.setdefault(layer_bits[name], []).append(weight)
        self.grad_quantizers = gradient_quantizers(self.model) if self.quantizers else {}
        # lbt: rows [step, γ of each layer after it] and per epoch the errors of its last step's gradients
        self.gradients = {"clip_ratio": [], "errors": []}
        self._optimizers()
        self.history, self.done = [], 0
        if state is not None:
            self._restore(state)

    def _calibration(self) -> list:
        """The first ``calibration_batches`` global batches of a seeded order, the same on every rank."""
        order = torch.randperm(len(self.data.train_x), generator=torch.Generator().manual_seed(self.config.seed))
        size = self.config.batch_size
        return [self.data.train_x[order[i * size:(i + 1) * size]].to(self.device)
                for i in range(min(self.config.calibration_batches, self.steps))]

    def _optimizers(self):
        config = self.config
        quant = quantizer_parameters(self.model)
        quant_ids = {id(p) for p in quant}
        weights = [p for p in self.model.parameters() if p.requires_grad and id(p) not in quant_ids]
        groups = [{"params": weights, "weight_decay": config.weight_decay}]
        self.quant_optimizer = None
        if quant and config.quant_lr is not None:
            self.quant_optimizer = torch.optim.Adam(quant, lr=config.quant_lr, weight_decay=0.0)
        elif quant:
            groups.append({"params": quant, "weight_decay": 0.0})
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
        else:
            self.optimizer = torch.optim.Adam(groups, lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                    T_max=max(1, self.epochs * self.steps))

    def _restore(self, state: dict):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.quant_optimizer is not None:
            self.quant_optimizer.load_state_dict(state["quant_optimizer"])
        self.history, self.done = list(state["history"]), state["epoch"]
        self.gradients = state.get("gradients", self.gradients)  # none in a checkpoint without lbt
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "quant_optimizer": self.quant_optimizer.state_dict() if self.quant_optimizer else None,
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.done,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "config": self.config.to_dict(),
            "history": self.history,
            "gradients": self.gradients,
        }

    def _error_hooks(self, epoch: int) -> tuple:
        """Full backward hooks on the gradient quantizers for one step: each records, in the returned dict, its
        layer's ``[E(G), E(G_L)]`` of the gradient it quantized and of the same gradient at γ = 1 (drawn from a
        generator of its own, so that measuring leaves training's random stream alone). Returns (dict,
        handles)."""
        found = {}
        generator = torch.Generator(self.device).manual_seed(self.config.seed * 1_000_037 + epoch)
        errors = qkernels.grad_quant.quantization_errors

        def hook(name, bits):
            def record(module, grad_input, grad_output):
                g, g_hat = grad_output[0], grad_input[0]
                minmax, _ = qkernels.quantize_gradient(g, bits, 1.0, generator=generator)
                found[name] = torch.cat([errors(g, g_hat), errors(g, minmax)])
            return record

        handles = [q.register_full_backward_hook(hook(name, q.bits)) for name, q in self.grad_quantizers.items()]
        return found, handles

    def _log_gradients(self, epoch: int, trace: list, found: dict):
        """Appends the epoch's γ trace (device tensors, read back once here) and its error rows."""
        first = epoch * self.steps + 1
        for offset, values in enumerate(torch.stack(trace).cpu().tolist()):
            self.gradients["clip_ratio"].append([first + offset] + values)
        gammas = self.gradients["clip_ratio"][-1][1:]
        for (name, quantizer), gamma in zip(self.grad_quantizers.items(), gammas):
            measured = found[name].cpu().tolist()
            self.gradients["errors"].append({
                "epoch": epoch + 1, "layer": name, "bits": quantizer.bits, "clip_ratio": gamma,
                "error_all": measured[0], "error_large": measured[1],
                "error_all_minmax": measured[2], "error_large_minmax": measured[3]})

    def _train_epoch(self, net: torch.nn.Module, epoch: int) -> dict:
        config, data, group = self.config, self.data, self.group
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(data.train_x), generator=generator)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count over this rank's samples
        dampening = torch.zeros((), dtype=torch.float64)  # the same on every rank
        regularized = torch.zeros((), dtype=torch.float64)  # likewise
        net.train()
        bar = None
        if config.progress and group.main:
            bar = require("tqdm").tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                                       dynamic_ncols=True, disable=None)  # None: off when not a terminal
        share = group.share(config.batch_size)
        trace, found, handles = [], {}, []
        for step in range(self.steps):
            index = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = data.train_x[index]
            if data.augment:  # the whole global batch, so the draws do not depend on the number of processes
                x = augment_batch(x, generator)
            x, y = x[share].to(self.device), data.train_y[index][share].to(self.device)
            t = epoch * self.steps + step + 1  # 1-based, as the official schedules
            if self.freeze is not None:
                for quantizer in self.quantizers.values():
                    quantizer.freeze_threshold = self.freeze(t)
            if self.grad_quantizers and step == self.steps - 1:
                found, handles = self._error_hooks(epoch)
            logits = net(x)
            # After the forward, as the official loss: the target sees this step's frozen state (the fused op
            # reads it; nothing is tracked), and the scales are those the forward clamped.
            damp = None if self.dampen is None else qkernels.oscillation.model_dampening_loss(
                self.model, config.dampen_aggregation)
            loss = task = F.cross_entropy(logits, y)
            if damp is not None:
                loss = task + self.dampen(t) * damp
                dampening += damp.detach().double().cpu()
            if self.regularized:
                reg = sum(qkernels.oscillation.regularizer(weights, bits) for bits, weights in self.regularized.items())
                loss = task + config.lam * reg
                regularized += reg.detach().double().cpu()
            for optimizer in (self.optimizer, self.quant_optimizer):
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in (self.optimizer, self.quant_optimizer):
                if optimizer is not None:
                    optimizer.step()
            self.scheduler.step()
            for handle in handles:
                handle.remove()
            if self.grad_quantizers:
                trace.append(torch.stack([q.clip_ratio for q in self.grad_quantizers.values()]))
            with torch.no_grad():
                totals += torch.stack([task.detach().double().cpu() * len(y),
                                       (logits.argmax(1) == y).sum().double().cpu(),
                                       torch.tensor(float(len(y)), dtype=torch.float64)])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}", acc=f"{totals[1] / totals[2]:.2%}",
                                refresh=False)
        if bar is not None:
            bar.close()
        if self.grad_quantizers:
            self._log_gradients(epoch, trace, found)
        loss_sum, correct, count = group.sum(totals).tolist()
        row = {"train_loss": loss_sum / count, "train_accuracy": correct / count}
        if self.dampen is not None:
            row["dampen_loss"] = float(dampening) / self.steps
        if self.regularized:
            row["regularizer"] = float(regularized) / self.steps
        if self.quantizers:
            overall = qkernels.oscillation.stats(self.model, config.osc_threshold)["overall"]
            row.update(osc_fraction=overall["oscillating"], frozen_fraction=overall["frozen"],
                       flips_last_step=overall["flips"])
        return row

    def _bn_batches(self, epoch: int) -> list:
        """The first ``BN_BATCHES`` global batches (at most an epoch) of a seeded order for the BatchNorm
        re-estimation after ``epoch``, augmented as in training; the same on every rank."""
        config, data = self.config, self.data
        generator = torch.Generator().manual_seed((config.seed + 1) * 1_000_033 + epoch)
        order = torch.randperm(len(data.train_x), generator=generator)
        batches = []
        for step in range(min(BN_BATCHES, self.steps)):
            x = data.train_x[order[step * config.batch_size:(step + 1) * config.batch_size]]
            batches.append((augment_batch(x, generator) if data.augment else x).to(self.device))
        return batches

    def _weights_at(self, model: torch.nn.Module, bits: int) -> float:
        """Test accuracy of ``model`` with its weights on the max-abs grid of ``bits`` (first and last layer at
        ``first_last_bits``: ``max_abs_layer_bits``), per tensor, restored afterwards; its inputs as they are.
        ``model`` must carry no weight quantizer (a float model, or ``float_weights_copy``)."""
        layer_bits = max_abs_layer_bits(model, bits, self.config.first_last_bits)
        with qkernels.ptq.quantized_weights(model, bits, include_norms=False, layer_bits=layer_bits):
            return accuracy(model, self.data.test_x, self.data.test_y)

    def _test_accuracy(self, epoch: int) -> dict:
        """``test_accuracy``, after the BatchNorm re-estimation of the qat* methods (``test_accuracy_pre_bn``
        before it)."""
        accuracy_now = accuracy(self.model, self.data.test_x, self.data.test_y)
        if self.config.method == "oscreg":
            return {"test_accuracy": self._weights_at(self.model, self.config.wbits), "test_accuracy_fp": accuracy_now}
        if self.config.method not in QAT_METHODS or not self.config.bn_reestimate:
            return {"test_accuracy": accuracy_now}
        qkernels.bn_reestimate(self.model, self._bn_batches(epoch), BN_BATCHES)
        return {"test_accuracy_pre_bn": accuracy_now,
                "test_accuracy": accuracy(self.model, self.data.test_x, self.data.test_y)}

    def execute(self) -> dict:
        config = self.config
        net = self.group.wrap(self.model, self.device)
        main = self.group.main
        if main:
            os.makedirs(config.out, exist_ok=True)
        for epoch in range(self.done, self.epochs):
            began = time.perf_counter()
            row = {"epoch": epoch + 1, **self._train_epoch(net, epoch)}
            row.update(self._test_accuracy(epoch))
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["seconds"] = round(time.perf_counter() - began, 3)
            self.history.append(row)
            self.done = epoch + 1
            if main:
                print(f"epoch {epoch + 1:>3}/{self.epochs}  loss {row['train_loss']:.4f}  "
                      f"train {outputs.percent(row['train_accuracy'])}  test {outputs.percent(row['test_accuracy'])}"
                      f"  lr {row['lr']:.2e}  {row['seconds']:.1f} s", flush=True)
                outputs.save_checkpoint(os.path.join(config.out, CHECKPOINT), self._state())
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch + 1, self.model)
        metrics = self._evaluate()
        if main:
            self._write(metrics)
            print(self.summary(metrics), flush=True)
        return metrics

    def _evaluate(self) -> dict:
        config, data = self.config, self.data
        final = self.model
        metrics = {}
        if config.method == "ptq":
            final = ptq_model(self.model, self.calibration, config.wbits, config.abits,
                              first_last_bits=config.first_last_bits, per_channel=config.per_channel)
            metrics["ptq"] = {str(b): accuracy(ptq_model(self.model, self.calibration, b, b,
                                                         first_last_bits=config.first_last_bits,
                                                         per_channel=config.per_channel), data.test_x, data.test_y)
                              for b in config.eval_bits}
        if self.quantizers:
            metrics["oscillations"] = qkernels.oscillation.stats(self.model, config.osc_threshold)
        if self.gradients["errors"]:  # the last epoch's row of each layer
            metrics["gradients"] = {row["layer"]: {k: v for k, v in row.items() if k != "layer"}
                                    for row in self.gradients["errors"] if row["epoch"] == self.done}
        if self.history and "test_accuracy_pre_bn" in self.history[-1]:
            metrics["test_accuracy_pre_bn"] = self.history[-1]["test_accuracy_pre_bn"]
        if config.method == "oscreg":
            test = self._weights_at(self.model, config.wbits)
            metrics["test_accuracy_fp"] = accuracy(self.model, data.test_x, data.test_y)
            metrics["regularizer"] = self.history[-1]["regularizer"] if self.history else None
        else:
            test = accuracy(final, data.test_x, data.test_y)
        weights_only = float_weights_copy(final)
        cross = {str(b): self._weights_at(weights_only, b) for b in config.eval_bits}
        return {
            "test_accuracy": test,
            "cross_bit": cross,
            "float_weights_accuracy": accuracy(float_weights_copy(self.model), data.test_x, data.test_y),
            **metrics,
            "config": config.to_dict(),
            "qkernels_version": qkernels.__version__,
            "qkernels_commit": package_commit(),
            "torch_version": torch.__version__,
            "world_size": self.group.world,
            "epochs_trained": self.done,
            "history": self.history,
        }

    def _write(self, metrics: dict):
        out = self.config.out
        outputs.save_checkpoint(os.path.join(out, CHECKPOINT), self._state())
        outputs.write_metrics(out, metrics)
        outputs.write_history(out, self.history)
        title = f"{self.config.data} {self.config.model} {self.config.method} {precision(self.config)}"
        outputs.plot_history(out, self.history, title)
        outputs.plot_oscillations(out, self.history, title)
        if self.grad_quantizers:
            outputs.write_gradients(out, list(self.grad_quantizers), self.gradients)
            outputs.plot_gradients(out, list(self.grad_quantizers), self.gradients, title)
        series = {"weights max-abs RTN": {int(b): a for b, a in metrics["cross_bit"].items()}}
        if "ptq" in metrics:
            series["ptq (weights and inputs)"] = {int(b): a for b, a in metrics["ptq"].items()}
        outputs.plot_accuracy_vs_bits(os.path.join(out, "cross_bit.png"), series, title)

    def summary(self, metrics: dict) -> str:
        config = self.config
        header = ["method", "trained at", "test accuracy"] + [f"W{b} max-abs" for b in metrics["cross_bit"]] + [
            "float weights"]
        row = [config.method, precision(config), outputs.percent(metrics["test_accuracy"])] + [
            outputs.percent(a) for a in metrics["cross_bit"].values()] + [
            outputs.percent(metrics["float_weights_accuracy"])]
        lines = [outputs.table(header, [row])]
        if "regularizer" in metrics:
            lines.append(outputs.table(["λ", "regularizer, last epoch (without λ)"],
                                       [[f"{config.lam:g}", f"{metrics['regularizer']:.6g}"]]))
        if "oscillations" in metrics:
            overall = metrics["oscillations"]["overall"]
            lines.append(outputs.table(
                ["pre-BN accuracy", f"oscillating (EMA > {config.osc_threshold})", "frozen"],
                [[outputs.percent(metrics.get("test_accuracy_pre_bn")), f"{100 * overall['oscillating']:.3f}%",
                  f"{100 * overall['frozen']:.3f}%"]]))
        if "gradients" in metrics:
            lines.append(outputs.table(
                ["layer", "gradient bits", "γ", "E(G)", "E(G_L)", "E(G) at γ=1", "E(G_L) at γ=1"],
                [[name, row["bits"], f"{row['clip_ratio']:.3f}"] + [f"{row[k]:.4g}" for k in (
                    "error_all", "error_large", "error_all_minmax", "error_large_minmax")]
                 for name, row in metrics["gradients"].items()]))
        if "ptq" in metrics:
            lines.append(outputs.table([f"PTQ W{b}A{b}" for b in metrics["ptq"]],
                                       [[outputs.percent(a) for a in metrics["ptq"].values()]]))
        return "\n".join(lines) + f"\noutputs: {config.out}"
