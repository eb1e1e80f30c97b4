"""Pure-PyTorch reference of weight fake quantization with oscillation tracking and freezing (Nagel et al. 2022,
"Overcoming Oscillations in Quantization-Aware Training"; the official code's semantics,
``../shared/research/nagel-oscillations.md`` §2–§3): the spec every backend is tested against.

One quantizer per tensor (``axis=None``; ``scale``/``zero_point`` one element) or per channel along ``axis``
(``[w.size(axis)]``). The zero point is an integer offset (not learned). Per element, in float32 with
``inv = float32(1 / s)`` and ``z`` the integer zero point:

    q      = rne(w * inv) + z                                 (rne: round half to even)
    x      = frozen ? frozen_x_int : clamp(q, qmin, qmax)     (the frozen state of before this call)
    out    = float32(x - z) * s                               (in w's dtype)
    mask   = !frozen && qmin <= q <= qmax                     (gradient to w passes)

When ``tracking`` (a device flag) is on, the state is updated in this order (the official ``TrackOscillation``):

    prev   = started[0] ? prev_x_int : x                      (the first tracked call sees no change)
    d      = prev - x,  dir = sign(d)
    osc    = prev_switch_dir * dir == -1                      (opposite to the last non-zero change)
    ema_oscillation = float32(m * osc) + float32(cm * ema_oscillation)   (every element, two roundings)
    prev_switch_dir = d != 0 ? dir : prev_switch_dir
    prev_x_int = x;  count += osc
    if threshold > 0:                                          (freezing; threshold read on the device)
        e      = started[1] ? ema_x_int : x                   (the EMA starts at the first freezing call)
        sel    = ema_oscillation > threshold                  (the updated EMA)
        frozen |= sel
        frozen_x_int = sel ? (use_ema_x_int ? rne(e) : x) : frozen_x_int
        ema_x_int = use_ema_x_int ? float32(m * x) + float32(cm * e) : ema_x_int

with ``m = float32(momentum)`` and ``cm = float32(1 - momentum)`` (1 − momentum formed in float64), as the
official code's float32 tensor arithmetic with Python-float momentum gives. After the call the caller sets
``started[0] |= tracking`` and ``started[1] |= tracking && threshold > 0 && use_ema_x_int``; ``count`` is the
number of oscillations of this call (0 when not tracking).

State (all the weight's shape, contiguous): ``prev_x_int``, ``prev_switch_dir`` and ``frozen_x_int`` int8,
``frozen`` bool, ``ema_oscillation`` and ``ema_x_int`` float32: 12 bytes per weight. The grid must fit int8
(``-128 <= qmin <= 0 <= qmax <= 127``).

Backward, per element, with ``gf = grad_factor`` (LSQ; ``x`` and ``mask`` as the forward saw them):

    dw     = mask ? dy : 0
    mask:    ds = ((dy * d) * inv) * gf,  d = float32(x - z) * s - w       (LSQ inside the range)
    else:    ds = (dy * float32(x - z)) * gf                               (clipped: qmin/qmax; frozen: k)

``dscale`` is the float32 sum of ``ds`` over each quantizer's elements, formed by the deterministic reduction
(``qkernels.reference.reduce``: fixed blocks, float64 finish). fp16/bf16 weights are widened to float32.
"""

from __future__ import annotations

import torch

from .reduce import finish_sum, make_blocks, reference_partials

__all__ = ["STATE_FIELDS", "REDUCE_TARGET", "step", "backward_elements", "backward", "Launchers", "OfficialTracker"]

STATE_FIELDS = ("prev_x_int", "prev_switch_dir", "ema_oscillation", "frozen", "frozen_x_int", "ema_x_int")
REDUCE_TARGET = 16384  # elements per block of the dscale reduction (make_blocks' target)


def _per_element(t: torch.Tensor, dims) -> torch.Tensor:
    """A flat per-quantizer tensor [C] broadcast over the [B, O, C, I] view (B == 1)."""
    return t.reshape(1, 1, dims[2], 1)


