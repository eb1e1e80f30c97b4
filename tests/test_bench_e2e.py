"""qkernels.bench.e2e: a quick run of every variant on ResNet-20 (a tiny batch, the CPU), the arguments' errors
naming the CLI flags, the appended CSV, and that each variant builds the modules it names."""

import csv

import pytest
import torch

import qkernels
from qkernels.bench import e2e
from qkernels.train import models


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A batch of 4 gains nothing from intra-op threads, and on a busy 2-core machine those threads wait for
    each other (see tests/test_train_models.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick_rows():
    return e2e.run(["resnet20"], None, "cpu", 4, quick=True)


def test_every_variant_runs(quick_rows):
    assert [r["variant"] for r in quick_rows] == list(e2e.VARIANTS)
    for row in quick_rows:
        assert row["status"] == "ok", (row["variant"], row["error"])
        assert set(row) == set(e2e.FIELDS)
        assert row["model"] == "resnet20" and row["batch"] == 4 and row["device"] == "cpu"
        assert row["threads"] == 1  # the fixture's: rows record the thread count they ran with
        assert 0 < row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["ratio_to_fp"] > 0 and row["images_per_s"] > 0
        assert row["peak_mb"] is None  # the CPU keeps no allocator statistics
    assert quick_rows[0]["variant"] == "fp" and quick_rows[0]["ratio_to_fp"] == 1.0
    text = e2e.table(quick_rows)
    assert text.count("\n") == 1 + len(e2e.VARIANTS) and "| resnet20 | qkernels+int4grad |" in text
    assert len(e2e.targets(quick_rows)) == 2  # the CPU's two targets for resnet20, met or not


def test_ratio_needs_fp_and_errors_are_rows(monkeypatch):
    rows = e2e.run("resnet20", "qkernels+osc", "cpu", 2, quick=True)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["ratio_to_fp"] is None

    def broken(model, variant, x):
        raise RuntimeError("no kernel\nsecond line")
    monkeypatch.setattr(e2e, "_prepare", broken)
    rows = e2e.run("resnet20", "fp,torch.ao", "cpu", 2, quick=True)
    assert [(r["status"], r["error"]) for r in rows] == [("error", "RuntimeError: no kernel")] * 2
    assert "error: RuntimeError: no kernel" in e2e.table(rows)


def _prepared(variant):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    return e2e._prepare(models.build("resnet20", 3, 32, 10), variant, x)


def test_variants_build_the_modules_they_name():
    def fake_quants(model):
        return [m for m in model.modules() if isinstance(m, torch.ao.quantization.FakeQuantizeBase)]
    stock, ours = fake_quants(_prepared("torch.ao")), fake_quants(_prepared("qkernels"))
    assert len(stock) == len(ours) > 0  # the same config: one per weight and per observed output
    assert not any(type(m).__module__.startswith("qkernels") for m in stock)
    assert all(isinstance(m, qkernels.nn.FusedMovingAvgObsFakeQuantize) for m in ours)
    assert [type(m).__name__ for m in stock] == [type(m).__name__ for m in ours]

    osc = _prepared("qkernels+osc")
    assert len(qkernels.oscillation.attached(osc)) == 22  # the 21 convs and the Linear
    assert any(isinstance(m, qkernels.nn.LearnableFakeQuantize) for m in osc.modules())
    assert not any(isinstance(m, qkernels.nn.GradientQuantizer) for m in osc.modules())
    grads = [m for m in _prepared("qkernels+int4grad").modules() if isinstance(m, qkernels.nn.GradientQuantizer)]
    assert len(grads) == 22 and sorted({m.bits for m in grads}) == [4, 8]  # first and last layer at 8


@pytest.mark.parametrize("kwargs, flag", [
    ({"models": ["resnet50"]}, "--models"), ({"models": []}, "--models"), ({"models": 3}, "--models"),
    ({"variants": ["int8"]}, "--variants"), ({"variants": ""}, "--variants"),
    ({"batch": 0}, "--batch"), ({"batch": 2.0}, "--batch"), ({"batch": True}, "--batch"),
    ({"device": "tpu"}, "--device"), ({"classes": 7}, "--classes"), ({"rounds": 0}, "--rounds"),
])
def test_bad_arguments_name_the_flag(kwargs, flag):
    args = {"models": ["resnet20"], "variants": ["fp"], "device": "cpu", "batch": 2, "quick": True, **kwargs}
    with pytest.raises(ValueError, match=flag):
        e2e.run(**args)


def test_default_batch():
    assert e2e.default_batch("cpu") == 32 and e2e.default_batch(torch.device("cuda", 0)) == 256


def test_csv_appends_and_refuses_other_columns(tmp_path):
    path = str(tmp_path / e2e.CSV_NAME)
    assert e2e.csv_path(str(tmp_path)) == path
    e2e.run(["resnet20"], ["fp"], "cpu", 2, quick=True, csv_file=path)
    e2e.run(["resnet20"], ["fp", "qkernels"], "cpu", 2, quick=True, csv_file=path)
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == list(e2e.FIELDS) and lines.count(list(e2e.FIELDS)) == 1
    rows = [dict(zip(lines[0], line)) for line in lines[1:]]
    assert [r["variant"] for r in rows] == ["fp", "fp", "qkernels"] and {r["status"] for r in rows} == {"ok"}
    assert rows[0]["peak_mb"] == ""  # None is written as an empty field

    other = tmp_path / "other.csv"
    other.write_text("date,op,median_ms\n")
    with pytest.raises(ValueError, match="other columns"):
        e2e.run(["resnet20"], ["fp"], "cpu", 2, quick=True, csv_file=str(other))
    assert other.read_text() == "date,op,median_ms\n"
