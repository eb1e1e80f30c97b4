"""The training harness end to end on digits (CPU): methods, outputs, determinism, resume, cross-bit
evaluation, DDP, and the CLI's errors."""

import copy
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import qkernels

pytest.importorskip("sklearn", reason="the harness's default data set ships with scikit-learn")
pytest.importorskip("matplotlib", reason="the harness writes plots")

from qkernels.nn import LearnableFakeQuantize  # noqa: E402
from qkernels.train import (  # noqa: E402
    QuantizedLayer,
    RunConfig,
    accuracy,
    compare,
    quantize_model,
    quantize_weights_max_abs,
    resume,
    run,
)
from qkernels.train import cli  # noqa: E402
from qkernels.train.data import load  # noqa: E402
from qkernels.train.models import build  # noqa: E402
from qkernels.train.quantize import initial_scale  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(data="digits", model="mlp", epochs=2, batch_size=64, progress=False)


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _numbers(metrics: dict) -> dict:
    """The metrics that must repeat exactly (timings removed)."""
    kept = {k: v for k, v in metrics.items() if k not in ("history", "config")}
    kept["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in metrics["history"]]
    return kept


@pytest.mark.parametrize("method", ["fp", "ptq", "qat"])
def test_each_method_trains_and_lowers_the_loss(tmp_path, method):
    metrics = run(RunConfig(**FAST, method=method, wbits=3, abits=3, out=str(tmp_path)))
    losses = [row["train_loss"] for row in metrics["history"]]
    assert losses[-1] < losses[0]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_accuracy"] > 0.5
    assert set(metrics["cross_bit"]) == {"2", "3", "4", "8"}
    for name in ("metrics.json", "history.csv", "checkpoint.pt", "training.png", "cross_bit.png"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"] and saved["config"]["method"] == method
    assert saved["qkernels_version"] and len(saved["history"]) == 2
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "rng"} <= set(checkpoint) and checkpoint["epoch"] == 2
    if method == "qat":
        assert any(k.endswith("parametrizations.weight.0.scale") for k in checkpoint["model"])
        assert any(k.endswith("input_quantizer.scale") for k in checkpoint["model"])
    if method == "ptq":
        assert set(metrics["ptq"]) == {"2", "3", "4", "8"}
        assert metrics["ptq"]["3"] == metrics["test_accuracy"]  # trained at W3A3


@pytest.mark.parametrize("method", ["qat+freeze", "qat+dampen"])
def test_oscillation_methods_lower_the_loss_and_record_oscillations(tmp_path, method):
    """A short run with a fast tracker, so that weights oscillate, freeze (qat+freeze, threshold 0.02 from the
    first step) and are dampened within 2 epochs. (The MLP: the cnn does not learn from scratch at W3A3 in
    2 epochs; the BatchNorm re-estimation is tested in test_oscillation_helpers.py and below.)"""
    config = RunConfig(**FAST, method=method, wbits=3, abits=3,
                       osc_momentum=0.05, freeze_threshold=0.02, freeze_threshold_final=0.02, freeze_start_frac=0.0,
                       dampen_weight=0.5, dampen_weight_final=0.5, out=str(tmp_path))
    metrics = run(config)
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for row in history:
        assert {"test_accuracy_pre_bn", "osc_fraction", "frozen_fraction", "flips_last_step"} <= set(row)
        assert 0 <= row["osc_fraction"] <= 1 and 0 <= row["frozen_fraction"] <= 1
    assert history[-1]["osc_fraction"] > 0
    assert (history[-1]["frozen_fraction"] > 0) == (method == "qat+freeze")
    assert (history[-1]["dampen_loss"] > 0) if method == "qat+dampen" else "dampen_loss" not in history[-1]
    overall = metrics["oscillations"]["overall"]
    assert overall["weights"] > 0 and set(metrics["oscillations"]["layers"])  # the 3-bit middle layers
    assert 0 <= metrics["test_accuracy_pre_bn"] <= 1
    header = (tmp_path / "history.csv").read_text().splitlines()[0]
    assert "osc_fraction" in header and "test_accuracy_pre_bn" in header
    assert (tmp_path / "oscillations.png").is_file()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert any(k.endswith("weight.0.ema_oscillation") for k in checkpoint["model"])


def test_no_bn_reestimate_keeps_the_training_statistics(tmp_path):
    metrics = run(RunConfig(**dict(FAST, model="cnn", epochs=1, batch_size=256), method="qat", bn_reestimate=False,
                            out=str(tmp_path)))
    assert "test_accuracy_pre_bn" not in metrics["history"][0] and "test_accuracy_pre_bn" not in metrics
    assert "osc_fraction" in metrics["history"][0]  # plain qat tracks


def test_same_seed_same_metrics(tmp_path):
    config = RunConfig(**FAST, method="qat", wbits=2, abits=2)
    first = run(replace(config, out=str(tmp_path / "a")))
    second = run(replace(config, out=str(tmp_path / "b")))
    assert _numbers(first) == _numbers(second)
    other = run(replace(config, seed=1, out=str(tmp_path / "c")))
    assert [r["train_loss"] for r in other["history"]] != [r["train_loss"] for r in first["history"]]


@pytest.mark.parametrize("method", ["fp", "qat", "lbt"])
def test_resume_after_an_interruption_gives_the_same_weights(tmp_path, method):
    config = RunConfig(**dict(FAST, epochs=3), method=method, wbits=3, abits=3, quant_lr=1e-3)
    whole = run(replace(config, out=str(tmp_path / "whole")))

    class Interrupted(Exception):
        pass

    def stop_after_first(epoch, model):
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(replace(config, out=str(tmp_path / "cut")), on_epoch_end=stop_after_first)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = resume(str(tmp_path / "cut"))
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert _state_equal(a["model"], b["model"])
    assert _numbers(whole) == _numbers(resumed)


def _by_hand(model: torch.nn.Module, bits: int, first_last_bits: int = 8) -> torch.nn.Module:
    """Every conv/linear weight as s * round(w / s), s = max|w| / L, L = 2^(b-1) - 1 (first/last at
    first_last_bits; a division, as the regularizer's quantizer), written out with torch ops; weight quantizers
    dropped."""
    model = qkernels.oscillation.float_copy(model)
    layers = [m for m in model.modules() if isinstance(m, (QuantizedLayer, torch.nn.Conv2d, torch.nn.Linear))]
    wrapped = {id(m.layer) for m in layers if isinstance(m, QuantizedLayer)}
    layers = [m for m in layers if id(m) not in wrapped]
    for index, layer in enumerate(layers):
        b = first_last_bits if index in (0, len(layers) - 1) else bits
        if isinstance(layer, QuantizedLayer):
            layer.weight_quantizer = torch.nn.Identity()
            layer = layer.layer
        level = 2 ** (b - 1) - 1
        w = layer.weight.detach()
        s = w.abs().max() / level
        layer.weight.data = torch.round(w / s) * s
    return model


@pytest.mark.parametrize("method", ["fp", "qat"])
def test_cross_bit_equals_quantizing_weights_by_hand(tmp_path, method):
    config = RunConfig(**dict(FAST, model="cnn", epochs=1), method=method, wbits=4, abits=4,
                       eval_bits=[2, 3, 5], out=str(tmp_path))
    metrics = run(config)
    data = load("digits")
    model = build("cnn", data.in_channels, data.image_size, data.num_classes)
    if method == "qat":
        quantize_model(model, data.train_x[:64], 4, 4, weights=False)
        qkernels.oscillation.attach(model, 4)
    model.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"])
    for bits in (2, 3, 5):
        ours, theirs = quantize_weights_max_abs(model, bits), _by_hand(model, bits)
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            if name.endswith("weight") and a.dim() > 1:
                assert torch.equal(a, b), name
        expected = accuracy(theirs, data.test_x, data.test_y)
        assert metrics["cross_bit"][str(bits)] == expected


def test_quantize_model_attaches_lsq_quantizers():
    torch.manual_seed(0)
    data = load("digits")
    model = build("cnn", data.in_channels, data.image_size, data.num_classes)
    quantize_model(model, data.train_x[:64], 3, 2, first_last_bits=32)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLayer)]
    assert len(layers) == 5
    first, last, middle = layers[0], layers[-1], layers[1:-1]
    # first/last at 32 bits: no weight quantizer; the image (first input) is never quantized
    assert isinstance(first.weight_quantizer, torch.nn.Identity) and isinstance(first.input_quantizer,
                                                                                  torch.nn.Identity)
    assert isinstance(last.weight_quantizer, torch.nn.Identity) and isinstance(last.input_quantizer,
                                                                                torch.nn.Identity)
    for layer in middle:
        wq, iq = layer.weight_quantizer, layer.input_quantizer
        assert isinstance(wq, LearnableFakeQuantize) and (wq.quant_min, wq.quant_max) == (-4, 3)
        assert isinstance(iq, LearnableFakeQuantize) and (iq.quant_min, iq.quant_max) == (0, 3)  # after ReLU
        assert wq.scale.requires_grad and not wq.zero_point.requires_grad
    loss = model(data.train_x[:8]).logsumexp(1).sum()
    loss.backward()
    assert all(layer.weight_quantizer.scale.grad is not None and layer.input_quantizer.scale.grad is not None
               for layer in middle)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, data.train_x[:64], 3, 3)


