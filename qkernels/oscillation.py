"""Nagel et al. 2022, "Overcoming Oscillations in Quantization-Aware Training": the model-level helpers around
``qkernels.nn.OscillationFakeQuantize`` (the official code's semantics; ``../shared/research/
nagel-oscillations.md`` §2–§5).

    quantizers = qkernels.oscillation.attach(model, bits=3)          # weight quantizers on Conv2d/Linear
    freeze = qkernels.oscillation.CosineSchedule(T, 0.25, 0.1, 0.01, before=0.0)
    damp = qkernels.oscillation.CosineSchedule(T, 0.25, 0.0, 0.1)
    for t in range(1, T + 1):                                         # 1-based, as the official iteration
        for q in quantizers.values(): q.freeze_threshold = freeze(t)
        loss = task_loss + damp(t) * qkernels.oscillation.model_dampening_loss(model)
    qkernels.bn_reestimate(model, train_batches)                      # before every evaluation
    qkernels.oscillation.stats(model, threshold=0.005)

``attach`` parametrizes ``layer.weight`` (``torch.nn.utils.parametrize``): reading ``layer.weight`` runs the
quantizer (and tracks), the float weight is ``layer.parametrizations.weight.original``.

Wenshøj et al. 2025, "Oscillations Make Neural Networks Robust to Quantization" (``../shared/research/
wenshoj-oscillation-regularizer.md``): train in full precision with a term that induces oscillations, then
quantize after training (``qkernels.ptq.quantized_weights``) at any bit width:

    reg = qkernels.oscillation.OscillationRegularizer(model, bits=3, lam=1.0)
    loss = task_loss + reg()                                          # lam · sum_l mean(q(W_l)^2 - W_l^2)
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .fake_quant import fake_quantize_per_channel_affine
from .nn import OscillationFakeQuantize
from .oscillation_dampening import AGGREGATIONS, oscillation_dampening
from .oscillation_regularizer import check, check_bits, check_list, oscillation_regularizer

__all__ = ["CosineSchedule", "dampening_loss", "model_dampening_loss", "attach", "attached", "float_copy", "stats",
           "bn_reestimate", "initial_scale", "AGGREGATIONS", "regularizer", "OscillationRegularizer",
           "weight_parameters"]

MSE_CANDIDATES = 100


class CosineSchedule:
    """The official ``CosineTempDecay`` with its delayed start: for the 1-based step ``t`` of ``total_steps``
    and ``t0 = start_frac · total_steps``,

        value(t) = before                                              for t < t0
        value(t) = end + ½ (start − end) (1 + cos(π (t − t0) / (total_steps − t0)))   otherwise

    ``before`` defaults to ``start`` (the dampening weight λ: ``CosineSchedule(T, 0.25, 0.0, 0.1)``); the freeze
    threshold of the official code is 0 before ``t0`` (nothing freezes while the EMAs warm up):
    ``CosineSchedule(T, 0.25, 0.1, 0.01, before=0.0)``. ``start_frac=0``: the cosine over the whole run."""

    def __init__(self, total_steps: int, start_frac: float = 0.25, start: float = 0.0, end: float = 0.0,
                 before: float | None = None):
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
            raise ValueError(f"total_steps: must be a positive int, got {total_steps!r}")
        if not 0.0 <= start_frac < 1.0:
            raise ValueError(f"start_frac: must be in [0, 1), got {start_frac!r}")
        for name, value in (("start", start), ("end", end), ("before", before)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}: must be finite, got {value!r}")
        self.total_steps, self.start_frac, self.start, self.end = total_steps, start_frac, start, end
        self.before = start if before is None else before
        self.decay_start = start_frac * total_steps

    def __call__(self, step: int) -> float:
        if step < self.decay_start:
            return float(self.before)
        rel = (step - self.decay_start) / (self.total_steps - self.decay_start)
        return float(self.end + 0.5 * (self.start - self.end) * (1.0 + math.cos(math.pi * rel)))


def dampening_loss(weight: Tensor, quantizer: OscillationFakeQuantize, aggregation: str = "kernel_mean") -> Tensor:
    """The oscillation dampening loss of ``weight`` under ``quantizer`` (note §4), a float32 0-dim tensor:

        L = Σ (w_q − clip(w, s·(qmin − z), s·(qmax − z)))² / K

    with ``w_q = stopgrad(quantizer(w))`` (frozen integers included; nothing is tracked) and K the aggregation
    divisor: ``"kernel_mean"`` (default) ``numel / weight.size(0)`` (the fan-in of an output channel), ``"sum"``
    1 (the paper's Frobenius norm), ``"mean"`` ``numel``. Gradients: to ``w`` ``2 (w − w_q) / K`` inside the
    clip range, 0 outside; to ``scale`` through an active clip bound (non-zero only for a frozen element whose
    latent weight is outside the range). The fused op ``qkernels.oscillation_dampening``: one pass, sums in
    fixed blocks finished in float64."""
    if not isinstance(quantizer, OscillationFakeQuantize):
        raise TypeError(f"quantizer: must be a qkernels.nn.OscillationFakeQuantize, got {type(quantizer).__name__}")
    if not isinstance(weight, Tensor) or weight.dim() == 0:
        raise ValueError("weight: must be a tensor with at least one dimension")
    if quantizer.frozen.shape != weight.shape:
        raise ValueError(f"quantizer: its state is sized for {tuple(quantizer.frozen.shape)}, not the weight's "
                         f"{tuple(weight.shape)}: call it on the weight once first")
    return oscillation_dampening(weight.contiguous(), quantizer.scale, quantizer.zero_point, quantizer.ch_axis,
                                 quantizer.quant_min, quantizer.quant_max, quantizer.frozen, quantizer.frozen_x_int,
                                 aggregation)


def attached(model: nn.Module) -> dict:
    """``{layer name: (layer, quantizer)}`` of every layer whose ``weight`` ``attach`` parametrized."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            quantizers = [p for p in module.parametrizations.weight if isinstance(p, OscillationFakeQuantize)]
            if quantizers:
                found[name] = (module, quantizers[0])
    return found


def float_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose attached layers are plain layers again, with their float weights
    (``parametrize.remove_parametrizations`` is not used: it deletes the property from the parametrized class,
    which a deep copy shares with the model it was copied from)."""
    model = copy.deepcopy(model)
    for layer, _ in attached(model).values():
        original = layer.parametrizations.weight.original
        layer.__class__ = type(layer).__bases__[0]  # parametrize injects a subclass of the layer's class
        del layer._modules["parametrizations"]
        layer.weight = original
    return model


def model_dampening_loss(model: nn.Module, aggregation: str = "kernel_mean") -> Tensor:
    """The sum of ``dampening_loss`` over every attached layer of ``model`` (the float weight
    ``layer.parametrizations.weight.original``), a float32 0-dim tensor."""
    layers = attached(model)
    if not layers:
        raise ValueError("model: has no layer with an OscillationFakeQuantize (qkernels.oscillation.attach)")
    losses = [dampening_loss(layer.parametrizations.weight.original, quantizer, aggregation)
              for layer, quantizer in layers.values()]
    return torch.stack(losses).sum()


def initial_scale(x: Tensor, qmin: int, qmax: int, method: str, per_channel: bool = False) -> Tensor:
    """The scale of a zero-point-0 grid ``[qmin, qmax]`` for ``x``, per tensor ([1]) or per channel of dim 0.

    ``"minmax"``: ``max|x| / qmax``. ``"mse"``: the grid search of Nagel et al.'s code, with candidate
    thresholds ``t_k = k · max|x| / 100`` (k = 1..100) and scale ``t_k / qmax``, keeping the one with the
    least squared error of the fake-quantized ``x`` (per channel when ``per_channel``). All-zero data gets 1.
    """
    if method not in ("mse", "minmax"):
        raise ValueError(f"method: must be 'mse' or 'minmax', got {method!r}")
    with torch.no_grad():
        rows = x.float().reshape(x.size(0) if per_channel else 1, -1)  # one row per scale
        top = rows.abs().amax(1)
        top = torch.where(top > 0, top, torch.ones_like(top))
        if method == "minmax":
            return top / qmax
        zero = torch.zeros(top.shape, dtype=torch.int32, device=x.device)
        best_err = torch.full_like(top, float("inf"))
        best = top / qmax
        for k in range(1, MSE_CANDIDATES + 1):
            scale = top * (k / MSE_CANDIDATES) / qmax
            err = (fake_quantize_per_channel_affine(rows, scale, zero, 0, qmin, qmax) - rows).square().sum(1)
            better = err < best_err
            best_err, best = torch.where(better, err, best_err), torch.where(better, scale, best)
        return best


def attach(model: nn.Module, bits: int, exclude=(), first_last_bits: int = 8, per_channel: bool = False,
           scale_init: str = "mse", momentum: float = 1e-3, freeze_threshold: float = 0.0,
           max_track_bits: int = 4, use_ema_x_int: bool = True, track_in_eval: bool = True,
           grad_scaling: bool = False) -> dict:
    """Parametrizes the ``weight`` of every ``Conv2d``/``Linear`` of ``model`` (depthwise included; in
    registration order, the first and last at ``first_last_bits``, 32 = left in full precision; names in
    ``exclude`` skipped) with an ``OscillationFakeQuantize`` on the signed grid ``[−2^(b−1), 2^(b−1) − 1]``,
    zero point 0, per tensor or per output channel (``per_channel``: ``ch_axis=0``), its scale initialized
    from the weight (``initial_scale``, ``scale_init`` "mse" or "minmax") and its state sized. Quantizers of
    layers with more than ``max_track_bits`` bits do not track (the official code tracks ≤ 4-bit layers
    only) but are quantized. Returns ``{layer name: quantizer}``; the quantizers are on the weights' devices.
    """
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits: must be an int in 2..8, got {bits!r}")
    if first_last_bits != 32 and not (isinstance(first_last_bits, int) and 2 <= first_last_bits <= 8):
        raise ValueError(f"first_last_bits: must be 2..8 or 32 (full precision), got {first_last_bits!r}")
    names = set(dict(model.named_modules()))
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise ValueError(f"exclude: no such layers in model: {', '.join(unknown)}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError("model: has no nn.Conv2d or nn.Linear layer")
    if attached(model):
        raise ValueError("model: already has oscillation quantizers attached")
    quantizers = {}
    for index, (name, layer) in enumerate(layers):
        b = first_last_bits if index in (0, len(layers) - 1) else bits
        if name in exclude or b == 32:
            continue
        weight = layer.weight.detach()
        qmin, qmax = -(1 << (b - 1)), (1 << (b - 1)) - 1
        quantizer = OscillationFakeQuantize(
            qmin, qmax, momentum=momentum, freeze_threshold=freeze_threshold, use_ema_x_int=use_ema_x_int,
            track_in_eval=track_in_eval, ch_axis=0 if per_channel else None,
            channels=weight.size(0) if per_channel else None,
            scale=initial_scale(weight, qmin, qmax, scale_init, per_channel), grad_scaling=grad_scaling,
            track=b <= max_track_bits, weight_shape=weight.shape).to(weight.device)
        quantizer.train(layer.training)
        parametrize.register_parametrization(layer, "weight", quantizer, unsafe=True)
        quantizers[name] = quantizer
    return quantizers


def stats(model: nn.Module, threshold: float) -> dict:
    """Oscillation statistics of every ``OscillationFakeQuantize`` in ``model`` that tracks:
    ``{"layers": {name (the layer's, for attached quantizers): row}, "overall": row}`` with
    ``row = {"oscillating": fraction of weights with ema_oscillation > threshold, "frozen": fraction frozen,
    "flips": oscillations of the last call (num_oscillations[1]; 0 after an untracked call), "weights": count}``
    (overall: over all their weights). One host read per layer."""
    if not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold: must be a float >= 0, got {threshold!r}")
    layers, totals = {}, torch.zeros(4, dtype=torch.float64)
    layer_names = {id(quantizer): name for name, (_, quantizer) in attached(model).items()}
    for name, module in model.named_modules():
        if isinstance(module, OscillationFakeQuantize) and module.track and module.prev_x_int.numel():
            row = torch.stack([(module.ema_oscillation > threshold).sum(), module.frozen.sum(),
                               module.num_oscillations[1], torch.tensor(module.prev_x_int.numel())]).double().cpu()
            totals += row
            layers[layer_names.get(id(module), name)] = _row(row)
    return {"layers": layers, "overall": _row(totals)}


def _row(counts: Tensor) -> dict:
    oscillating, frozen, flips, weights = counts.tolist()
    share = (lambda c: c / weights) if weights else (lambda c: 0.0)
    return {"oscillating": share(oscillating), "frozen": share(frozen), "flips": int(flips), "weights": int(weights)}


def bn_reestimate(model: nn.Module, loader, num_batches: int = 50) -> int:
    """Re-estimates the running statistics of every BatchNorm of ``model`` (the official
    ``reestimate_BN_stats``, note §5): ``model.eval()``; each BN layer in training mode with momentum 1 and its
    running stats zeroed; up to ``num_batches`` batches of ``loader`` (input tensors, or ``(x, ...)`` tuples)
    forwarded without grad, after each the running mean and (unbiased) variance, which are that batch's,
    added up; then each set to its sum / batches (the variance is the mean of per-batch variances), the
    momentum restored, ``model.eval()``. The weight quantizers run (and track, in eval mode with
    ``track_in_eval``) on every batch. Returns the number of batches used (0: the stats are left as they were).
    The model is left in eval mode."""
    if not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches: must be a positive int, got {num_batches!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.eval()
    if not norms:
        return 0
    momenta = [bn.momentum for bn in norms]
    sums = [(torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var)) for bn in norms]
    for bn in norms:
        bn.train()
        bn.momentum = 1.0
    count = 0
    with torch.no_grad():
        for batch in loader:
            if count == num_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            for bn, (mean, var) in zip(norms, sums):
                mean += bn.running_mean
                var += bn.running_var
            count += 1
        for bn, momentum, (mean, var) in zip(norms, momenta, sums):
            if count:
                bn.running_mean.copy_(mean / count)
                bn.running_var.copy_(var / count)
            bn.momentum = momentum
    model.eval()
    return count


def regularizer(weights, bits: int, scale_grad: bool = True) -> Tensor:
    """Wenshøj et al.'s oscillation-inducing term ``sum_l mean(q_b(W_l)^2 - W_l^2)`` (float32, 0-dim) over the
    tensors ``weights``, with the per-tensor max-abs narrow quantizer ``s = max|W| / (2^(b-1) - 1)``,
    ``q = s · rne(W / s)`` (2^b − 1 levels, nothing clipped). Differentiable in every weight, straight through
    the rounding: ``dW = (2/N)(q − W)``, plus with ``scale_grad`` (the official code's default) the path through
    ``max|W|``, which moves only the elements at the max. Any mix of devices, dtypes (float32, float16,
    bfloat16) and layouts: tensors are grouped per device and dtype, one fused ``qkernels.oscillation_regularizer``
    call per group. The math: ``qkernels.reference.oscillation_regularizer``."""
    check_list(weights)
    groups: dict = {}
    for w in weights:
        groups.setdefault((w.device, w.dtype), []).append(w.contiguous())
    if len(groups) == 1:  # the fused op checks the rest, with the same indices
        return oscillation_regularizer(next(iter(groups.values())), bits, scale_grad)
    check(weights, bits, fused=False)  # before any group runs, with indices into `weights`
    # The groups' values are added on the first tensor's device.
    values = [oscillation_regularizer(group, bits, scale_grad) for group in groups.values()]
    device = values[0].device
    return torch.stack([v.to(device) for v in values]).sum()


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


class OscillationRegularizer:
    """``lam ·`` Wenshøj et al.'s oscillation-inducing term over a model's weights, ready for a training loop:

        reg = OscillationRegularizer(model, bits=3, lam=1.0)
        loss = criterion(model(x), y) + reg()

    The weights are ``weight_parameters(model, exclude, include_norms)`` (the ``weight`` parameters of every
    module of ``model`` that has one, norm layers' unless ``include_norms`` is false, minus the modules whose
    qualified name contains one of the ``exclude`` substrings, as the official code's ``attach_weight_quantizers``),
    found at construction (``names`` lists them). Parametrized weights count by their float original. ``bits``
    and ``lam`` may be changed between calls. Unlike the official loss wrapper, a call computes the term whatever
    ``model.training`` is: add it where you train."""

    def __init__(self, model: nn.Module, bits: int, lam: float = 1.0, exclude=(), include_norms: bool = True,
                 scale_grad: bool = True):
        if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not math.isfinite(lam):
            raise ValueError(f"lam: must be a finite number, got {lam!r}")
        check_bits(bits)  # now, rather than at the first training step
        self.bits, self.lam, self.scale_grad = bits, float(lam), scale_grad
        found = weight_parameters(model, exclude, include_norms)
        self.names, self.weights = list(found), list(found.values())

    def __call__(self) -> Tensor:
        return self.lam * regularizer(self.weights, self.bits, self.scale_grad)


def weight_parameters(model: nn.Module, exclude=(), include_norms: bool = True) -> dict:
    """``{module name: float weight}`` of the weights the official ``attach_weight_quantizers`` takes: the
    ``weight`` parameter of every module of ``model`` that has one (Linear, Conv, Embedding, and norm layers'
    affine weights unless ``include_norms`` is false; biases never; a parametrized weight by its float original),
    minus the modules whose qualified name contains one of the ``exclude`` substrings, in registration order.
    Shared by ``OscillationRegularizer`` and ``qkernels.ptq.quantized_weights``, so both take the same set.
    Raises ValueError when ``exclude`` is a string or nothing is left."""
    if isinstance(exclude, str):
        raise ValueError(f"exclude: a sequence of name substrings, got the string {exclude!r}; use ({exclude!r},)")
    found = {}
    for name, module in model.named_modules():
        weight = _float_weight(module)
        if weight is None or any(part in name for part in exclude):
            continue
        if not include_norms and isinstance(module, _NORMS):
            continue
        found[name] = weight
    if not found:
        raise ValueError("model: no module with a `weight` parameter is left "
                         f"(exclude={tuple(exclude)!r}, include_norms={include_norms})")
    return found


def _float_weight(module: nn.Module):
    """The module's float ``weight`` parameter (a parametrized weight's original), or None."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    weight = module._parameters.get("weight")
    return weight if isinstance(weight, nn.Parameter) else None
