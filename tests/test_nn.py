"""qkernels.nn modules and qkernels.qconfig against torch.ao: numbers, state dicts, prepare_qat, compile.

Bit-exact throughout (torch.equal): outputs, input gradients and every state-dict entry (key, dtype, shape,
value); the learnable module's qparam gradients are sums in another order and are not compared here (see
test_fake_quant_learnable.py for their tolerance).
"""

import copy
import warnings

import pytest
import torch
import torch.ao.quantization as tq
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
from torch.ao.quantization.quantize_fx import prepare_qat_fx

import qkernels
import qkernels.nn as qnn
import qkernels.qconfig as qqc

FLAGS = [(1, 1), (1, 1), (0, 1), (1, 0), (1, 1), (0, 0), (1, 1)]

PAIRS = [  # (torch.ao constructor, qkernels constructor, input shape, flag buffer toggled with fake_quant_enabled)
    (tq.default_fake_quant, qqc.to_qkernels(tq.default_fake_quant), (5, 8), "observer_enabled"),
    (tq.default_per_channel_weight_fake_quant, qqc.to_qkernels(tq.default_per_channel_weight_fake_quant), (6, 8),
     "observer_enabled"),
    (tq.default_fused_act_fake_quant, qqc.to_qkernels(tq.default_fused_act_fake_quant), (5, 8), "observer_enabled"),
    (tq.default_fused_per_channel_wt_fake_quant, qqc.to_qkernels(tq.default_fused_per_channel_wt_fake_quant),
     (6, 8), "observer_enabled"),
    (tq.fused_wt_fake_quant_range_neg_127_to_127, qqc.to_qkernels(tq.fused_wt_fake_quant_range_neg_127_to_127),
     (6, 8), "observer_enabled"),
    (_LearnableFakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                      scale=0.05, zero_point=2.5, use_grad_scaling=True),
     qnn.LearnableFakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                         scale=0.05, zero_point=2.5, use_grad_scaling=True), (5, 8), "static_enabled"),
    (_LearnableFakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                      quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                      channel_len=6, ch_axis=0),
     qnn.LearnableFakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                         quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                         channel_len=6, ch_axis=0), (6, 8), "static_enabled"),
]


def step_input(step, shape):
    g = torch.Generator().manual_seed(step)
    return torch.randn(shape, generator=g) * (step + 1) + 0.2


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key


def run_steps(ao, ours, shape, flag):
    for step, (observe, fake_quant) in enumerate(FLAGS):
        for m in (ao, ours):
            getattr(m, flag)[0] = observe
            m.fake_quant_enabled[0] = fake_quant
        xa, xb = (step_input(step, shape).requires_grad_() for _ in range(2))
        ya, yb = ao(xa), ours(xb)
        ya.sum().backward()
        yb.sum().backward()
        assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad), f"step {step}"
        assert_same_state(ao, ours)


@pytest.mark.parametrize("ao_ctor,our_ctor,shape,flag", PAIRS)
def test_modules_match_torch_ao_and_share_state_dicts(ao_ctor, our_ctor, shape, flag):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao, ours = ao_ctor(), our_ctor()
        assert isinstance(ours, type(ao))  # a subclass: torch.ao's helpers and isinstance checks keep working
        assert_same_state(ao, ours)  # fresh modules: same keys, dtypes, shapes, values
        run_steps(ao, ours, shape, flag)
        # Checkpoints load both ways and give the same next step.
        ao2, ours2 = ao_ctor(), our_ctor()
        ours2.load_state_dict(ao.state_dict())
        ao2.load_state_dict(ours.state_dict())
        x = step_input(99, shape)
        assert torch.equal(ours2(x), ao(x)) and torch.equal(ao2(x), ours(x))


def test_unsupported_observer_raises():
    with pytest.raises(ValueError, match="needs a MovingAverageMinMaxObserver"):
        qnn.FakeQuantize(observer=tq.MinMaxObserver)


def test_eps_follows_loaded_state_dict():
    module = qqc.to_qkernels(tq.default_fake_quant)()
    state = module.state_dict()
    state["activation_post_process.eps"] = torch.tensor([2.0**-12])
    module.load_state_dict(state)
    assert module._observer_eps == 2.0**-12


def test_fused_module_takes_bfloat16():
    """torch's fused op rejects bf16 input (AMP QAT); the qkernels module fake-quantizes it (math in fp32)."""
    module = qqc.to_qkernels(tq.default_fused_act_fake_quant)()
    x = step_input(0, (4, 8))
    y = module(x.bfloat16())
    assert y.dtype == torch.bfloat16
    ref = qqc.to_qkernels(tq.default_fused_act_fake_quant)()
    assert torch.equal(y, ref(x.bfloat16().float()).bfloat16())


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.fc1 = torch.nn.Linear(16, 32)
        self.relu = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(32, 4)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


def batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