def _levels(w4, s, z, quant_min, quant_max):
    """(the level rne(w * (1/s)) + z, and it clamped to the range), float32; 1/s correctly rounded."""
    q = torch.round(w4.float() * torch.reciprocal(s)) + z
    return q, q.clamp(quant_min, quant_max)


def step(w, scale, zero_point, dims, quant_min, quant_max, state, started, threshold, tracking, momentum: float,
         use_ema_x_int: bool):
    """One forward call on the [B, O, C, I] view: returns ``(out, x_int int8, mask bool, count int64 [])`` and
    updates ``state`` (a dict of ``STATE_FIELDS`` tensors, viewed like ``w``) in place. ``scale``/``zero_point``:
    float32 ``[C]`` (zero point integral); ``started`` uint8 [2]; ``threshold`` float32 []; ``tracking`` a flag
    []. The flags are used as tensors (``torch.where``), so no value is read on the host."""
    w4 = w.reshape(dims)
    st = {k: v.reshape(dims) for k, v in state.items()}
    s, z = _per_element(scale.float(), dims), _per_element(zero_point.float(), dims)
    q, clamped = _levels(w4, s, z, quant_min, quant_max)
    frozen = st["frozen"]
    x = torch.where(frozen, st["frozen_x_int"].float(), clamped)
    out = ((x - z) * s).to(w.dtype).reshape(w.shape)
    mask = ~frozen & (q >= quant_min) & (q <= quant_max)

    on = tracking.reshape(()) != 0
    th = threshold.reshape(()).float()
    freezing = on & (th > 0)
    m = torch.tensor(momentum, dtype=torch.float32, device=w.device)
    cm = torch.tensor(1.0 - momentum, dtype=torch.float32, device=w.device)
    prev = torch.where(started[0] != 0, st["prev_x_int"].float(), x)
    d = prev - x
    direction = torch.sign(d).to(torch.int8)
    osc = (st["prev_switch_dir"] * direction) == -1
    f = m * osc.float() + cm * st["ema_oscillation"]
    e = torch.where(started[1] != 0, st["ema_x_int"], x)
    sel = freezing & (f > th)
    value = (torch.round(e) if use_ema_x_int else x).to(torch.int8)
    updates = {
        "prev_x_int": torch.where(on, x.to(torch.int8), st["prev_x_int"]),
        "prev_switch_dir": torch.where(on & (d != 0), direction, st["prev_switch_dir"]),
        "ema_oscillation": torch.where(on, f, st["ema_oscillation"]),
        "frozen": st["frozen"] | sel,
        "frozen_x_int": torch.where(sel, value, st["frozen_x_int"]),
        "ema_x_int": torch.where(freezing & use_ema_x_int, m * x + cm * e, st["ema_x_int"]),
    }
    x_int = x.to(torch.int8).reshape(w.shape)
    mask = mask.reshape(w.shape)
    for name, new in updates.items():  # after x and mask, which the old frozen state decided
        st[name].copy_(new)
    count = torch.where(on, osc.sum(), torch.zeros((), dtype=torch.int64, device=w.device))
    return out, x_int, mask, count


def backward_elements(dy, w, x_int, mask, scale, zero_point, dims, grad_factor: float):
    """Per-element ``(dw in w's dtype, ds float32)`` on the [B, O, C, I] view."""
    g, wf = dy.reshape(dims).float(), w.reshape(dims).float()
    s, z = _per_element(scale.float(), dims), _per_element(zero_point.float(), dims)
    inv = torch.reciprocal(s)
    m = mask.reshape(dims)
    level = x_int.reshape(dims).float() - z
    inside = ((g * (level * s - wf)) * inv) * grad_factor
    outside = (g * level) * grad_factor
    ds = torch.where(m, inside, outside)
    dw = torch.where(m, g, torch.zeros_like(g)).to(w.dtype)
    return dw.reshape(w.shape), ds


