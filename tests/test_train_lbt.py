"""The harness's lbt method (Kim et al. 2024: QAT with the layers' output gradients quantized): the gradient
quantizers quantize_model attaches, the per-step clip ratios and per-epoch errors it logs, and compare's labels;
end to end on digits with the MLP (CPU, a second or two per epoch). Resume and DDP: test_train.py."""

import csv
import json

import pytest
import torch

import qkernels

pytest.importorskip("sklearn", reason="the harness's default data set ships with scikit-learn")
pytest.importorskip("matplotlib", reason="the harness writes plots")

from qkernels.nn import GradientQuantizer  # noqa: E402
from qkernels.train import QuantizedLayer, RunConfig, compare, quantize_model, run  # noqa: E402
from qkernels.train.quantize import gradient_quantizers  # noqa: E402

# 11 steps of 128 per epoch
TINY = dict(data="digits", model="mlp", batch_size=128, progress=False)


def _csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_lbt_trains_and_logs_clip_ratios_and_errors(tmp_path):
    metrics = run(RunConfig(**TINY, epochs=2, method="lbt", wbits=4, abits=4, gbits=4, out=str(tmp_path)))
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] and metrics["test_accuracy"] > 0.5
    for name in ("clip_ratio.csv", "gradients.csv", "clip_ratio.png", "gradient_error.png", "oscillations.png"):
        assert (tmp_path / name).is_file(), name
    layers = list(metrics["gradients"])
    assert len(layers) == 3 and [metrics["gradients"][n]["bits"] for n in layers] == [8, 4, 8]  # first/last at 8

    trace = _csv(tmp_path / "clip_ratio.csv")
    assert trace[0] == ["step"] + layers and [int(r[0]) for r in trace[1:]] == list(range(1, 23))
    gammas = torch.tensor([[float(v) for v in row[1:]] for row in trace[1:]])
    assert bool(((gammas >= 1e-3) & (gammas <= 1)).all())
    # after the first step (the initialisation, then one update) γ moves by η = 1e-3 per step or not at all
    steps = (gammas[1:] - gammas[:-1]).abs()
    assert bool((steps < 1e-3 + 1e-6).all()) and bool((steps > 1e-3 - 1e-6).any())
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    saved = [v for k, v in checkpoint["model"].items() if k.endswith("grad_quantizer.clip_ratio")]
    assert torch.equal(torch.stack(saved), gammas[-1])  # the log's last row is the model's γ

    rows = list(csv.DictReader(open(tmp_path / "gradients.csv", newline="")))
    assert [(int(r["epoch"]), r["layer"]) for r in rows] == [(e, n) for e in (1, 2) for n in layers]
    for row in rows:
        errors = [float(row[k]) for k in ("error_all", "error_large", "error_all_minmax", "error_large_minmax")]
        assert all(0 <= e < 1 for e in errors) and errors[0] > 0
    assert [float(r["clip_ratio"]) for r in rows[3:]] == gammas[-1].tolist()  # γ after the epoch's last step
    saved = json.loads((tmp_path / "metrics.json").read_text())["gradients"]
    assert saved == {r["layer"]: {"epoch": 2, "bits": int(r["bits"]), **{k: float(r[k]) for k in r if k not in (
        "epoch", "layer", "bits")}} for r in rows[3:]}


def test_fixed_interval_keeps_its_clip_ratio(tmp_path):
    metrics = run(RunConfig(**TINY, epochs=1, method="lbt", interval="fixed", clip_ratio=0.7, out=str(tmp_path)))
    trace = _csv(tmp_path / "clip_ratio.csv")[1:]
    assert len(trace) == 11 and {float(v) for row in trace for v in row[1:]} == {float(torch.tensor(0.7))}
    assert all(row["clip_ratio"] == float(torch.tensor(0.7)) for row in metrics["gradients"].values())


def test_adaptive_interval_from_a_given_clip_ratio(tmp_path):
    """--grad-init none starts the adaptive γ at --clip-ratio: after the first step it is one update away."""
    run(RunConfig(**TINY, epochs=1, method="lbt", grad_init="none", clip_ratio=0.5, out=str(tmp_path)))
    first = [float(v) for v in _csv(tmp_path / "clip_ratio.csv")[1][1:]]
    assert all(abs(g - 0.5) == pytest.approx(1e-3, abs=1e-6) for g in first)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))


def test_quantize_model_puts_gradient_quantizers_by_the_first_last_rule():
    x = torch.randn(16, 6)
    bits = lambda model: [q.bits for q in gradient_quantizers(model).values()]  # noqa: E731
    assert bits(quantize_model(_mlp(), x, 4, 4, gbits=3)) == [8, 3, 8]
    assert bits(quantize_model(_mlp(), x, 4, 4, gbits=3, first_last_bits=32)) == [3]
    model = quantize_model(_mlp(), x, 4, 4)  # gbits 32 (qat): no gradient quantizer at all
    assert not gradient_quantizers(model) and not any(isinstance(m, GradientQuantizer) for m in model.modules())
    model = quantize_model(_mlp(), x, 4, 4, gbits=5, grad_quantizer=dict(interval="fixed", clip_ratio=0.25))
    assert {float(q.clip_ratio) for q in gradient_quantizers(model).values()} == {0.25}


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_quantized_layer_backward_uses_the_quantized_output_gradient(kind):
    """dX, dW and the bias gradient of a QuantizedLayer with a gradient quantizer (nearest rounding, γ 0.5) equal,
    bit for bit, the plain layer's backward fed quantize_gradient's output for the same gradient."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5) if kind == "linear" else torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(7, 6) if kind == "linear" else torch.randn(2, 3, 5, 5)
    plain = type(layer)(*((6, 5) if kind == "linear" else (3, 4, 3)), **({} if kind == "linear" else {"padding": 1}))
    plain.load_state_dict(layer.state_dict())
    wrapped = QuantizedLayer(layer, grad_quantizer=GradientQuantizer(4, "nearest", "fixed", clip_ratio=0.5))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = wrapped(xa)
    g = torch.randn(out.shape) ** 3  # heavy tails: values beyond the clip
    out.backward(g)
    g_hat, n_clipped = qkernels.quantize_gradient(g, 4, 0.5, rounding="nearest")
    assert int(n_clipped) > 0 and not torch.equal(g_hat, g)
    plain(xb).backward(g_hat)
    for a, b in ((xa.grad, xb.grad), (layer.weight.grad, plain.weight.grad), (layer.bias.grad, plain.bias.grad)):
        assert torch.equal(a, b)


def test_compare_labels_lbt_runs_with_their_gradient_bits(tmp_path, capsys):
    rows = compare(RunConfig(**TINY, epochs=1, gbits=5), ["fp", "lbt"], [3], str(tmp_path))
    assert [(r["method"], r["wbits"], r["abits"], r["gbits"]) for r in rows] == [("fp", 32, 32, 32),
                                                                               ("lbt", 3, 3, 5)]
    assert (tmp_path / "lbt_w3a3g5" / "clip_ratio.csv").is_file()
    assert "W3A3G5" in (tmp_path / "results.md").read_text() and "W3A3G5" in capsys.readouterr().out
    header = _csv(tmp_path / "results.csv")[0]
    assert header[:4] == ["method", "wbits", "abits", "gbits"]
