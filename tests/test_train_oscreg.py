"""The harness's oscreg method (Wenshøj et al.'s regularizer, then PTQ) and the compare grid (target bits ×
evaluation bits), end to end on digits with the MLP (CPU, a second or two per epoch)."""

import csv
import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("sklearn", reason="the harness's default data set ships with scikit-learn")
pytest.importorskip("matplotlib", reason="the harness writes plots")

from qkernels.train import RunConfig, compare, run  # noqa: E402
from qkernels.train.models import build  # noqa: E402
from qkernels.train.quantize import max_abs_layer_bits  # noqa: E402

# One epoch of 11 steps: enough for the regularizer to move the weights, fast enough for CI.
TINY = dict(data="digits", model="mlp", epochs=1, batch_size=128, progress=False)


def _weights(out) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def test_oscreg_runs_end_to_end_and_logs_the_regularizer(tmp_path):
    config = RunConfig(**TINY, method="oscreg", wbits=3, lam=14.0, eval_bits=[2, 3, 8], out=str(tmp_path / "reg"))
    metrics = run(config)
    row = metrics["history"][-1]
    assert {"regularizer", "test_accuracy_fp"} <= set(row) and row["regularizer"] != 0
    assert metrics["regularizer"] == row["regularizer"]
    header = (tmp_path / "reg" / "history.csv").read_text().splitlines()[0].split(",")
    assert "regularizer" in header and "test_accuracy_fp" in header
    saved = json.loads((tmp_path / "reg" / "metrics.json").read_text())
    assert saved["regularizer"] == row["regularizer"] and saved["config"]["lam"] == 14.0
    # test_accuracy is the weights at the target width, the same evaluation as cross_bit's at 3 bits
    assert metrics["test_accuracy"] == metrics["cross_bit"]["3"]
    assert metrics["float_weights_accuracy"] == metrics["test_accuracy_fp"] > 0.3
    assert (tmp_path / "reg" / "cross_bit.png").is_file()

    # lam 0: the float run, bit for bit (nothing but the regularizer differs: no fake quantization in the forward)
    plain = replace(config, lam=0.0, out=str(tmp_path / "zero"))
    run(plain)
    run(replace(plain, method="fp", out=str(tmp_path / "fp")))
    fp, zero, reg = _weights(tmp_path / "fp"), _weights(tmp_path / "zero"), _weights(tmp_path / "reg")
    assert all(torch.equal(fp[k], zero[k]) for k in fp)
    assert not torch.equal(fp["3.weight"], reg["3.weight"])


def test_regularized_and_evaluated_weights_follow_the_first_last_rule():
    """The rule oscreg regularizes by and the cross-bit evaluation quantizes by (as QAT trains): Conv2d/Linear at
    the target, the first and last at first_last_bits, norm layers never."""
    assert max_abs_layer_bits(build("mlp", 1, 8, 10), 3) == {"1": 8, "3": 3, "5": 8}
    assert max_abs_layer_bits(build("mlp", 1, 8, 10), 2, first_last_bits=32) == {"1": 32, "3": 2, "5": 32}
    cnn = max_abs_layer_bits(build("cnn", 1, 8, 10), 4)
    assert "1" not in cnn and list(cnn.values()) == [8, 4, 4, 4, 8]  # BatchNorm "1" is not a quantized weight


def test_compare_grid_writes_the_matrix(tmp_path, capsys):
    rows = compare(RunConfig(**TINY, lam=14.0, eval_bits=[2, 8]), ["fp", "qat", "oscreg"], [2], str(tmp_path),
                   weights_only=True)
    assert [(r["method"], r["wbits"], r["abits"]) for r in rows] == [("fp", 32, 32), ("qat", 2, 32),
                                                                    ("oscreg", 2, 32)]
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["fp", "qat", "oscreg"]
    assert {"eval_w2", "eval_w8", "eval_float"} <= set(table[0])
    fp_metrics = json.loads((tmp_path / "fp" / "metrics.json").read_text())
    assert float(table[0]["eval_w2"]) == fp_metrics["cross_bit"]["2"]  # fp→ptq: the float model at 2 bits
    assert float(table[2]["test_accuracy"]) == float(table[2]["eval_w2"])  # oscreg at its target
    text = (tmp_path / "results.md").read_text()
    assert "| method | target | as trained | W2 | W8 | float |" in text
    assert "| fp→ptq |" in text and "| qat | W2 |" in text and "| oscreg | W2 |" in text
    for name in ("cross_bit.png", "accuracy_vs_bits.png"):
        assert (tmp_path / name).is_file(), name
    # weights only: the qat run quantized no input
    assert not any("input_quantizer" in key for key in _weights(tmp_path / "qat_w2"))
    assert "fp→ptq" in capsys.readouterr().out