def backward(dy, w, x_int, mask, scale, zero_point, dims, grad_factor: float, need_dscale: bool = True):
    """``(dw, dscale float32 [C])``: the per-element values of ``backward_elements``, ``ds`` summed per quantizer
    over the fixed blocks of ``make_blocks(dims, REDUCE_TARGET)`` and finished in float64."""
    dw, ds = backward_elements(dy, w, x_int, mask, scale, zero_point, dims, grad_factor)
    if not need_dscale:
        return dw, ds.new_empty((0,))
    partials = reference_partials(ds, make_blocks(dims, REDUCE_TARGET), "sum")
    return dw, finish_sum(partials, 1, torch.float32).reshape(-1)


class Launchers:
    """The reference backend's adapter of the family's launcher contract (qkernels/oscillation_fake_quant.py)."""

    @staticmethod
    def forward(w, out, x_int, mask, scale, zero_point, B, O, C, I, quant_min, quant_max, prev_x_int,
                prev_switch_dir, ema_oscillation, frozen, frozen_x_int, ema_x_int, started, threshold, tracking,
                momentum, use_ema_x_int, need_grad):
        state = dict(zip(STATE_FIELDS, (prev_x_int, prev_switch_dir, ema_oscillation, frozen, frozen_x_int,
                                        ema_x_int)))
        y, xi, m, count = step(w, scale, zero_point, (B, O, C, I), quant_min, quant_max, state, started, threshold,
                               tracking, momentum, use_ema_x_int)
        out.copy_(y)
        if need_grad:
            x_int.copy_(xi)
            mask.copy_(m)
        return count.reshape(1)

    @staticmethod
    def backward(dy, w, x_int, mask, dw, scale, zero_point, B, O, C, I, grad_factor, need_dscale):
        grad_w, dscale = backward(dy, w, x_int, mask, scale, zero_point, (B, O, C, I), grad_factor, need_dscale)
        dw.copy_(grad_w)
        return dscale


class OfficialTracker:
    """The official code's tracker as plain tensor ops (the note's §2 pseudo-code, ``TrackOscillation`` with its
    seven float32 tensors and lazy allocations), for tests and benchmarks: ``__call__(x_int)`` takes the clamped
    integer (float32) of this call and returns the integer after frozen substitution. It is the literal reading
    that the fused step must equal."""

    def __init__(self, momentum: float, freeze_threshold: float = 0.0, use_ema_x_int: bool = True):
        self.momentum, self.freeze_threshold, self.use_ema_x_int = momentum, freeze_threshold, use_ema_x_int
        self.prev_x_int = self.prev_switch_dir = self.ema_oscillation = self.total_oscillation = None
        self.frozen = self.frozen_x_int = self.ema_x_int = None
        self.oscillated_sum = None

    def __call__(self, x_int: torch.Tensor, tracking: bool = True) -> torch.Tensor:
        x = x_int
        if self.frozen is not None:
            x = torch.where(self.frozen, self.frozen_x_int, x)
        if not tracking:
            return x
        m = self.momentum
        if self.prev_x_int is None:
            self.prev_x_int = x.clone()
            self.prev_switch_dir = torch.zeros_like(x)
            self.ema_oscillation = torch.zeros_like(x)
            self.total_oscillation = torch.zeros_like(x)
        d = torch.round(self.prev_x_int - x)
        direction = torch.sign(d)
        osc = (self.prev_switch_dir * direction == -1).float()
        self.ema_oscillation = m * osc + (1 - m) * self.ema_oscillation
        changed = d != 0
        self.prev_switch_dir[changed] = direction[changed]
        self.prev_x_int = x.clone()
        self.total_oscillation += osc
        self.oscillated_sum = int(osc.sum())
        if self.freeze_threshold > 0:
            if self.frozen is None:
                self.frozen = torch.zeros_like(x, dtype=torch.bool)
                self.frozen_x_int = torch.zeros_like(x)
                self.ema_x_int = x.clone()
            sel = self.ema_oscillation > self.freeze_threshold
            self.frozen |= sel
            if self.use_ema_x_int:
                self.frozen_x_int[sel] = torch.round(self.ema_x_int[sel])
                self.ema_x_int = m * x + (1 - m) * self.ema_x_int
            else:
                self.frozen_x_int[sel] = x[sel]
        return x
