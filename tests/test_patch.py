"""patch_torch routes torch's fake-quant entry points to qkernels and undo restores torch."""

import torch

import qkernels
from qkernels import _shared, backends


class CallCounter:
    """Counts qkernels op executions: calls that the C++ entry points run (they return a tensor) and calls
    that ask qkernels.backends for a backend (every other op does, once)."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = backends.select

        def counting(*args, **kwargs):
            self.n += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(backends, "select", counting)
        if _shared._entry is not None:
            monkeypatch.setattr(_shared, "_entry", _CountingEntry(_shared._entry, self))


class _CountingEntry:
    def __init__(self, entry, counter: CallCounter):
        self._entry, self._counter = entry, counter

    def __getattr__(self, name):
        run = getattr(self._entry, name)

        def counted(*args):
            out = run(*args)
            self._counter.n += out is not None
            return out

        return counted


def test_patch_routes_and_undo_restores(monkeypatch):
    originals = (torch.fake_quantize_per_tensor_affine, torch.fake_quantize_per_channel_affine)
    counter = CallCounter(monkeypatch)
    x = torch.randn(4, 6)
    s, zp = torch.rand(4) + 0.1, torch.zeros(4, dtype=torch.int32)
    expected = (torch.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255),
                torch.fake_quantize_per_channel_affine(x, s, zp, 0, -128, 127))
    assert counter.n == 0
    qkernels.patch_torch()
    try:
        qkernels.patch_torch()  # idempotent
        got = (torch.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255),
               torch.fake_quantize_per_channel_affine(x, s, zp, 0, -128, 127))
        assert counter.n == 2
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    finally:
        qkernels.unpatch_torch()
    assert (torch.fake_quantize_per_tensor_affine, torch.fake_quantize_per_channel_affine) == originals
    torch.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255)
    assert counter.n == 2


def test_patched_torch_context_and_torch_ao_modules(monkeypatch):
    """Stock torch.ao FakeQuantize modules run on qkernels inside the context, with identical outputs."""
    counter = CallCounter(monkeypatch)
    act = torch.ao.quantization.default_fake_quant()
    wt = torch.ao.quantization.default_per_channel_weight_fake_quant()
    x, w = torch.randn(8, 16), torch.randn(5, 16)
    act(x), wt(w)  # observe once, then freeze the qparams
    act.disable_observer(), wt.disable_observer()
    want = (act(x), wt(w))
    with qkernels.patched_torch():
        with qkernels.patched_torch():  # nested use keeps the outer patch
            pass
        assert qkernels.patch.is_patched()
        got = (act(x), wt(w))
    assert not qkernels.patch.is_patched()
    assert counter.n == 2
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_patch_routes_learnable_ops_and_torch_ao_learnable_module(monkeypatch):
    """torch.ao's _LearnableFakeQuantize (per-tensor and per-channel) runs on qkernels under the patch: same
    output and input gradient bits, qparam gradients equal up to summation order."""
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    counter = CallCounter(monkeypatch)
    obs = torch.ao.quantization.MovingAverageMinMaxObserver
    pc_obs = torch.ao.quantization.MovingAveragePerChannelMinMaxObserver
    modules = [
        _LearnableFakeQuantize(obs, quant_min=0, quant_max=255, scale=0.05, zero_point=2.5, use_grad_scaling=True),
        _LearnableFakeQuantize(pc_obs, quant_min=-128, quant_max=127, channel_len=8, ch_axis=1,
                               qscheme=torch.per_channel_affine, dtype=torch.qint8),
    ]
    x = torch.randn(4, 8, 3)
    for m in modules:
        m.enable_param_learning()
        runs = []
        for patched in (False, True):
            m.zero_grad()
            xs = x.clone().requires_grad_()
            if patched:
                with qkernels.patched_torch():
                    y = m(xs)
            else:
                y = m(xs)
            y.backward(torch.ones_like(y))
            runs.append((y.detach(), xs.grad, m.scale.grad.clone(), m.zero_point.grad.clone()))
        (y0, dx0, ds0, dz0), (y1, dx1, ds1, dz1) = runs
        assert torch.equal(y0, y1) and torch.equal(dx0, dx1)
        # (sums in another order: see test_fake_quant_learnable)
        torch.testing.assert_close(ds1, ds0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dz1, dz0, rtol=1e-5, atol=1e-6)
    assert counter.n == 2  # one per patched module call (its qparams are nn.Parameters: plain eager calls)