def train(model, steps=4):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(steps):
        x, t = batch(step)
        loss = torch.nn.functional.cross_entropy(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


@pytest.mark.parametrize("version", [0, 1])
def test_prepare_qat_with_qkernels_qconfig_trains_like_torch_ao_and_compiles(version):
    torch.manual_seed(0)
    base = Net().train()
    stock, ours = copy.deepcopy(base), copy.deepcopy(base)
    stock.qconfig = tq.get_default_qat_qconfig("x86", version)
    ours.qconfig = qqc.get_default_qat_qconfig("x86", version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.prepare_qat(stock, inplace=True)
        tq.prepare_qat(ours, inplace=True)
        kinds = {type(m) for m in ours.modules() if isinstance(m, tq.FakeQuantizeBase)}
        assert kinds <= {qnn.FakeQuantize, qnn.FusedMovingAvgObsFakeQuantize} and kinds
        assert all(torch.equal(a, b) for a, b in zip(train(stock), train(ours)))
        assert_same_state(stock, ours)
        # fullgraph compile of the prepared model (after the eager steps sized the per-channel buffers)
        eager, compiled_model = copy.deepcopy(ours), qqc.compilable(copy.deepcopy(ours))
        torch._dynamo.reset()
        compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
        for step in range(2):
            x, _ = batch(10 + step)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = eager(xa), compiled(xb)
            ya.sum().backward()
            yb.sum().backward()
            assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad), f"step {step}"
            assert all(torch.equal(p.grad, q.grad) for p, q in zip(eager.parameters(), compiled_model.parameters()))
        assert_same_state(eager, compiled_model)


def test_prepare_qat_fx_with_qkernels_qconfig_mapping():
    torch.manual_seed(0)
    base = Net().train()
    example = (torch.randn(8, 16),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = prepare_qat_fx(copy.deepcopy(base), tq.get_default_qat_qconfig_mapping("x86"), example)
        ours = prepare_qat_fx(copy.deepcopy(base), qqc.get_default_qat_qconfig_mapping("x86"), example)
        kinds = {type(m) for m in ours.modules() if isinstance(m, tq.FakeQuantizeBase)}
        assert kinds == {qnn.FusedMovingAvgObsFakeQuantize}
        assert all(torch.equal(a, b) for a, b in zip(train(stock), train(ours)))
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(ours), fullgraph=True, backend="aot_eager")
        x, _ = batch(20)
        assert torch.equal(compiled(x), copy.deepcopy(ours)(x))


PER_CHANNEL = [  # per-channel qkernels constructors whose observer's running stats start empty
    qqc.to_qkernels(tq.default_per_channel_weight_fake_quant),
    qqc.to_qkernels(tq.default_fused_per_channel_wt_fake_quant),
    PAIRS[-1][1],  # LearnableFakeQuantize, per channel
]


@pytest.mark.parametrize("fullgraph", [True, False])
@pytest.mark.parametrize("ctor", PER_CHANNEL, ids=["FakeQuantize", "FusedMovingAvgObsFakeQuantize", "Learnable"])
def test_compiling_with_empty_per_channel_stats_raises_our_error(ctor, fullgraph):
    module = ctor()
    assert module.activation_post_process.min_val.numel() == 0
    torch._dynamo.reset()
    with pytest.raises(qnn.EmptyRunningStatsError) as info:
        torch.compile(module, fullgraph=fullgraph, backend="eager")(torch.randn(6, 8))
    text = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert f"qkernels.nn.{type(module).__name__}: the per-channel running stats are empty" in text
    assert "run one eager forward step, or load a state dict, before torch.compile" in text
    assert "Observed exception" not in text
    # One eager step sizes them; then the same module compiles and matches eager.
    module(torch.randn(6, 8))
    assert module.activation_post_process.min_val.shape == (6,)
    eager = copy.deepcopy(module)
    torch._dynamo.reset()
    x = torch.randn(6, 8)
    assert torch.equal(torch.compile(module, fullgraph=fullgraph, backend="eager")(x), eager(x))


def prepared_net(qconfig) -> Net:
    """A seeded Net prepared for QAT in place with ``qconfig`` (torch.ao's deprecation warnings silenced)."""
    torch.manual_seed(0)
    model = Net().train()
    model.qconfig = qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.prepare_qat(model, inplace=True)
    return model


def test_empty_stats_error_from_a_prepared_model_and_a_loaded_state_dict_fixes_it():
    model = prepared_net(qqc.get_default_qat_qconfig("x86"))
    sized = copy.deepcopy(model)
    sized(batch(0)[0])  # one eager step sizes the weights' per-channel stats
    torch._dynamo.reset()
    with pytest.raises(qnn.EmptyRunningStatsError, match="per-channel running stats are empty"):
        torch.compile(qqc.compilable(model), fullgraph=True, backend="eager")(batch(1)[0])
    model.load_state_dict(sized.state_dict())
    torch._dynamo.reset()
    x = batch(1)[0]
    assert torch.equal(torch.compile(qqc.compilable(model), fullgraph=True, backend="eager")(x), sized(x))


def test_empty_stats_marker_is_what_assume_constant_result_sets():
    """qkernels.nn marks its raising function as torch.compiler.assume_constant_result would, without importing
    torch._dynamo at import time: this fails if torch changes how that decorator marks a function."""
    def probe():
        return 0
    marked = torch.compiler.assume_constant_result(probe)
    assert vars(marked) == vars(qnn._raise_empty_stats) and vars(marked)
    assert qnn.EmptyRunningStatsError.__module__ == "qkernels.nn"
    with pytest.raises(AttributeError, match="no_such_name"):
        qnn.no_such_name


def test_patch_torch_keeps_the_training_trajectory_of_a_stock_qat_model():
    """A QAT model prepared with stock torch.ao trains identically with its fake quantization on qkernels."""
    base = prepared_net(tq.get_default_qat_qconfig("x86"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain, patched = copy.deepcopy(base), copy.deepcopy(base)
        want = train(plain)
        with qkernels.patched_torch():
            got = train(patched)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert_same_state(plain, patched)