def test_signed_input_grid_for_signed_data():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    quantize_model(model, torch.randn(32, 4), 4, 4)
    assert (model[1].input_quantizer.quant_min, model[1].input_quantizer.quant_max) == (-8, 7)


def test_initial_scales():
    x = torch.tensor([[0.0, 0.5, -2.0, 1.0], [0.25, 0.1, 0.0, -0.3]])
    assert torch.equal(initial_scale(x, -4, 3, "minmax"), torch.tensor([2.0 / 3]))
    assert torch.equal(initial_scale(x, -4, 3, "minmax", per_channel=True), torch.tensor([2.0, 0.3]) / 3)
    # mse: the candidate with the least squared error, checked against an explicit search
    best = min((k * 2.0 / 100 / 3 for k in range(1, 101)),
               key=lambda s: float(((torch.clamp(torch.round(x / s), -4, 3) * s - x) ** 2).sum()))
    assert initial_scale(x, -4, 3, "mse").item() == pytest.approx(best, rel=1e-6)


def test_compare_writes_its_files(tmp_path, capsys):
    rows = compare(RunConfig(**dict(FAST, epochs=1)), ["fp", "ptq", "qat"], [2, 3], str(tmp_path))
    assert [(r["method"], r["wbits"]) for r in rows] == [("fp", 32), ("ptq", 2), ("ptq", 3), ("qat", 2),
                                                        ("qat", 3)]
    for name in ("results.csv", "results.md", "accuracy_vs_bits.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "results.csv").read_text().count("\n") == 6
    table = (tmp_path / "results.md").read_text()
    assert "| qat |" in table and "W2A2" in table and "W3A3" in table
    assert "W2A2" in capsys.readouterr().out


def test_quickstart_compare_command_with_a_smaller_budget(tmp_path):
    line = next(l for l in (ROOT / "tools" / "quickstart.sh").read_text().splitlines()
                if "qkernels.train compare" in l)
    args = line.split("qkernels.train", 1)[1].split()
    out = args.index("--out")
    args[out + 1] = str(tmp_path / "quickstart")
    args += ["--epochs", "1", "--bits", "2", "--no-progress"]
    result = subprocess.run([sys.executable, "-m", "qkernels.train", *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    assert re.search(r"qat\s+\d+\.\d%", result.stdout)
    assert (tmp_path / "quickstart" / "results.md").is_file()


BAD = [
    (["run", "--method", "int4"], "--method"),
    (["run", "--model", "vgg"], "--model"),
    (["run", "--data", "mnist"], "--data"),
    (["run", "--wbits", "1"], "--wbits"),
    (["run", "--abits", "9"], "--abits"),
    (["run", "--wbits", "four"], "--wbits"),
    (["run", "--first-last-bits", "16"], "--first-last-bits"),
    (["run", "--eval-bits", "2,12"], "--eval-bits"),
    (["run", "--eval-bits", "2,x"], "--eval-bits"),
    (["run", "--epochs", "0"], "--epochs"),
    (["run", "--batch-size", "-1"], "--batch-size"),
    (["run", "--lr", "0"], "--lr"),
    (["run", "--data", "cifar10"], "--data-dir"),
    (["run", "--data", "cifar100", "--data-dir", "{tmp}/missing"], "--data-dir"),
    (["run", "--data", "cifar10", "--data-dir", "{tmp}"], "--data-dir"),
    (["run", "--resume", "{tmp}"], "--resume"),
    (["run", "--resume", "{tmp}/missing"], "--resume"),
    (["run", "--init-from", "{tmp}"], "--init-from"),
    (["run", "--config", "{tmp}/missing.toml"], "--config"),
    (["run", "--config", "{tmp}/unknown.json"], "--config"),
    (["run", "--config", "{tmp}/bits.toml"], "--wbits"),
    (["run", "--device", "cuda:0" if not torch.cuda.is_available() else "tpu"], "--device"),
    (["run", "--backend", "fast"], "--backend"),
    (["run", "--osc-momentum", "0"], "--osc-momentum"),
    (["run", "--osc-momentum", "1.5"], "--osc-momentum"),
    (["run", "--osc-threshold", "-0.1"], "--osc-threshold"),
    (["run", "--freeze-threshold", "-1"], "--freeze-threshold"),
    (["run", "--freeze-threshold-final", "inf"], "--freeze-threshold-final"),
    (["run", "--freeze-start-frac", "1"], "--freeze-start-frac"),
    (["run", "--dampen-weight", "nan"], "--dampen-weight"),
    (["run", "--dampen-weight-final", "-0.1"], "--dampen-weight-final"),
    (["run", "--dampen-start-frac", "-0.5"], "--dampen-start-frac"),
    (["run", "--dampen-aggregation", "median"], "--dampen-aggregation"),
    (["run", "--config", "{tmp}/bn.json"], "--bn-reestimate"),
    (["run", "--lam", "-1"], "--lam"),
    (["run", "--lam", "nan"], "--lam"),
    (["run", "--lam", "inf"], "--lam"),
    (["run", "--method", "oscreg", "--per-channel"], "--per-channel"),
    (["run", "--abits", "16"], "--abits"),
    (["run", "--gbits", "1"], "--gbits"),
    (["run", "--gbits", "32"], "--gbits"),
    (["run", "--interval", "learned"], "--interval"),
    (["run", "--config", "{tmp}/init.json"], "--grad-init"),
    (["run", "--clip-ratio", "0"], "--clip-ratio"),
    (["run", "--clip-ratio", "1.5"], "--clip-ratio"),
    (["compare", "--methods", "fp,int4"], "--methods"),
    (["compare", "--bits", "2,1"], "--bits"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_configuration_exits_2_naming_the_flag(tmp_path, capsys, argv, flag):
    (tmp_path / "unknown.json").write_text(json.dumps({"wbits": 4, "colour": "red"}))
    (tmp_path / "bits.toml").write_text("wbits = 1\nepochs = 1\n")
    (tmp_path / "bn.json").write_text(json.dumps({"bn_reestimate": "yes"}))
    (tmp_path / "init.json").write_text(json.dumps({"grad_init": "zeros"}))
    out = tmp_path / "out"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--resume" not in argv:
        argv += ["--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(cli.main(argv))
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()  # before any work


def test_resume_rejects_other_flags(tmp_path, capsys):
    run(RunConfig(**dict(FAST, epochs=1), method="fp", out=str(tmp_path)))
    assert cli.main(["run", "--resume", str(tmp_path), "--epochs", "5"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_config_file_keys_and_flags_win(tmp_path):
    (tmp_path / "c.toml").write_text('model = "mlp"\nmethod = "fp"\nepochs = 1\nbatch-size = 128\nseed = 3\n')
    assert cli.main(["run", "--config", str(tmp_path / "c.toml"), "--seed", "5", "--no-progress",
                     "--out", str(tmp_path / "o")]) == 0
    config = json.loads((tmp_path / "o" / "metrics.json").read_text())["config"]
    assert (config["model"], config["batch_size"], config["seed"], config["epochs"]) == ("mlp", 128, 5, 1)


def test_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match=r"qkernels\[train\]"):
        run(RunConfig(**FAST, method="fp", out=None))


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """2 ranks x 128 samples against 1 process x 256 on the same global batches, 5 steps of QAT (MLP: no
    BatchNorm, whose batch statistics are per rank). The ranks must agree bit for bit (DDP gives them the same
    averaged gradients). Against one process the gradient is summed in another order (two partial means
    averaged by the all-reduce: one step's gradients agree to ~1e-8), and QAT carries such differences forward
    and grows them where a value crosses a rounding boundary (measured at W3A3 with Adam: 7e-9 after 5 steps,
    2e-4 after 11, 2e-3 after 22), hence the short run and atol 1e-5 on weights of ~0.1 and scales of ~0.05
    (with the oscillation weight quantizers, measured: 1.04e-6 on a last-layer weight, 3.5e-6 on the last
    layer's input scale after 5 steps); an unaveraged or misassigned batch moves them by more than 1e-4 in one
    step."""
    from train_ddp_worker import CONFIG

    batch = 256
    rank0, rank1 = _torchrun_worker(tmp_path, batch)
    assert _state_equal(rank0, rank1)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2

    single = {}
    run(RunConfig(**CONFIG, batch_size=batch, out=str(tmp_path / "single")),
        on_epoch_end=lambda epoch, model: single.update(copy.deepcopy(model.state_dict())))
    assert rank0.keys() == single.keys()
    assert any(key.endswith("input_quantizer.scale") for key in single)
    for key in rank0:
        if rank0[key].is_floating_point():
            torch.testing.assert_close(rank0[key], single[key], atol=1e-5, rtol=0,
                                       msg=lambda m, key=key: f"{key}: {m}")
        else:
            assert torch.equal(rank0[key], single[key]), key


def _torchrun_worker(out: Path, batch: int, overrides: dict | None = None):
    args = [str(out), str(batch)] + ([json.dumps(overrides)] if overrides else [])
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", str(ROOT / "tests" / "train_ddp_worker.py"), *args],
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return (torch.load(out / "rank0.pt", weights_only=True), torch.load(out / "rank1.pt", weights_only=True))


def test_ddp_oscillation_state_same_on_ranks(tmp_path):
    """qat+freeze on 2 gloo ranks (BN-free MLP, so the weights are identical on the ranks): the oscillation
    state (integers, directions, EMAs, frozen masks, counters) is identical too, and it did track and freeze."""
    rank0, rank1 = _torchrun_worker(tmp_path, 64, dict(method="qat+freeze", osc_momentum=0.1, freeze_threshold=0.03,
                                                       freeze_threshold_final=0.03, freeze_start_frac=0.0))
    assert _state_equal(rank0, rank1)
    frozen = [v for k, v in rank0.items() if k.endswith("weight.0.frozen")]
    counts = [v for k, v in rank0.items() if k.endswith("weight.0.num_oscillations")]
    assert len(frozen) == 3 and sum(int(c[0]) for c in counts) > 0 and any(bool(f.any()) for f in frozen)


def test_ddp_gradient_clip_ratios_same_on_ranks(tmp_path):
    """lbt on 2 gloo ranks: each rank quantizes its own share of the output gradients, and the clip ratios γ (from
    the ranks' mean first-batch initialisation, then updates from the summed clipped counts) are identical on the
    ranks, as is everything else; they moved from their start."""
    rank0, rank1 = _torchrun_worker(tmp_path, 64, dict(method="lbt"))
    assert _state_equal(rank0, rank1)
    gammas = [float(v) for k, v in rank0.items() if k.endswith("grad_quantizer.clip_ratio")]
    assert len(gammas) == 3 and all(0 < g <= 1 for g in gammas) and any(g != 1.0 for g in gammas)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_quantize_model_on_the_cifar_models(name):
    torch.manual_seed(0)
    model = build(name, 3, 32, 10)
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    x = torch.randn(4, 3, 32, 32)
    quantize_model(model, x, 4, 4, per_channel=True)
    wrapped = [m for m in model.modules() if isinstance(m, QuantizedLayer)]
    assert len(wrapped) == layers
    depthwise = [m for m in wrapped if getattr(m.layer, "groups", 1) > 1] if name == "mobilenetv2" else []
    assert all(m.weight_quantizer.scale.shape == (m.layer.out_channels,) for m in depthwise)
    model(x).square().mean().backward()
    assert all(m.weight_quantizer.scale.grad is not None for m in wrapped[1:-1])
